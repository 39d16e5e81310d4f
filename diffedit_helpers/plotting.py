"""Pictures: grids of images, maps and masks, with titles. Takes PIL images, tensors or arrays.

Used by every notebook; `overview` is the CLI's input | map | mask | edit picture. `outline` draws a
mask so it shows on any background; `show` gives every map a colour bar; `show_maps` puts several
maps on one shared scale, with axes if asked.
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


# outline colours to choose from: the one furthest from the pixels the outline covers is used
OUTLINE_COLOURS = ((255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255), (0, 0, 0), (255, 40, 40))


def mask_edge(mask: np.ndarray) -> np.ndarray:
    "The pixels of `mask` (H, W) with a 4-neighbour outside it (or on the border): (H, W) bool."
    m = np.asarray(mask, dtype=bool)
    inner = np.pad(m, 1, constant_values=False)
    inner = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    return m & ~inner


def outline(image, mask, colour=None, dim: float = 0.5) -> Image.Image:
    """The image with the outside of the mask darkened by `dim` and the mask's edge drawn in `colour`
    (None: of OUTLINE_COLOURS, the one furthest from the image's pixels, so the mask shows on any
    picture and every mask on the same picture gets the same colour). image: anything `to_array`
    takes, (H, W); mask: (H, W) bool."""
    img = to_array(image).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    edge = mask_edge(m)
    if colour is None:
        pixels = img.reshape(-1, 3)
        dist = [np.linalg.norm(pixels - np.array(c, np.float32), axis=-1).mean() for c in OUTLINE_COLOURS]
        colour = OUTLINE_COLOURS[int(np.argmax(dist))]
    out = np.where(m[..., None], img, img * (1 - dim))
    out[edge] = colour
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


def show(images, titles=None, ncols=None, figsize_per=2.5, cmap=None, suptitle=None, colorbar=True):
    """Show images in a matplotlib figure (for notebooks); returns the figure. With `cmap`, a 2-D
    float array is a map in [0, 1], drawn in that colour map with a colour bar (`colorbar`)."""
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
            shown = ax.imshow(im, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if colorbar:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
        else:
            ax.imshow(to_array(im), interpolation="nearest")
        if titles:
            ax.set_title(str(titles[i]), fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_maps(maps, titles=None, ncols=None, figsize_per=2.8, cmap="magma", vmin=None, vmax=None, label=None,
              suptitle=None, axes_labels=None, aspect="equal"):
    """Several 2-D maps on ONE shared colour scale (vmin..vmax, by default the smallest and largest
    value of all of them) with one colour bar named `label`; returns the figure.
    axes_labels=(x label, y label) keeps the axes and their ticks (e.g. positions x features)."""
    import matplotlib.pyplot as plt

    maps = [np.asarray(m.detach().float().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float32) for m in maps]
    lo = float(min(m.min() for m in maps)) if vmin is None else vmin
    hi = float(max(m.max() for m in maps)) if vmax is None else vmax
    n = len(maps)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(figsize_per * ncols + 0.8, figsize_per * nrows + 0.4), squeeze=False,
                             layout="constrained")  # room for the titles and the bar
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, m in enumerate(maps):
        ax = axes.flat[i]
        shown = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        if axes_labels:
            ax.set_xlabel(axes_labels[0], fontsize=8)
            ax.set_ylabel(axes_labels[1], fontsize=8)
            ax.tick_params(labelsize=7)
        else:
            ax.axis("off")
        if titles:
            ax.set_title(str(titles[i]), fontsize=9)
    bar = fig.colorbar(shown, ax=list(axes.flat), fraction=0.05, pad=0.02)
    if label:
        bar.set_label(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
