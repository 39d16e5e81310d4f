"""A picture from a prompt, and the notebooks' example picture for each model.

`generate_image` is text-to-image with the same pieces as the edit: start from pure noise at the
noisiest level, then DDIM steps under classifier-free guidance, and decode. It is the edit's loop
with nothing held back and nothing kept from an input picture.

`example_picture(model)` is what the notebooks edit. The bundled model gets its shapes-world
horse (a file in images/). Stable Diffusion gets the blog post's own example without a photo to
download: it generates "a photo of a brown horse on grass" with a fixed seed, then the notebooks
edit it into a zebra. `example_picture(model, "second")` is the second example, a cup of coffee
(a photo in images/; on the bundled model, the same horse scene).
Taught in notebook 00_quickstart.
"""

from __future__ import annotations

import torch
from PIL import Image

from .config import ConfigError, DiffEditConfig
from .images import to_rgb
from .latents import decode_to_images
from .models import as_model
from .noising import draw_noise, guided_noise, make_scheduler
from .paths import EXAMPLES, images_dir
from .preflight import check_model
from .text import check_prompt, encode_prompts, native_size

HORSE_SEED = 0  # the seed of the generated horse photo on Stable Diffusion
WHICH = ("main", "second")
_generated: dict = {}  # (id(model), prompt, seed, steps, guidance, size) -> PIL image, so each notebook generates once


def check_size(model, size) -> tuple[int, int]:
    "size = (height, width) in pixels, each a positive multiple of the VAE scale factor; None: the model's native size."
    if size is None:
        return native_size(model)
    f = model.vae_scale_factor
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= f and s % f == 0 for s in size)):
        raise ConfigError("size", f"size must be (height, width), each a positive multiple of {f} pixels "
                                  f"(the VAE scale factor), got {size!r}")
    return tuple(size)


@torch.no_grad()
def generate_image(model, prompt: str, generator: torch.Generator | None = None, steps: int = 50,
                   guidance: float = 7.5, size: tuple[int, int] | None = None) -> Image.Image:
    """Text to image with DDIM and classifier-free guidance: a PIL image of `size` = (height, width)
    pixels (None: the model's native size, 512 x 512 for Stable Diffusion 1.5).

    The starting noise (1, C, H/f, W/f) comes from `generator` (drawn on its own device, so the same
    seed gives the same picture on any device). Bad arguments raise before any model work.
    """
    from .edit import check_generator

    model = as_model(model)
    check_prompt("prompt", prompt)
    config = DiffEditConfig(steps=steps, guidance=guidance).validate()  # the same checks and messages as an edit's
    check_generator(generator)
    height, width = check_size(model, size)
    check_model(model, config.steps)
    f = model.vae_scale_factor
    # 1. the prompt and the empty prompt (guidance's unconditional branch): (1, L, D) each
    emb = encode_prompts(model, [prompt, ""], names=["prompt", ""], size=(height, width))
    cond, uncond = emb[0:1], emb[1:2]
    # 2. pure noise at the noisiest level: (1, C, h, w)
    scheduler = make_scheduler(model, config.steps)
    x = draw_noise((1, model.latent_channels, height // f, width // f), generator, model.device, model.dtype)
    x = x * scheduler.init_noise_sigma
    # 3. every DDIM step, guided towards the prompt
    for t in scheduler.timesteps:
        x = scheduler.step(guided_noise(model, x, t, cond, uncond, config.guidance), t, x).prev_sample
    return decode_to_images(model, x)[0]


def example_picture(model, which: str = "main") -> tuple[Image.Image, str, str, str]:
    """The notebooks' example for `model`: (RGB image, what it is, source prompt, target prompt).

    which="main": the bundled model's shapes-world horse; on any other model a horse photo it
    generates itself from the source prompt (seed HORSE_SEED, the model's default steps and guidance,
    its native size), to be edited into a zebra. which="second": on other models a photo of a cup of
    coffee from images/; on the bundled model the horse scene again.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    model = as_model(model)
    if model.name == "bundled" or which == "second":
        file, source, target = EXAMPLES["bundled" if model.name == "bundled" else "photo"]
        return to_rgb(images_dir() / file), file, source, target
    source, target = EXAMPLES["generated"]
    config = DiffEditConfig.for_model(model)
    key = (id(model), source, HORSE_SEED, config.steps, config.guidance)
    if key not in _generated:
        _generated[key] = generate_image(model, source, torch.Generator().manual_seed(HORSE_SEED), config.steps,
                                         config.guidance)
    return _generated[key].copy(), f"generated from {source!r}, seed {HORSE_SEED}", source, target
