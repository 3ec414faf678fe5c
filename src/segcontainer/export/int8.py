"""model.int8.onnx: static QDQ quantization, then the check that decides whether it ships.

Quantization is ONNX Runtime's ``quantize_static``: QDQ format, per-channel int8 weights,
uint8 activations, calibrated on training images prepared as serving prepares them. The check
is the task's (``Task.export_check``): it runs the quantized file and the eager fp32 model (both
through ``engines``) on the validation images and says what falls short of the task's
requirement (segmentation: pixel agreement and mIoU; classification: top-1 agreement and
accuracy). When a try fails, the usual remedies follow in order: more calibration images;
percentile, then entropy calibration; then the first convolution and the classifier kept in
fp32. The first passing try ships; if none passes, no int8 file is written and the reason is
recorded.
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

from segcontainer.engines import OnnxEngine
from segcontainer.export.samples import ImageReader
from segcontainer.files import write_atomically
from segcontainer.tasks.task import ExportCheck, ExportImages, ExportOutcome

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 32  # first try; the "more images" remedy uses 4x as many
CHECK_IMAGES = 200  # validation images checked at most (a fixed random sample beyond that)
# The classifier: the last of these nodes (segmentation's 1x1 Conv, classification's Gemm).
# PSP's pooling matrices (MatMul) come before its classifier, so the last is still the classifier.
LAYER_OPS = ("Conv", "Gemm", "MatMul")


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
    agreement: ExportOutcome | None = None  # the shipped try's, else the last try's
    attempt: Attempt | None = None
    tries: list[dict] = field(default_factory=list)  # every try and its outcome


def first_and_classifier(onnx_file: Path) -> tuple[str, ...]:
    """Names of the first convolution and the classifier: the exporter writes nodes in
    topological order, so they are the first Conv and the last layer (LAYER_OPS)."""
    nodes = onnx.load(str(onnx_file), load_external_data=False).graph.node
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    layers = [node.name for node in nodes if node.op_type in LAYER_OPS]
    return tuple(dict.fromkeys([convs[0], layers[-1]])) if convs else ()


# quantize_static's advice, logged on the root logger before and after each try
PRE_PROCESSING_ADVICE = ("Please consider to run pre-processing", "Please consider pre-processing")


class _NoPreProcessingAdvice(logging.Filter):
    """Drops quantize_static's "Please consider (to run) pre-processing before quantization"
    (logged on the root logger twice per try). The pre-processing (quant_pre_process) infers
    shapes, which quantize_static does itself, and fuses batch norms into convolutions,
    which the exporter already did (model.onnx holds Conv, Relu, Add, no BatchNormalization);
    and each try ships only if its check passes. Not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(PRE_PROCESSING_ADVICE)


@contextlib.contextmanager
def _without_pre_processing_advice() -> Iterator[None]:
    advice, root = _NoPreProcessingAdvice(), logging.getLogger()
    root.addFilter(advice)  # a logger's filters see the records logged on it: the root's own
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize(onnx_file: Path, out: Path, data: ExportImages, attempt: Attempt) -> None:
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
    onnx_file: Path, out: Path, check: ExportCheck, data: ExportImages, threads: int
) -> Int8Result:
    """Quantize and check against ``check`` (the task's, on the eager fp32 answers); ``out``
    exists afterwards only when a try passed. ``data`` holds training and validation images:
    run._int8 checks that first and says what to do."""
    out.unlink(missing_ok=True)
    result = Int8Result(False)
    tries = plan(data.calibration_count)
    best: tuple[float, Attempt] | None = None
    index = 0
    while index < len(tries):
        attempt = tries[index]
        index += 1
        quantize(onnx_file, out, data, attempt)
        agreement = check.compare(OnnxEngine(out, threads))
        problems = agreement.problems()
        # The field names differ (calibration_images, check_images): neither hides the other.
        result.tries.append({**asdict(attempt), **agreement.figures(), "problems": problems})
        log.info(
            "int8 try (%s): %s%s",
            attempt.describe(),
            agreement.describe(),
            "" if not problems else f": {'; '.join(problems)}",
        )
        if not problems:
            result.shipped, result.agreement, result.attempt = True, agreement, attempt
            return result
        if best is None or agreement.agreement > best[0]:
            best = (agreement.agreement, attempt)
        if index == len(tries) and not attempt.keep_fp32:
            # Last remedy: the best calibration so far with the most sensitive layers in fp32.
            kept = first_and_classifier(onnx_file)
            tries.append(Attempt(best[1].method, best[1].calibration_images, kept))
        result.agreement = agreement
    out.unlink(missing_ok=True)
    result.reason = (
        f"no try passed the check ({check.requirement}); the last: "
        f"{'; '.join(result.tries[-1]['problems'])}"
    )
    return result
