"""`DiffEditConfig`: every knob of an edit in one dataclass, checked before any model work.

A bad value raises `ConfigError` (a ValueError) whose `.field` names the setting. The command
lines (`cli`, `batch`, `world.evaluate`) share one set of options for the fields:
`add_config_arguments(parser)`, then `config_from_args(args, DiffEditConfig.for_model(model))`: the
options given, over the model's own defaults (Stable Diffusion's differ from the shapes world's).
Taught in notebook 00_quickstart (the settings) and 05_threshold_and_blur (the mask's).
"""

from __future__ import annotations

import argparse
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, fields, replace

ENCODINGS = ("noise", "inversion")
# how the raw map is scaled to [0, 1] before the threshold (`mask.scale_map`): "minmax" stretches its
# lowest value to 0 and its highest to 1; "clamp" is diffusers' StableDiffusionDiffEditPipeline rule,
# the map divided by clamp_ratio times its mean and clipped at 1, so one extreme cell cannot squash the rest
NORMALISATIONS = ("minmax", "clamp")
STABLE_DIFFUSION_VAE_FACTOR = 8  # pixels per latent cell in every Stable Diffusion 1.x/2.x VAE
# Stable Diffusion's defaults where they differ from the shapes world's: one published rule, nothing added.
# The DiffEdit paper removes extreme values, rescales to [0, 1] and binarises at 0.5, but does not say how
# the extremes are removed; diffusers' pipeline publishes one way, as code: clamp at 3 x the map's mean,
# divide by that, keep what is above 0.5. No blur, no hole filling, no refinement (none is in that rule).
# diffusers keeps whole latent cells; here, as for every rule, the scaled map is brought up to the pixels first.
STABLE_DIFFUSION = dict(normalise="clamp", clamp_ratio=3.0, threshold=0.5, blur=0, fill_holes=False, refine=False)
MAX_CLAMP_RATIO = 1000.0
# upper bounds that hold for any image; `check_for_image` then bounds them by the image itself
MAX_KERNEL = 4095  # blur and feather, pixels
MAX_REFINE_RADIUS = 1024  # latent cells
MAX_REFINE_EPS = 1.0  # the guide's colours are in [0, 1]: a larger ridge term flattens the map to its local mean
MAX_GUIDANCE = 1000.0
# UNet samples per call while building the mask: their activations are held at once (64 on a
# 512x512 Stable Diffusion image is about 7 GB in half precision; more only costs memory)
MAX_MASK_BATCH_SIZE = 64
# noise draws of the mask: each costs two UNet samples; past a few hundred the map no longer changes
MAX_N_NOISE = 1000


class DiffEditWarning(UserWarning):
    "Every warning this package emits: something was changed for you, or the edit may not do what you expect."


