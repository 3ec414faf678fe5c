"""A File-mode job (in-process, on the tiny test encoder) with ``loss`` and ``class_names`` set:
the per-class IoU lines it prints are parsed by the README's own metric definitions and pattern
and agree with model_info.json, and the loss asked for is the one trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

from segcontainer.tasks.segmentation import losses
from segcontainer.training.entry import main
from tests.support.local_mode import write_config
from tests.support.readme import page
from tests.support.training import readme_metric_regexes

CLASS_NAMES = "background,car,traffic light"  # the README's example
EPOCHS = 1


def readme_general_pattern() -> str:
    """The per-class lines' general pattern as the training page's section gives it."""
    return re.search(r"The general pattern is\s+`([^`]+)`", page("training")).group(1)


def readme_template() -> str:
    """The README's definition for every class at once: its rf-string's regex, {name} left in."""
    found = re.search(r'"Regex":\s*rf"([^"]+)"', page("training")).group(1)
    return found.replace("\\\\", "\\")


def test_per_class_lines_match_the_readme_and_the_chosen_loss_trains(
    base_dir: Path, small_dataset, tiny, monkeypatch, capsys
) -> None:
    """loss=lovasz with class_weights: Lovasz-softmax computes every step's loss (the weights
    unused, as the log says), and each epoch prints one IoU line per class, which the
    README's definitions (IoU_car, IoU_traffic_light) and its general pattern parse."""
    calls = []
    real_lovasz = losses.lovasz_softmax
    monkeypatch.setattr(
        losses, "lovasz_softmax", lambda *args: calls.append(1) or real_lovasz(*args)
    )
    write_config(
        base_dir,
        **tiny,
        epochs=str(EPOCHS),
        loss="lovasz",
        class_weights="1,2,3",
        class_names=CLASS_NAMES,
    )
    assert main() == 0
    out = capsys.readouterr().out
    assert len(calls) == EPOCHS * 2  # 8 training pairs in batches of 4
    assert "Lovasz-softmax loss has no class weights" in out

    lines = [line for line in out.splitlines() if line.startswith("#quality_metric:")]
    general = [re.search(readme_general_pattern(), line) for line in lines]
    found = [(m.group(1), float(m.group(2))) for m in general if m]
    # the demo task's validation masks hold every class: a line per class and epoch
    assert [name for name, _ in found] == ["background", "car", "traffic_light"] * EPOCHS
    assert all(0.0 <= iou <= 1.0 for _, iou in found)
    for name in dict(found):  # the README's one-definition-per-class form finds the same
        regex = readme_template().format(name=name)
        values = [float(m.group(1)) for line in lines if (m := re.search(regex, line))]
        assert values == [iou for other, iou in found if other == name], name

    record = json.loads((base_dir / "model" / "hyperparams.json").read_text())
    assert record["loss"] == "lovasz"  # the model records what it was trained with
    info = json.loads((base_dir / "model" / "model_info.json").read_text())
    best = info["best_epoch"]
    per_class = {
        name: regex
        for name, regex in readme_metric_regexes().items()
        if name.startswith("validation:IoU_")
    }
    assert per_class  # the README gives some
    for name, regex in per_class.items():
        values = [float(m.group(1)) for line in lines if (m := re.search(regex, line))]
        assert len(values) == EPOCHS, name
        class_name = {"car": "car", "traffic_light": "traffic light"}[name.split("IoU_")[1]]
        recorded = info["validation_per_class_IOU"][class_name]
        assert abs(values[best] - recorded) < 1e-4, (name, values, recorded)
