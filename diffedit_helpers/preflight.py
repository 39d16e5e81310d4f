"""What `diffedit` checks before any model work: its arguments (`prepare_inputs`: the config, the
generator, the hooks, the prompts, the picture's size), components that load but
cannot work (a tokenizer without its vocabulary, a scheduler config that is not a mapping, more
steps than the model was trained with), inputs the model was never trained on (the bundled
model on a photo), and edits that will take minutes on this device (a cost estimate from the
UNet's operation count and the device's measured speed).

A model trained by `world/train.py` carries `training.json` in its folder: the image size and
the words of the captions it was trained on. Those of the bundled model say 64x64 shapes-world
scenes; anything else gets a warning that says so and how to use Stable Diffusion instead.
"""

from __future__ import annotations

import functools
import json
import re
import time
import warnings
from pathlib import Path

import torch

from .config import ConfigError, DiffEditConfig, DiffEditWarning, check_for_image
from .inputs import fit_picture
from .models import BUNDLED_PATH, ModelLoadError, as_model, check_tokenizer
from .text import check_prompt, indistinct

TRAINING_FILE = "training.json"
SLOW_SECONDS = 60.0  # warn when an edit is estimated to take longer than this
# a UNet's convolutions and attention run at about this fraction of a large matrix product's rate
# (the bundled UNet at 64x64 on one CPU thread: 30 GFLOP/s against 98 for a 512x512 matmul)
UNET_EFFICIENCY = 0.3


# ----------------------------------------------------------------------------- components
def check_model(model, steps: int):
    """Refuse a model whose components loaded but cannot edit, and more `steps` than its
    scheduler has timesteps; no model work. Raises ModelLoadError or ConfigError("steps")."""
    if not isinstance(model.scheduler_config, dict):
        raise ModelLoadError(f"model {model.name!r}: scheduler/scheduler_config.json must hold a JSON object (a mapping "
                             f"of settings), got {type(model.scheduler_config).__name__}")
    check_tokenizer(model)
    limit = model.scheduler_config.get("num_train_timesteps", 1000)
    if steps > limit:
        raise ConfigError("steps", f"steps must be an integer in [1, {limit}] (this model's training timesteps), got {steps}")


# ----------------------------------------------------------------------------- what the model was trained on
def training_folder(model) -> Path | None:
    "The model's folder, if it is a local one: the bundled model's, or the folder it was loaded from."
    if model.name == "bundled":
        return BUNDLED_PATH
    path = Path(str(model.name)).expanduser()
    return path if path.is_dir() else None


@functools.lru_cache(maxsize=16)
def _read_training(folder: Path) -> dict | None:
    file = folder / TRAINING_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) and "image_size" in info and "words" in info else None
    except (OSError, ValueError):
        return None


def training_info(model) -> dict | None:
    "What the model was trained on ({'image_size': [w, h], 'words': [...], ...}), when its folder records it."
    folder = training_folder(model)
    return _read_training(folder.resolve()) if folder is not None else None


def prompt_words(prompt: str) -> list[str]:
    "The words of a prompt, lower-cased (the tokenizer ignores case)."
    return re.findall(r"[^\W_]+", prompt.lower())


def outside_training(model, size: tuple[int, int], prompts) -> str | None:
    """A one-line warning if the model records what it was trained on and this edit is not
    that: another image size, or words its captions never had. None when it fits."""
    info = training_info(model)
    if info is None:
        return None
    tw, th = info["image_size"]
    known = set(info["words"])
    problems = []
    if tuple(size) != (tw, th):
        problems.append(f"this image is {size[0]}x{size[1]}")
    new = sorted({w for p in prompts for w in prompt_words(p)} - known)
    if new:
        problems.append("these words are new to it: " + ", ".join(repr(w) for w in new[:8]) + (", ..." if len(new) > 8 else ""))
    if not problems:
        return None
    who = "the bundled model" if model.name == "bundled" else f"model {model.name!r}"
    about = info.get("about", "its training scenes")
    return (f"{who} was trained only on {tw}x{th} {about}, and {' and '.join(problems)}: expect a wrong mask and a "
            f"meaningless edit. For photos use Stable Diffusion: --model <local SD folder or hub id> "
            f"(load_model(name, device='cuda', dtype=torch.float16))")


# ----------------------------------------------------------------------------- cost
def unet_samples(config) -> int:
    "UNet evaluations (samples) of one edit: the mask, the encoding (inversion) and the denoising."
    steps = config.steps - config.start_index
    denoise = steps * (2 if config.guidance > 1 else 1)
    return 2 * config.n_noise + (steps if config.encoding == "inversion" else 0) + denoise


