"""The edit's door for pictures: whatever a caller brings (a path, an http(s) URL, a PIL image, an
array, a torch tensor; and a mask in any of the forms `mask.user_mask` takes) as an RGB picture
whose sides the model takes, with its mask at that size. No model work.

    image, mask = fit_inputs(model, "photo.jpg", "mask.png", fit="resize", max_side=512)
    diffedit(model, image, source_prompt, target_prompt, mask=mask)

Sides must be multiples of the VAE scale factor: fit="error" refuses others (naming the fix),
"resize" and "crop" make them so, and "resize" with `max_side` first shrinks a larger picture
until its longer side is at most that many pixels. A mask drawn at the picture's size before
fitting is cropped or resized the same way. `diffedit` itself takes pictures as they are (fit="error").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import fit_size, to_rgb
from .mask import user_mask


def fit_picture(model, image, fit: str = "error", max_side: int | None = None, name: str = "image") -> tuple[Image.Image, tuple[int, int]]:
    """(the RGB picture at sides `model` takes, its (H, W) before `fit`). Raises ValueError/TypeError
    naming `name` when it cannot be read or fitted."""
    f = model.vae_scale_factor
    image = to_rgb(image, name, multiple=f)
    original = (image.height, image.width)
    min_side = f * 2 ** (len(model.unet.config.block_out_channels) - 1)  # the UNet's deepest level keeps a cell
    return fit_size(image, f, fit=fit, name=name, min_side=min_side, max_side=max_side), original


def fit_inputs(model, image, mask=None, fit: str = "error", max_side: int | None = None,
               mask_name: str = "mask") -> tuple[Image.Image, np.ndarray | None]:
    """(picture, mask): the picture as `fit_picture` gives it and the caller's mask, if any, as an
    (H, W) bool array at its size (given at the size before `fit` or after it)."""
    image, original = fit_picture(model, image, fit, max_side)
    if mask is None:
        return image, None
    return image, user_mask(mask, (image.height, image.width), name=mask_name, original=original, fit=fit)
