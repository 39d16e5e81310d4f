"""Pictures: grids of images, maps and masks, with titles. Takes PIL images, tensors or arrays.

Used by every notebook; `overview` is the CLI's input | map | mask | edit picture.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_array(x) -> np.ndarray:
    """Anything image-like -> an (H, W, 3) uint8 array (maps and masks in [0, 1] become gray).
    Tensors may be (3, H, W) in [-1, 1], (1, 3, H, W), or (H, W) maps in [0, 1]."""
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"))
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu()
        if x.ndim == 4:
            x = x[0]
        if x.ndim == 3 and x.shape[0] in (1, 3):
            x = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.dtype != np.uint8:
        x = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    return x


MASK_COLOUR, MASK_ALPHA = (255, 0, 80), 0.5  # how a mask is painted over an image, here and in the widget


def overlay(image, mask, colour=MASK_COLOUR, alpha=MASK_ALPHA) -> Image.Image:
    "The image with the mask painted over it in a translucent colour."
    img = to_array(image).astype(np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] * alpha
    out = img * (1 - m) + np.array(colour, np.float32) * m
    return Image.fromarray(out.round().astype(np.uint8))


def image_grid(images, titles=None, ncols=None, scale=4, pad=4, title_height=14) -> Image.Image:
    """Images side by side (and in rows of `ncols`), each scaled up `scale` times with nearest
    neighbours (small images stay crisp; a scale below 1 shrinks them smoothly), a title above
    each. Returns one PIL image."""
    arrays = [to_array(im) for im in images]
    n = len(arrays)
    ncols = ncols or n
    nrows = -(-n // ncols)
    h = _scaled(max(a.shape[0] for a in arrays), scale)
    w = _scaled(max(a.shape[1] for a in arrays), scale)
    th = title_height if titles else 0
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + th + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, a in enumerate(arrays):
        r, c = divmod(i, ncols)
        x, y = pad + c * (w + pad), pad + r * (h + th + pad)
        im = Image.fromarray(a)
        size = (_scaled(a.shape[1], scale), _scaled(a.shape[0], scale))
        grid.paste(im.resize(size, Image.NEAREST if scale >= 1 else Image.BOX), (x, y + th))
        if titles:
            draw.text((x, y), str(titles[i]), fill="black")
    return grid


def _scaled(side: int, scale: float) -> int:
    return max(1, round(side * scale))


OVERVIEW_PANEL = 256  # pixels on a panel's longer side
OVERVIEW_MAX_SIDE = 4096  # pixels: any overview opens in any viewer (and in PIL, far below its bomb limit)


def overview(result, panel: int = OVERVIEW_PANEL, pad=4, title_height=14) -> Image.Image:
    """input | difference map | mask | edit, for a DiffEditResult, each panel about `panel` pixels
    on its longer side: small images are scaled up by a whole factor (nearest neighbours, crisp),
    large ones down, so a 64-px scene and a 4-megapixel photo both give a picture about 1,000 px
    wide, far within OVERVIEW_MAX_SIDE."""
    w, h = result.input_image.size
    side = max(w, h)
    scale = max(1, panel // side) if side <= panel else panel / side
    return image_grid(
        [result.input_image, result.difference_map, overlay(result.input_image, result.mask), result.image],
        titles=["input", "difference map", "mask", "edit"], scale=scale, pad=pad, title_height=title_height,
    )


def show(images, titles=None, ncols=None, figsize_per=2.5, cmap=None, suptitle=None):
    "Show images in a matplotlib figure (for notebooks); returns the figure."
    import matplotlib.pyplot as plt

    images = list(images)
    n = len(images)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(figsize_per * ncols, figsize_per * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, im in enumerate(images):
        ax = axes.flat[i]
        if isinstance(im, np.ndarray) and im.ndim == 2 and im.dtype != bool and cmap:
            ax.imshow(im, cmap=cmap, vmin=0, vmax=1)
        else:
            ax.imshow(to_array(im), interpolation="nearest")
        if titles:
            ax.set_title(str(titles[i]), fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