class ConfigError(ValueError):
    "A setting outside its accepted range; `.field` is its name (a config field or the argument checked)."

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class DiffEditConfig:
    """The settings of one DiffEdit run. Defaults were measured on the shapes world.

    Mask (step 1):
        n_noise: independent noise draws whose prediction differences are averaged, in [1, MAX_N_NOISE].
        mask_strength: how far into the noise schedule the image is noised for the mask
            (0.5 = the middle step of the DDIM schedule).
        normalise: how the raw map is scaled to [0, 1]: "minmax" (lowest value 0, highest 1) or
            "clamp" (diffusers' rule: divided by clamp_ratio x its mean, clipped at 1).
        clamp_ratio: for "clamp", the multiple of the map's mean that maps to 1, in (0, 1000].
        threshold: the normalised difference map is binarised at this value, in [0, 1].
        blur: Gaussian blur kernel in image pixels applied to the map before the threshold;
            0 turns it off, otherwise odd (an even value is rounded up, with a warning).
        fill_holes: fill regions the mask encloses (shape edits light up a ring).
        refine: snap the map's edges to the image's edges (a guided filter with the image as
            guide) before blur and threshold; the map is computed at latent resolution.
        refine_radius: the guided filter's window radius in latent cells, times the VAE scale
            factor in pixels: 3 cells are 12 px on the bundled model (factor 4) and 24 px on
            Stable Diffusion (factor 8).
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
        mask_batch_size: UNet samples per call while building the mask, in [1, MAX_MASK_BATCH_SIZE] (memory).
        negative_prompt: the unconditional branch of guidance while denoising ("" the empty prompt,
            as usual); the mask does not use it.
    """

    n_noise: int = 10
    mask_strength: float = 0.5
    normalise: str = "minmax"
    clamp_ratio: float = 3.0
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
    negative_prompt: str = ""

    def validate(self) -> "DiffEditConfig":
        "Raise ConfigError naming the first bad field and its accepted range; return self."
        _check_int("n_noise", self.n_noise, 1)
        if self.n_noise > MAX_N_NOISE:
            raise ConfigError("n_noise", f"n_noise must be an integer in [1, {MAX_N_NOISE}] (noise draws, two UNet samples "
                                         f"each), got {self.n_noise}")
        _check_unit("mask_strength", self.mask_strength)
        if self.normalise not in NORMALISATIONS:
            raise ConfigError("normalise", f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        check_clamp_ratio(self.clamp_ratio)
        check_threshold(self.threshold)
        self.blur = check_kernel("blur", self.blur)
        self.feather = check_kernel("feather", self.feather)
        _check_bool("refine", self.refine)
        _check_int("refine_radius", self.refine_radius, 1)
        if self.refine_radius > MAX_REFINE_RADIUS:
            raise ConfigError("refine_radius", f"refine_radius must be an integer in [1, {MAX_REFINE_RADIUS}] (latent cells), "
                                               f"got {self.refine_radius}")
        _check_real("refine_eps", self.refine_eps)
        if not 0 < self.refine_eps <= MAX_REFINE_EPS:
            raise ConfigError("refine_eps", f"refine_eps must be > 0 and at most {MAX_REFINE_EPS:g} (larger flattens the map), "
                                            f"got {self.refine_eps}")
        _check_real("guidance", self.guidance)
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ConfigError("guidance", f"guidance must be >= 0 (values <= 1 switch classifier-free guidance off) and at most "
                                          f"{MAX_GUIDANCE:g}, got {self.guidance}")
        _check_int("steps", self.steps, 1)
        _check_real("edit_start", self.edit_start)
        if not 0.0 <= self.edit_start < 1.0:
            raise ConfigError("edit_start", f"edit_start must be in [0, 1), the fraction of the {self.steps} steps skipped; got {self.edit_start}")
        if self.start_index >= self.steps:
            raise ConfigError(
                "edit_start",
                f"edit_start={self.edit_start} starts at step {self.start_index}, at or past the last of steps={self.steps}; "
                f"use edit_start < {(self.steps - 1) / self.steps:.3f} or more steps",
            )
        if self.encoding not in ENCODINGS:
            raise ConfigError("encoding", f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        _check_int("mask_batch_size", self.mask_batch_size, 1)
        if self.mask_batch_size > MAX_MASK_BATCH_SIZE:
            raise ConfigError("mask_batch_size", f"mask_batch_size must be an integer in [1, {MAX_MASK_BATCH_SIZE}] (UNet "
                                                 f"samples held in memory at once), got {self.mask_batch_size}")
        _check_bool("fill_holes", self.fill_holes)
        _check_bool("composite", self.composite)
        if not isinstance(self.negative_prompt, str):
            raise ConfigError("negative_prompt", f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        return self

    @property
    def start_index(self) -> int:
        "Index of the first DDIM step the edit runs."
        return int(self.edit_start * self.steps)

    def replace(self, **changes) -> "DiffEditConfig":
        return replace(self, **changes)

    @classmethod
    def for_model(cls, model) -> "DiffEditConfig":
        """The defaults for `model`. The class defaults were measured on the shapes world (the
        bundled model and any model of its kind). Models with Stable Diffusion's 8x VAE get one
        published mask rule instead, with nothing added: diffusers' StableDiffusionDiffEditPipeline's
        (the map clamped at 3 x its mean, divided by that, binarised at 0.5, the paper's threshold;
        thresholded on the pixels, where diffusers keeps whole latent cells),
        without blur, hole filling or this project's guided-filter refinement, which was measured
        only on flat-coloured objects (on textured photos it can follow the texture inside the
        object). See STABLE_DIFFUSION."""
        if model.vae_scale_factor == STABLE_DIFFUSION_VAE_FACTOR:
            return cls(**STABLE_DIFFUSION)
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(name, f"{name} must be a finite number, got {value!r}")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(name, f"{name} must be an integer >= {low}, got {value!r}")


def _check_unit(name, value):
    "A fraction in (0, 1]."
    _check_real(name, value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(name, f"{name} must be in (0, 1], got {value}")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ConfigError(name, f"{name} must be True or False, got {value!r}")


def check_clamp_ratio(value, name: str = "clamp_ratio") -> float:
    "The clamp rule's multiple of the map's mean: a finite number in (0, MAX_CLAMP_RATIO]."
    _check_real(name, value)
    if not 0.0 < value <= MAX_CLAMP_RATIO:
        raise ConfigError(name, f"{name} must be > 0 and at most {MAX_CLAMP_RATIO:g} (a multiple of the map's mean), got {value}")
    return value


def check_threshold(value, name: str = "threshold") -> float:
    "A mask threshold: a finite number in [0, 1]."
    _check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, f"{name} must be in [0, 1], got {value}")
    return value


def check_kernel(name: str, value) -> int:
    """A blur kernel size in pixels: 0 (off) or an odd integer in [1, MAX_KERNEL]. An even value
    is rounded up to the next odd one with a warning; a negative or huge one is an error."""
    _check_real(name, value)
    if value < 0 or value != int(value):
        raise ConfigError(name, f"{name} must be 0 (off) or an odd whole number of pixels >= 1, got {value!r}")
    if value > MAX_KERNEL:
        raise ConfigError(name, f"{name} must be 0 (off) or an odd whole number of pixels >= 1 and at most {MAX_KERNEL}, got {value!r}")
    value = int(value)
    if value > 0 and value % 2 == 0:
        warnings.warn(f"{name}={value} is even; rounded up to {value + 1} (kernels must be odd)", DiffEditWarning, stacklevel=3)
        value += 1
    return value


def check_for_image(config: "DiffEditConfig", width: int, height: int, scale_factor: int | None = None,
                    kernels=("blur", "feather")):
    """The settings measured in pixels, against a width x height image: a blur or feather kernel
    (those named in `kernels`) wider than the image, or a refinement window (refine_radius latent
    cells of `scale_factor` pixels; skipped when None) wider than it, only flattens the map. Raises ConfigError."""
    side = max(width, height)
    largest_kernel = side if side % 2 else side - 1
    for name in kernels:
        if getattr(config, name) > largest_kernel:
            raise ConfigError(name, f"{name}={getattr(config, name)} is wider than the {width}x{height} image; "
                                    f"use an odd kernel of at most {largest_kernel} pixels")
    if scale_factor is not None and config.refine and config.refine_radius * scale_factor > side:
        cells = max(1, side // scale_factor)
        raise ConfigError("refine_radius", f"refine_radius={config.refine_radius} is {config.refine_radius * scale_factor} px, wider "
                                           f"than the {width}x{height} image; use at most {cells} (latent cells of {scale_factor} px)")


# ----------------------------------------------------------------------------- command-line options
# each field's option: (flag, argparse keywords); the booleans also take --no-<flag>. An option not
# given is None: it takes the model's default (`DiffEditConfig.for_model`), known once the model is loaded.
_D = DiffEditConfig()


def _default(name: str) -> str:
    "The option's default as help text: the shapes world's, and Stable Diffusion's where it differs."
    sd = STABLE_DIFFUSION.get(name, getattr(_D, name))
    if sd == getattr(_D, name):
        return f"default {getattr(_D, name)}"
    return f"default {getattr(_D, name)}; {sd} on Stable Diffusion"


CONFIG_OPTIONS = {
    "normalise": ("--normalise", dict(choices=NORMALISATIONS, help=f"how the map is scaled to [0, 1] ({_default('normalise')})")),
    "clamp_ratio": ("--clamp-ratio", dict(type=float, help=f"for --normalise clamp: the multiple of the map's mean that maps "
                                                           f"to 1, in (0, {MAX_CLAMP_RATIO:g}] ({_default('clamp_ratio')})")),
    "threshold": ("--threshold", dict(type=float, help=f"mask threshold in [0, 1] ({_default('threshold')})")),
    "blur": ("--blur", dict(type=int, help=f"odd Gaussian blur kernel in pixels, 0 = off ({_default('blur')})")),
    "fill_holes": ("--fill-holes", dict(action=argparse.BooleanOptionalAction,
                                        help="fill the regions the mask encloses (default on; off on Stable Diffusion)")),
    "refine": ("--refine", dict(action=argparse.BooleanOptionalAction,
                                help="snap the latent-resolution map to the image's edges before the threshold "
                                     "(default on; off on Stable Diffusion)")),
    "refine_radius": ("--refine-radius", dict(type=int, help=f"refinement window radius in latent cells, >= 1 ({_default('refine_radius')})")),
    "n_noise": ("--n-noise", dict(type=int, help=f"noise draws for the mask, in [1, {MAX_N_NOISE}] ({_default('n_noise')})")),
    "mask_strength": ("--mask-strength", dict(type=float, help=f"noise level for the mask in (0, 1] ({_default('mask_strength')})")),
    "steps": ("--steps", dict(type=int, help=f"DDIM steps, >= 1 ({_default('steps')})")),
    "edit_start": ("--start", dict(type=float, help=f"fraction of the steps skipped, in [0, 1) ({_default('edit_start')})")),
    "guidance": ("--guidance", dict(type=float, help=f"classifier-free guidance, >= 0 ({_default('guidance')})")),
    "encoding": ("--encoding", dict(choices=ENCODINGS, help=f"how the image is encoded ({_default('encoding')})")),
    "composite": ("--composite", dict(action=argparse.BooleanOptionalAction,
                                      help="paste the edit into the input pixels, so that outside the mask they stay "
                                           "the input's; --no-composite keeps the decoded image there (default on)")),
    "feather": ("--feather", dict(type=int, help=f"odd feather kernel of the composite in pixels, 0 = hard edge ({_default('feather')})")),
}


def add_config_arguments(parser: argparse.ArgumentParser):
    """Add one option per DiffEditConfig field in CONFIG_OPTIONS (dest: the field's name). Each
    defaults to None, "not given": `config_from_args` lays the given ones over the model's defaults."""
    for name, (flag, kwargs) in CONFIG_OPTIONS.items():
        parser.add_argument(flag, dest=name, default=None, **kwargs)


def given_settings(args: argparse.Namespace) -> dict:
    "The settings the options gave, {field: value}; the ones left out are not in it."
    return {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace, base: DiffEditConfig | None = None, quiet: bool = False) -> DiffEditConfig:
    """The validated config the options ask for: `base`'s settings with the given options over
    them. `base` is the model's defaults (`DiffEditConfig.for_model(model)`); None takes the
    shapes world's, `DiffEditConfig()`, which also checks the options before a model is loaded.
    quiet: the options were checked by an earlier call, which said their warnings (an even blur
    rounded up) once already. A bad value raises ConfigError with the option's flag first."""
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", DiffEditWarning)
            return (base or DiffEditConfig()).replace(**given_settings(args)).validate()
    except ConfigError as e:
        raise with_option(e) from None


def with_option(error: ConfigError) -> ConfigError:
    "The same error with its command-line option first (`--start: edit_start must be ...`), if it has one."
    flag = CONFIG_OPTIONS.get(error.field, (None,))[0]
    if flag is None or str(error).startswith(flag):
        return error
    return ConfigError(error.field, f"{flag}: {error}")


# ----------------------------------------------------------------------------- diffusers' names
# diffusers' argument -> our field; strength is the fraction of the schedule run, as in img2img
DIFFUSERS_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "strength": "edit_start"}


def with_diffusers_names(config: DiffEditConfig, num_inference_steps=None, guidance_scale=None,
                         strength=None) -> DiffEditConfig:
    """A validated copy of `config` with diffusers' names applied (None: not given).

    num_inference_steps -> steps, guidance_scale -> guidance, strength -> edit_start = 1 - strength,
    rounded as diffusers' img2img rounds it: the last int(steps * strength) steps run. A config field
    set away from its default and a diffusers name that disagrees with it raise ConfigError naming
    both; a field left at its default gives way. A bad value names the diffusers argument.
    """
    config = _apply_names(config, {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale})
    if strength is None:
        return config
    _check_real("strength", strength)
    if not 0.0 < strength <= 1.0:
        raise ConfigError("strength", f"strength must be in (0, 1], the fraction of the schedule run "
                                      f"(edit_start = 1 - strength); got {strength}")
    skipped = config.steps - int(config.steps * strength)  # img2img's t_start
    if config.edit_start != _D.edit_start and config.start_index != skipped:
        raise ConfigError("strength", f"strength={strength!r} and config.edit_start={config.edit_start!r} disagree "
                                      f"(steps {skipped} and {config.start_index} of {config.steps} to start from); pass one of them")
    edit_start = skipped / config.steps
    while int(edit_start * config.steps) < skipped:  # 29 / 100 * 100 is 28.999999999999996
        edit_start = math.nextafter(edit_start, 1.0)
    return _apply_names(config, {"strength": edit_start}, check=False)


def _apply_names(config: DiffEditConfig, given: dict, check: bool = True) -> DiffEditConfig:
    "Set each given diffusers name's field (after checking it agrees with the config), validate, name theirs in errors."
    changes = {}
    for theirs, value in given.items():
        if value is None:
            continue
        ours = DIFFUSERS_NAMES[theirs]
        current = getattr(config, ours)
        if check and current != getattr(_D, ours) and current != value:
            raise ConfigError(theirs, f"{theirs}={value!r} and config.{ours}={current!r} disagree; pass one of them")
        changes[ours] = value
    try:
        return config.replace(**changes).validate()
    except ConfigError as e:
        if e.field not in changes:
            raise
        theirs = {v: k for k, v in DIFFUSERS_NAMES.items()}[e.field]
        raise ConfigError(theirs, f"{theirs}: {e}") from None
