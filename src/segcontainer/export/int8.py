"""model.int8.onnx: static QDQ quantization, then the check that decides whether it ships.

Quantization is ONNX Runtime's ``quantize_static``: QDQ format, per-channel int8 weights,
uint8 activations, calibrated on training images prepared as serving prepares them. The check
runs the quantized file and the eager fp32 model (both through ``engines``) on the validation
images: the int8 argmax must agree with fp32's on >= 99% of the labelled pixels, and its mIoU
must be within 0.5 points (0.005) of fp32's. When a try fails, the usual remedies follow in
order: more calibration images; percentile, then entropy calibration; then the first
convolution and the classifier kept in fp32. The first passing try ships; if none passes, no
int8 file is written and the reason is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch

from segcontainer import inference
from segcontainer.data.label_maps import IGNORE_INDEX
from segcontainer.engines import Engine, OnnxEngine
from segcontainer.export.samples import ExportData, ImageReader, validation_pairs
from segcontainer.files import write_atomically
from segcontainer.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # share of labelled pixels where int8 and fp32 pick the same class
MAX_MIOU_DROP = 0.005  # 0.5 mIoU points
CALIBRATION_IMAGES = 32  # first try; the "more images" remedy uses 4x as many
CHECK_IMAGES = 200  # validation pairs checked at most (a fixed random sample beyond that)


@dataclass
class Agreement:
    """How a candidate engine's predictions compare with the eager fp32 model's."""

    pixel_agreement: float
    mIOU_fp32: float
    mIOU_int8: float
    check_images: int  # validation pairs compared
    labelled_pixels: int

    def problems(self) -> list[str]:
        found = []
        if self.pixel_agreement < MIN_AGREEMENT:
            found.append(
                f"pixel agreement {self.pixel_agreement:.4f} is below {MIN_AGREEMENT} of "
                "labelled pixels"
            )
        if self.mIOU_fp32 - self.mIOU_int8 > MAX_MIOU_DROP:
            found.append(
                f"mIoU {self.mIOU_int8:.4f} is more than {MAX_MIOU_DROP} below fp32's "
                f"{self.mIOU_fp32:.4f}"
            )
        return found


@dataclass(frozen=True)
class Attempt:
    method: str  # minmax | percentile | entropy
    calibration_images: int  # training images the ranges were collected on
    keep_fp32: tuple[str, ...] = ()  # node names left unquantized

    def describe(self) -> str:
        kept = f", kept in fp32: {', '.join(self.keep_fp32)}" if self.keep_fp32 else ""
        return f"{self.method} calibration on {self.calibration_images} training images{kept}"


@dataclass
class Int8Result:
    shipped: bool
    reason: str | None = None  # why it was not shipped
    agreement: Agreement | None = None
    attempt: Attempt | None = None
    tries: list[dict] = field(default_factory=list)  # every try and its outcome


def _labels_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids at the label's size, upsampled as serving upsamples (inference.class_map)."""
    return inference.class_map(logits[0], *size)


class Reference:
    """The eager fp32 predictions on the check images, computed once for all tries."""

    def __init__(self, eager: Engine, data: ExportData, num_classes: int):
        self.data, self.num_classes = data, num_classes
        self.predictions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        scores = ConfusionMatrix(num_classes)
        for inputs, labels in validation_pairs(data, CHECK_IMAGES):
            prediction = _labels_at(eager(inputs), tuple(labels.shape))
            scores.update(labels, prediction)
            self.predictions.append(prediction)
            self.labels.append(labels)
        self.miou = scores.scores().miou

    def compare(self, candidate: Engine) -> Agreement:
        scores = ConfusionMatrix(self.num_classes)
        same = labelled = 0
        pairs = validation_pairs(self.data, CHECK_IMAGES)
        for (inputs, _), labels, reference in zip(
            pairs, self.labels, self.predictions, strict=True
        ):
            prediction = _labels_at(candidate(inputs), tuple(labels.shape))
            scores.update(labels, prediction)
            keep = labels != IGNORE_INDEX
            same += int((prediction[keep] == reference[keep]).sum())
            labelled += int(keep.sum())
        return Agreement(
            pixel_agreement=same / labelled if labelled else 0.0,
            mIOU_fp32=self.miou,
            mIOU_int8=scores.scores().miou,
            check_images=len(self.labels),
            labelled_pixels=labelled,
        )


