"""An interactive mask explorer: move the threshold and blur, watch the mask change.

    result = diffedit(model, image, "a brown horse on grass", "a zebra on grass", generator=g)
    mask_explorer(result.input_image, result.difference_map)      # display it in a notebook

The rule it shows is the one `diffedit` uses (`diffedit_helpers.mask.make_mask`):

    mask = fill_holes?( blur(difference_map, blur) > threshold )        # (H, W) bool

The widget is thin: the difference map is computed once, before it. A control only re-blurs
(once per blur value, then cached), re-thresholds, fills holes and redraws. It never runs a model.
Taught in notebook 05_threshold_and_blur. Not imported by `import diffedit_helpers` (it needs ipywidgets).
"""

from __future__ import annotations

import cv2
import ipywidgets as widgets
import numpy as np
import torch

from .config import DiffEditConfig
from .mask import blur_mask, make_mask
from .plotting import MASK_ALPHA, MASK_COLOUR, to_array

MAX_BLUR = 31  # largest kernel (pixels) on the blur slider, unless a larger one is asked for
PAD = 4  # white pixels between the three panels of the view
MIN_VIEW = 256  # small images are scaled up (nearest neighbour) until a panel is at least this wide
# fast PNG: the "up" filter and run-length zlib encode 1544x512 pixels in about 15 ms
_PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def blur_options(largest: int = MAX_BLUR) -> list[int]:
    "The blur slider's stops: 0 (off) and the odd kernel sizes 1, 3, ..., `largest`. Never even."
    return [0, *range(1, largest + 1, 2)]


class MaskExplorer(widgets.VBox):
    """Sliders for threshold and blur, a hole-filling checkbox, and the picture they make.

    Attributes:
        threshold: FloatSlider in [0, 1]; the mask is the blurred map strictly above it.
        blur: SelectionSlider over 0 and odd Gaussian kernel sizes (pixels); even sizes are not stops.
        holes: Checkbox; fill the regions the mask encloses.
        view: Image widget, PNG bytes of  input | mask over input | mask  side by side,
            each panel (H * scale, W * scale), separated by PAD white pixels.
        area: Label with the mask's share of the image in percent.
        mask: the current mask, (H, W) bool.
        difference_map: the map it thresholds, (H, W) float32 in [0, 1].
    Build it with `mask_explorer`, which checks its arguments.
    """

    def __init__(self, image: np.ndarray, difference_map: np.ndarray, threshold: float, blur: int,
                 fill_holes: bool, scale: int):
        self.difference_map = difference_map  # (H, W) float32
        self.scale = scale
        self._blurred_cache: dict[int, np.ndarray] = {}
        self.threshold = widgets.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.01, description="threshold",
                                             readout_format=".2f")
        self.blur = widgets.SelectionSlider(options=blur_options(max(MAX_BLUR, blur)), value=blur,
                                            description="blur (px)")
        self.holes = widgets.Checkbox(value=fill_holes, description="fill holes", indent=False)
        self.view = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))  # shrinks to fit
        self.area = widgets.Label()
        self._canvas, self._image, self._tinted = _canvas(image, scale)
        self._mask = np.zeros(difference_map.shape, dtype=bool)
        caption = widgets.Label("input  |  mask over input  |  mask")
        super().__init__([widgets.HBox([self.threshold, self.blur, self.holes]), caption, self.view, self.area])
        for control in (self.threshold, self.blur, self.holes):
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def mask(self) -> np.ndarray:
        "The mask for the current controls, (H, W) bool (a copy)."
        return self._mask.copy()

    def blurred(self, kernel: int) -> np.ndarray:
        "The difference map blurred with `kernel`, (H, W) float32; computed once per kernel, then cached."
        if kernel not in self._blurred_cache:
            self._blurred_cache[kernel] = blur_mask(self.difference_map, kernel)
        return self._blurred_cache[kernel]

    def update(self) -> None:
        "Recompute the mask from the cached blurred map and redraw: one new PNG in `view`, one label."
        blurred = self.blurred(self.blur.value)  # (H, W), already blurred: make_mask only thresholds
        self._mask = make_mask(blurred, self.threshold.value, blur=0, holes=self.holes.value)
        self.view.value = self._draw(self._mask)
        self.area.value = f"mask: {100 * self._mask.mean():.1f} % of the image"

    def _on_change(self, change) -> None:
        self.update()

    def _draw(self, mask: np.ndarray) -> bytes:
        "Paint the overlay and mask panels into the cached canvas and encode it as PNG."
        h, w = self._image.shape[:2]  # scaled panel size
        m = mask if self.scale == 1 else cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        m = m.astype(bool)[..., None]  # (h, w, 1)
        x1, x2 = w + PAD, 2 * (w + PAD)
        self._canvas[:, x1 : x1 + w] = np.where(m, self._tinted, self._image)  # mask over input
        self._canvas[:, x2 : x2 + w] = m * np.uint8(255)  # the mask, white on black
        ok, png = cv2.imencode(".png", self._canvas, _PNG_FLAGS)  # the canvas is BGR, as OpenCV expects
        if not ok:
            raise RuntimeError("could not encode the mask view as PNG")
        return png.tobytes()


