"""Test-time augmentation of segmentation answers: ``SEGCONTAINER_TTA`` (the endpoint,
``segcontainer predict``) and ``--tta`` (``segcontainer evaluate`` and ``predict``), one syntax:

    none                        the model's answer as trained (the default)
    flip                        the average of the image and its horizontal mirror (~2x the forward)
    flip,scales=0.75,1.0,1.25   each scale of the inference size, each with its mirror
    scales=0.75,1.0,1.25        the scales without mirrors

A scale multiplies the long side the model sees (``SEGCONTAINER_INFERENCE_SIZE``, else the
model's ``base_size``; at 0, the image's own long side), so a view costs about scale^2 of one
forward: the three scales with flips cost 2 x (0.5625 + 1 + 1.5625) = 6.25x. How the views are
averaged (logits, per tile) is ``tasks.segmentation.prediction``'s; this module only parses and
describes the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segcontainer.config.variables import TTA
from segcontainer.errors import UserError

# Scales outside this range are refused: below 1/4 a view has too few pixels to add
# anything, above 2 its logits at model scale are more than 4x the plain answer's.
MIN_SCALE, MAX_SCALE = 0.25, 2.0
FORMS = "none, flip, flip,scales=S1,S2,... or scales=S1,S2,..."
EXAMPLE = "flip,scales=0.75,1.0,1.25"


@dataclass(frozen=True)
class Tta:
    """One test-time augmentation: mirror each view or not, and the scales of the inference
    size to predict at (``(1.0,)``: the inference size only)."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def name(self) -> str:
        """The setting in the syntax it is given in (for logs and evaluate's report)."""
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales=" + ",".join(str(scale) for scale in self.scales))
        return ",".join(parts) or "none"

    @property
    def forward_cost(self) -> float:
        """Forward work relative to no augmentation: views x pixels (2 x sum of scale^2)."""
        return (2 if self.flip else 1) * sum(scale * scale for scale in self.scales)

    def long_sides(self, long_side: int) -> list[int]:
        """The long side the model sees at each scale, given the plain one."""
        return [max(1, round(scale * long_side)) for scale in self.scales]


NONE = Tta()


def parse(text: str, said: str = TTA.name + "={!r}") -> Tta:
    """The setting ``text`` names (spaces and case ignored); a UserError naming the value, the
    problem and the accepted forms otherwise. ``said`` formats the value as the user gave it
    (the variable, or a command's option)."""
    value = "".join(text.split()).lower()
    if value == "none":
        return NONE
    flip = value == "flip" or value.startswith("flip,")
    rest = value.removeprefix("flip").removeprefix(",") if flip else value
    if flip and not rest:
        return Tta(flip=True)
    if not rest.startswith("scales="):
        raise _invalid(text, said, f"{rest!r} is neither flip nor scales=...")
    return Tta(flip=flip, scales=_scales(text, said, rest.removeprefix("scales=")))


def _scales(text: str, said: str, listed: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(item) for item in listed.split(","))
    except ValueError:
        raise _invalid(text, said, f"the scales {listed!r} are not numbers") from None
    for scale in scales:
        if not (math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
            raise _invalid(text, said, f"the scale {scale:g} is outside {MIN_SCALE}..{MAX_SCALE}")
    if len(set(scales)) != len(scales):
        raise _invalid(text, said, "a scale is listed twice")
    return scales


def _invalid(text: str, said: str, problem: str) -> UserError:
    return UserError(
        f"{said.format(text)} is not a test-time augmentation ({problem}): give {FORMS}, "
        f"scales being multiples of the inference size between {MIN_SCALE} and {MAX_SCALE} "
        f"(e.g. {EXAMPLE})."
    )