@functools.lru_cache(maxsize=64)
def _unet_flops(unet_class, config_json: str, height: int, width: int, text_len: int, text_dim: int,
                pooled_dim: int = 0) -> float:
    """Floating-point operations of one UNet sample, counted on the meta device (no memory, no compute).
    pooled_dim > 0: an SDXL UNet, also given a (1, pooled_dim) pooled embedding and its time ids."""
    from torch.utils.flop_counter import FlopCounterMode

    from .text import XLEmbeddings, time_ids, unet_conditioning

    with torch.device("meta"):
        unet = unet_class.from_config(json.loads(config_json))
        x = torch.zeros(1, unet.config.in_channels, height, width)
        emb = torch.zeros(1, text_len, text_dim)
        if pooled_dim:
            emb = XLEmbeddings(emb, torch.zeros(1, pooled_dim), torch.tensor([time_ids((height, width))], dtype=torch.float32))
        with FlopCounterMode(display=False) as counter:
            unet(x, torch.tensor(1), **unet_conditioning(emb))
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=8)
def device_speed(device: torch.device, dtype: torch.dtype) -> float:
    "Operations per second a UNet reaches here: a large matrix product's measured rate times UNET_EFFICIENCY."
    n = 512 if device.type == "cpu" else 2048
    a = torch.ones(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        float((a @ a)[0, 0])  # reading a value waits for the device
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / max(best, 1e-9) * UNET_EFFICIENCY


def estimate_seconds(model, size: tuple[int, int], config) -> float | None:
    "Estimated seconds of one edit of a `size` (w, h) image: UNet operations / the device's speed. None if not countable."
    f = model.vae_scale_factor
    try:
        cfg = json.dumps(dict(model.unet.config), sort_keys=True, default=str)
        width = sum(enc.config.hidden_size for enc in model.text_encoders)
        pooled = model.text_encoder_2.config.projection_dim if model.is_xl else 0
        flops = _unet_flops(type(model.unet), cfg, size[1] // f, size[0] // f, model.max_prompt_tokens, width, pooled)
        return flops * unet_samples(config) / device_speed(model.device, model.dtype)
    except Exception:  # noqa: BLE001 - an estimate is advice: a UNet the counter cannot run gets none
        return None


def slow_edit(model, size: tuple[int, int], config) -> str | None:
    "A one-line warning if the edit is estimated to take more than SLOW_SECONDS here, with the way out; else None."
    seconds = estimate_seconds(model, size, config)
    if seconds is None or seconds <= SLOW_SECONDS:
        return None
    native = model.unet.config.sample_size * model.vae_scale_factor
    took = f"{seconds / 60:.0f} minutes" if seconds < 5400 else f"{seconds / 3600:.1f} hours"
    if max(size) > native:
        way_out = (f"shrink it first: fit='resize' with max_side={native} (CLI: --fit resize --size {native}; this model's "
                   f"native size is {native} px)")
    else:
        way_out = "use fewer steps or noise draws (--steps, --n-noise), or a faster device"
    return (f"this edit of a {size[0]}x{size[1]} image will take about {took} on {model.device.type} "
            f"({unet_samples(config)} UNet evaluations); {way_out}")


def warn_before_editing(model, image, source_prompt: str, target_prompt: str, config, stacklevel: int = 4):
    "The warnings of this module for one prepared image: outside the model's training, too slow here."
    for message in (outside_training(model, image.size, [source_prompt, target_prompt]), slow_edit(model, image.size, config)):
        if message:
            warnings.warn(message, DiffEditWarning, stacklevel=stacklevel)


# ----------------------------------------------------------------------------- the edit's arguments
def checked_config(config, model=None) -> DiffEditConfig:
    """A validated copy of `config` (None: the defaults for `model`, `DiffEditConfig.for_model`):
    the caller's object is never changed."""
    if config is None:
        config = DiffEditConfig.for_model(model) if model is not None else DiffEditConfig()
    if not isinstance(config, DiffEditConfig):
        raise TypeError(f"config must be a DiffEditConfig or None, got {type(config).__name__}")
    return config.replace().validate()


def check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    if generator is not None and generator.device.type == "meta":
        raise ValueError("generator is on the meta device, which holds no random numbers; use torch.Generator() (the CPU) "
                         "or torch.Generator(model.device)")


def prepare_inputs(model, image, source_prompt, target_prompt, config=None, fit: str = "error", max_side: int | None = None):
    """Every check `diffedit` makes before model work, for one image: returns (RGB image, validated
    copy of config). Raises ValueError/TypeError naming the bad argument. For other entry points
    that take the same arguments (a mask-only run, an evaluation)."""
    model = as_model(model)
    config = checked_config(config, model)
    check_model(model, config.steps)
    return check_edit_inputs(model, image, source_prompt, target_prompt, config, fit, max_side)[0], config


def check_edit_inputs(model, image, source_prompt, target_prompt, config, fit, max_side=None, has_mask: bool = False):
    """Check the prompts and the image (config and model already checked); no model work. Returns
    (the RGB image after `fit`, its (H, W) before) (`inputs.fit_picture`). The source prompt may be empty: the map is then taken against the unconditional
    prediction. Warns when the text model cannot tell the prompts apart, when the model was never
    trained on such an edit, and when the edit will be slow here."""
    check_prompt("source_prompt", source_prompt, allow_empty=True)
    check_prompt("target_prompt", target_prompt)
    image, original = fit_picture(model, image, fit, max_side)
    f = model.vae_scale_factor
    check_for_image(config, image.width, image.height, f)
    if not has_mask:  # with the caller's mask the prompts need not differ
        if source_prompt.strip() == target_prompt.strip():
            warnings.warn("source_prompt and target_prompt are identical: the mask is empty and the image is returned "
                          "unchanged", DiffEditWarning, stacklevel=3)
        elif (why := indistinct(model, source_prompt, target_prompt)) is not None:
            warnings.warn(f"source_prompt and target_prompt differ, but the text model cannot tell them apart: {why}; "
                          f"the mask is empty and the image is returned unchanged", DiffEditWarning, stacklevel=3)
    warn_before_editing(model, image, source_prompt, target_prompt, config)
    return image, original


def check_callables(**hooks):
    "Each hook must be callable or None."
    for name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be a function or None, got {type(hook).__name__}")