def _canvas(image: np.ndarray, scale: int):
    """The white (h, 3 w + 2 PAD, 3) BGR canvas with the input painted in the first panel, the scaled
    input (h, w, 3) and the input tinted with the mask colour (h, w, 3), h = H * scale, w = W * scale."""
    bgr = image[..., ::-1]  # (H, W, 3) RGB -> BGR
    if scale > 1:
        bgr = cv2.resize(bgr, (bgr.shape[1] * scale, bgr.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    bgr = np.ascontiguousarray(bgr)
    tint = np.array(MASK_COLOUR[::-1], np.float32)
    tinted = (bgr.astype(np.float32) * (1 - MASK_ALPHA) + tint * MASK_ALPHA).round().astype(np.uint8)
    h, w = bgr.shape[:2]
    canvas = np.full((h, 3 * w + 2 * PAD, 3), 255, np.uint8)
    canvas[:, :w] = bgr
    return canvas, bgr, tinted


def mask_explorer(image, difference_map, threshold: float | None = None, blur: int | None = None,
                  fill_holes: bool | None = None, scale: int | None = None) -> MaskExplorer:
    """An interactive view of `mask = fill_holes?(blur(difference_map, blur) > threshold)`.

    image: a PIL image or anything `plotting.to_array` takes, (H, W) pixels.
    difference_map: (H, W) float array (or tensor) in [0, 1] at the image's resolution,
        e.g. `DiffEditResult.difference_map`.
    threshold, blur, fill_holes: starting values; None takes `DiffEditConfig()`'s. blur is 0 or an
        odd kernel in pixels (an even one is rounded up, with a warning, as the config does).
    scale: nearest-neighbour zoom of each panel; None makes a panel at least MIN_VIEW pixels wide.
    Returns a MaskExplorer (an ipywidgets VBox: display it). Raises ValueError naming a bad argument.
    """
    defaults = DiffEditConfig()
    config = DiffEditConfig(
        threshold=defaults.threshold if threshold is None else threshold,
        blur=defaults.blur if blur is None else blur,
        fill_holes=defaults.fill_holes if fill_holes is None else _as_bool(fill_holes),
    ).validate()  # ValueError naming threshold, blur or fill_holes
    rgb = _check_image(image)  # (H, W, 3) uint8
    diff = _check_map(difference_map, rgb.shape[:2])  # (H, W) float32
    if scale is None:
        scale = max(1, -(-MIN_VIEW // max(rgb.shape[:2])))
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 1 <= scale <= 64:
        raise ValueError(f"scale must be a whole number from 1 to 64 (nearest-neighbour zoom), got {scale!r}")
    return MaskExplorer(rgb, diff, config.threshold, config.blur, config.fill_holes, int(scale))


def _as_bool(value):
    return bool(value) if isinstance(value, np.bool_) else value


def _check_image(image) -> np.ndarray:
    "Anything `to_array` takes -> (H, W, 3) uint8, or a ValueError naming `image`."
    try:
        rgb = to_array(image)
    except Exception as err:
        raise ValueError(f"image must be a PIL image, an (H, W, 3) array or a (3, H, W) tensor; got {type(image).__name__}: {err}") from err
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"image must be an RGB picture, (H, W, 3) as an array; got shape {tuple(np.shape(rgb))}")
    return rgb


def _check_map(difference_map, size: tuple[int, int]) -> np.ndarray:
    "A (H, W) map in [0, 1] matching the image's (H, W) -> float32 copy, or a ValueError naming `difference_map`."
    if isinstance(difference_map, torch.Tensor):
        difference_map = difference_map.detach().float().cpu().numpy()
    diff = np.asarray(difference_map)
    if not (np.issubdtype(diff.dtype, np.floating) or np.issubdtype(diff.dtype, np.integer) or diff.dtype == bool):
        raise ValueError(f"difference_map must hold real numbers in [0, 1], got dtype {diff.dtype}")
    if diff.ndim != 2:
        raise ValueError(f"difference_map must be 2-D, (H, W) = {size} like the image; got shape {diff.shape}")
    if diff.shape != tuple(size):
        raise ValueError(f"difference_map has shape {diff.shape} but the image is (H, W) = {tuple(size)}; "
                         "upsample the map to the image first (diffedit_helpers.upsample_map)")
    diff = diff.astype(np.float32)
    if not np.isfinite(diff).all():
        raise ValueError(f"difference_map contains {int((~np.isfinite(diff)).sum())} NaN or infinite values")
    lo, hi = float(diff.min()), float(diff.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"difference_map values must be in [0, 1], got min {lo:.4g} and max {hi:.4g}; "
                         "normalise it first (diffedit_helpers.normalise_map)")
    return np.ascontiguousarray(diff)