def first_and_classifier(onnx_file: Path) -> tuple[str, ...]:
    """Names of the first convolution and the classifier: the exporter writes nodes in
    topological order, so they are the first and the last Conv."""
    nodes = onnx.load(str(onnx_file), load_external_data=False).graph.node
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    return tuple(dict.fromkeys([convs[0], convs[-1]])) if convs else ()


class _NoPreProcessingAdvice(logging.Filter):
    """Drops quantize_static's "Please consider to run pre-processing before quantization"
    (logged on the root logger once per try). The pre-processing (quant_pre_process) infers
    shapes, which quantize_static does itself, and fuses batch norms into convolutions,
    which the exporter already did (model.onnx holds Conv, Relu, Add, no BatchNormalization);
    and each try ships only if its check passes. Not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _without_pre_processing_advice() -> Iterator[None]:
    advice, root = _NoPreProcessingAdvice(), logging.getLogger()
    root.addFilter(advice)  # a logger's filters see the records logged on it: the root's own
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize(onnx_file: Path, out: Path, data: ExportData, attempt: Attempt) -> None:
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Calibration sessions log a warning per unfoldable shape node; errors are enough.
    onnxruntime.set_default_logger_severity(3)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    reader = ImageReader(data, attempt.calibration_images, "image")

    def write(tmp: Path) -> None:
        # quantize_static writes under the final name (onnx picks the serialization from the
        # extension) in a scratch folder of its own, so nothing it leaves lands in model/.
        with (
            tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as scratch,
            _without_pre_processing_advice(),
        ):
            made = Path(scratch) / out.name
            quantize_static(
                str(onnx_file),
                str(made),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[attempt.method],
                nodes_to_exclude=list(attempt.keep_fp32) or None,
                # Collect two images at a time: the histogram calibrators (percentile,
                # entropy) otherwise keep every activation of every image in memory until
                # the end.
                extra_options={"CalibStridedMinMax": 2 if len(reader) % 2 == 0 else 1},
            )
            os.replace(made, tmp)

    write_atomically(out, write)


def plan(available: int) -> list[Attempt]:
    """The tries in order; each remedy keeps the previous ones."""
    first = min(CALIBRATION_IMAGES, available)
    more = min(4 * CALIBRATION_IMAGES, available)
    tries = [Attempt("minmax", first)]
    if more > first:
        tries.append(Attempt("minmax", more))
    return tries + [Attempt("percentile", more), Attempt("entropy", more)]


def export_int8(
    onnx_file: Path, out: Path, eager: Engine, data: ExportData, num_classes: int, threads: int
) -> Int8Result:
    """Quantize and check; ``out`` exists afterwards only when a try passed. ``data`` holds
    training images and validation pairs: run._int8 checks that first and says what to do."""
    out.unlink(missing_ok=True)
    reference = Reference(eager, data, num_classes)
    result = Int8Result(False)
    tries = plan(len(data.calibration))
    best: tuple[float, Attempt] | None = None
    index = 0
    while index < len(tries):
        attempt = tries[index]
        index += 1
        quantize(onnx_file, out, data, attempt)
        agreement = reference.compare(OnnxEngine(out, threads))
        problems = agreement.problems()
        # The field names differ (calibration_images, check_images): neither hides the other.
        result.tries.append({**asdict(attempt), **asdict(agreement), "problems": problems})
        log.info(
            "int8 try (%s): pixel agreement %.4f, mIoU %.4f vs fp32 %.4f on %d validation images%s",
            attempt.describe(),
            agreement.pixel_agreement,
            agreement.mIOU_int8,
            agreement.mIOU_fp32,
            agreement.check_images,
            "" if not problems else f": {'; '.join(problems)}",
        )
        if not problems:
            result.shipped, result.agreement, result.attempt = True, agreement, attempt
            return result
        if best is None or agreement.pixel_agreement > best[0]:
            best = (agreement.pixel_agreement, attempt)
        if index == len(tries) and not attempt.keep_fp32:
            # Last remedy: the best calibration so far with the most sensitive layers in fp32.
            kept = first_and_classifier(onnx_file)
            tries.append(Attempt(best[1].method, best[1].calibration_images, kept))
        result.agreement = agreement
    out.unlink(missing_ok=True)
    result.reason = (
        f"no try passed the check (>= {MIN_AGREEMENT} pixel agreement and mIoU within "
        f"{MAX_MIOU_DROP} of fp32); the last: {'; '.join(result.tries[-1]['problems'])}"
    )
    return result
