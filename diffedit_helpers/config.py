"""`DiffEditConfig`: every knob of an edit in one dataclass, checked before any model work."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass, replace

ENCODINGS = ("noise", "inversion")


@dataclass
class DiffEditConfig:
    """The settings of one DiffEdit run. Defaults were measured on the shapes world.

    Mask (step 1):
        n_noise: independent noise draws whose prediction differences are averaged.
        mask_strength: how far into the noise schedule the image is noised for the mask
            (0.5 = the middle step of the DDIM schedule).
        threshold: the normalised difference map is binarised at this value, in [0, 1].
        blur: Gaussian blur kernel in image pixels applied to the map before the threshold;
            0 turns it off, otherwise odd (an even value is rounded up, with a warning).
        fill_holes: fill regions the mask encloses (shape edits light up a ring).
        refine: snap the map's edges to the image's edges (a guided filter with the image as
            guide) before blur and threshold; the map is computed at latent resolution.
        refine_radius: the guided filter's window radius in latent cells (x the VAE scale
            factor in pixels: 8 px on the bundled model, 16 px on Stable Diffusion).
        refine_eps: its ridge term; smaller follows the image's edges more closely.
    Edit (steps 2-3):
        guidance: classifier-free guidance scale for the denoising (<= 1 switches it off).
        steps: DDIM steps of the full schedule.
        edit_start: fraction of the schedule skipped: the edit starts at step
            int(edit_start * steps), a quarter of the way in by default.
        encoding: "noise" (image latents noised to the start step) or "inversion"
            (deterministic DDIM inversion to the start step).
        composite: paste the edit into the input pixels through a feathered mask, so pixels
            outside it are exactly the input's.
        feather: width in pixels of that feather (odd kernel, 0 for a hard edge).
        mask_batch_size: UNet samples per call while building the mask (memory bound).
    """

    n_noise: int = 10
    mask_strength: float = 0.5
    threshold: float = 0.25
    blur: int = 0
    fill_holes: bool = True
    refine: bool = True
    refine_radius: int = 3
    refine_eps: float = 1e-4
    guidance: float = 7.5
    steps: int = 50
    edit_start: float = 0.25
    encoding: str = "noise"
    composite: bool = True
    feather: int = 5
    mask_batch_size: int = 32

    def validate(self) -> "DiffEditConfig":
        "Raise ValueError naming the first bad field and its accepted range; return self."
        _check_int("n_noise", self.n_noise, 1)
        _check_unit("mask_strength", self.mask_strength, low_open=True)
        check_threshold(self.threshold)
        self.blur = check_kernel("blur", self.blur)
        self.feather = check_kernel("feather", self.feather)
        if not isinstance(self.refine, bool):
            raise ValueError(f"refine must be True or False, got {self.refine!r}")
        _check_int("refine_radius", self.refine_radius, 1)
        _check_real("refine_eps", self.refine_eps)
        if not self.refine_eps > 0:
            raise ValueError(f"refine_eps must be > 0, got {self.refine_eps}")
        _check_real("guidance", self.guidance)
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0 (values <= 1 switch classifier-free guidance off), got {self.guidance}")
        _check_int("steps", self.steps, 1)
        _check_real("edit_start", self.edit_start)
        if not 0.0 <= self.edit_start < 1.0:
            raise ValueError(f"edit_start must be in [0, 1), the fraction of the {self.steps} steps skipped; got {self.edit_start}")
        if self.start_index >= self.steps:
            raise ValueError(
                f"edit_start={self.edit_start} starts at step {self.start_index}, at or past the last of steps={self.steps}; "
                f"use edit_start < {(self.steps - 1) / self.steps:.3f} or more steps"
            )
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        _check_int("mask_batch_size", self.mask_batch_size, 1)
        if not isinstance(self.fill_holes, bool) or not isinstance(self.composite, bool):
            raise ValueError("fill_holes and composite must be True or False")
        return self

    @property
    def start_index(self) -> int:
        "Index of the first DDIM step the edit runs."
        return int(self.edit_start * self.steps)

    def replace(self, **changes) -> "DiffEditConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_unit(name, value, low_open=True):
    _check_real(name, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def check_threshold(value, name: str = "threshold") -> float:
    "A mask threshold: a finite number in [0, 1]."
    _check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_kernel(name: str, value) -> int:
    """A blur kernel size in pixels: 0 (off) or an odd integer >= 1. An even value is
    rounded up to the next odd one with a warning; a negative one is an error."""
    _check_real(name, value)
    if value < 0 or value != int(value):
        raise ValueError(f"{name} must be 0 (off) or an odd whole number of pixels >= 1, got {value!r}")
    value = int(value)
    if value > 0 and value % 2 == 0:
        warnings.warn(f"{name}={value} is even; rounded up to {value + 1} (kernels must be odd)", stacklevel=3)
        value += 1
    return value
