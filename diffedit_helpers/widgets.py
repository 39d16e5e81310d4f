"""Interactive explorers: tune the mask with sliders, then run the edit with it.

    mask_explorer(image, difference_map)                       # threshold, blur, fill holes
    explorer = edit_explorer(model, image, "a brown horse on grass", "a zebra on grass")
    explorer                                                   # ... move the sliders, press Edit
    explorer.mask, explorer.result                             # the tuned mask and the edit, back in code

The rule they show is the one `diffedit` uses (`diffedit_helpers.mask.make_mask`):

    mask = fill_holes?( blur(difference_map, blur) > threshold )        # (H, W) bool

The widgets are thin: the difference map is computed once, before them. A mask control only
re-blurs (once per blur value, then cached), re-thresholds, fills holes and redraws; only the
edit explorer's Edit button runs a model.

Where the picture is small (up to MAX_FRAME_PIXELS, the bundled model's 64 x 64 is), the browser
holds one picture per threshold stop and the threshold slider switches between them itself
(`jslink`), without a round trip to the kernel; blur and hole filling redraw them in the kernel.
Pictures are sent at their own size and scaled up by the browser, pixel for pixel
(`image-rendering: pixelated`). A widget whose kernel has stopped (a restart, a reopened
notebook) says so and asks for its cell to be run again.
Taught in notebooks 05_threshold_and_blur and 06_masked_denoising. Not imported by
`import diffedit_helpers` (it needs ipywidgets).
"""

from __future__ import annotations

import asyncio
import html
import io
import numbers
import time

import cv2
import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import HTML, display

from .config import DiffEditConfig
from .edit import diffedit, difference_map
from .preflight import prepare_inputs
from .mask import blur_mask, make_mask
from .models import as_model
from .plotting import MASK_ALPHA, MASK_COLOUR, to_array

MAX_BLUR = 31  # largest kernel (pixels) on the blur slider, unless a larger one is asked for
PAD = 4  # white pixels between the panels of a picture
MIN_VIEW = 256  # small images are shown scaled up (by the browser) until a panel is at least this wide
THRESHOLD_STOPS = 100  # the threshold slider's stops: 0, 0.01, ..., 1 (and the starting value)
MAX_FRAME_PIXELS = 128 * 128  # up to this many pixels the browser keeps one picture per threshold stop
FRAME_CHUNK = 10  # frames drawn per turn of the kernel's event loop after a blur or hole-filling change
FRAME_PAUSE_S = (0.06, 0.015)  # before the first chunk (the browser paints the frame on screen), between chunks
MAX_SEED = 2**63 - 1
_PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast: a 200 x 64 picture encodes in a fraction of a millisecond

# One style for every explorer: scaled pictures stay pixelated, the deck of pictures shows no tab
# bar, and a widget whose kernel is gone (ipywidgets marks its views `jupyter-widgets-disconnected`)
# greys out and shows its "run this cell" line.
_CSS = """
.diffedit-pixelated, .diffedit-pixelated img {image-rendering: pixelated;}
.diffedit-frames > .lm-TabBar, .diffedit-frames > .p-TabBar, .diffedit-frames > .widget-tab-bar {display: none !important;}
.diffedit-frames > .widget-tab-contents {border: none !important; padding: 0 !important; overflow: visible !important;}
.diffedit-explorer .diffedit-stale {display: none;}
.diffedit-explorer.jupyter-widgets-disconnected .diffedit-stale {display: block; padding: 4px 8px; margin: 2px 0;
    border-left: 4px solid #d9822b; background: #fff4e5; color: #5c3c00;}
.diffedit-explorer.jupyter-widgets-disconnected .diffedit-live {opacity: 0.35; pointer-events: none;}
"""
STALE = "This explorer's kernel has stopped (a restart, or a reopened notebook): run this cell to start it again."
NOTE = ("Run this cell to start the explorer: its sliders need a running kernel. (If you see this line, or "
        "\"model not found\" below, the kernel that drew it has stopped.)")


def blur_options(largest: int = MAX_BLUR) -> list[int]:
    "The blur slider's stops: 0 (off) and the odd kernel sizes 1, 3, ..., `largest`. Never even."
    return [0, *range(1, largest + 1, 2)]


def threshold_options(start: float) -> list[tuple[str, float]]:
    "The threshold slider's stops, (label, value): 0, 0.01, ..., 1 and `start` among them."
    values = sorted({round(i / THRESHOLD_STOPS, 2) for i in range(THRESHOLD_STOPS + 1)} | {float(start)})
    return [(f"{v:.2f}" if round(v, 2) == v else f"{v:.4g}", v) for v in values]


class RestartSafe:
    """A widget box that shows, next to itself, a "run this cell" line for readers whose kernel is
    gone. Displayed, it writes two outputs: that line (HTML, hidden by the live widget's style)
    and the widget. After a restart ipywidgets keeps the old views but marks them disconnected:
    the style then greys the controls out and shows STALE. A reopened notebook has no live
    widget: the line stays visible above "model not found"."""

    def _restart_safe(self, box: widgets.Box) -> widgets.HTML:
        "Mark `box` and return the HTML child carrying the style and the STALE line."
        box.add_class("diffedit-explorer")
        self._note_class = f"diffedit-note-{box.model_id}"
        return widgets.HTML(f"<style>{_CSS}.{self._note_class} {{display: none;}}</style>"
                            f'<div class="diffedit-stale">{html.escape(STALE)}</div>')

    def __repr__(self) -> str:  # the text/plain of the display: a text-only frontend cannot show the widget
        return f"{type(self).__name__}: an interactive explorer; run its cell in Jupyter (a running kernel) to use it"

    def _ipython_display_(self, **kwargs):
        if getattr(self, "_note_class", None):  # a nested explorer shown alone has no note of its own
            display(HTML(f'<div class="{self._note_class}"><em>{html.escape(NOTE)}</em></div>'))
        parent = getattr(super(), "_ipython_display_", None)
        if parent is not None:  # ipywidgets 7 displays itself
            parent(**kwargs)
        else:  # ipywidgets 8 gives its mimebundle
            display(self._repr_mimebundle_(), raw=True)


class MaskExplorer(RestartSafe, widgets.VBox):
    """Sliders for threshold and blur, a hole-filling checkbox, and the picture they make.

    Attributes:
        threshold: SelectionSlider over 0, 0.01, ..., 1 (and the start value); the mask is the
            blurred map strictly above it.
        blur: SelectionSlider over 0 and odd Gaussian kernel sizes (pixels); even sizes are not stops.
        holes: Checkbox; fill the regions the mask encloses.
        frames: Image widgets, PNG bytes of  input | mask over input | mask  side by side, each
            panel (H, W) at the image's own size, separated by PAD white pixels: one per
            threshold stop when `cached` (the browser shows the slider's), else one, redrawn.
        view: the frame for the current controls.
        area: Label with the mask's share of the image in percent.
        mask: the current mask, (H, W) bool.
        difference_map: the map it thresholds, (H, W) float32 in [0, 1].
        scale: how many screen pixels the browser draws per image pixel.
        cached: one frame per threshold stop (default: pictures up to MAX_FRAME_PIXELS).
    nested=True leaves the style and the "run this cell" lines to an explorer around it.
    Build it with `mask_explorer`, which checks its arguments.
    """

    def __init__(self, image: np.ndarray, difference_map: np.ndarray, threshold: float, blur: int,
                 fill_holes: bool, scale: int, cached: bool | None = None, nested: bool = False):
        self.difference_map = difference_map  # (H, W) float32
        self.scale = scale
        self.cached = difference_map.size <= MAX_FRAME_PIXELS if cached is None else cached
        self._blurred_cache: dict[int, np.ndarray] = {}
        self._redraws = 0  # counts redraws, so that a newer one stops an older one's deferred frames
        self.threshold, self.blur, self.holes = _mask_controls(threshold, blur, fill_holes)
        self.area = widgets.Label()
        self._canvas, self._image, self._tinted = _canvas(image)
        self.frames = [_picture(self._canvas.shape, scale) for _ in (self.threshold.options if self.cached else [0])]
        self._mask = np.zeros(difference_map.shape, dtype=bool)
        self.controls = widgets.VBox([self.threshold, widgets.HBox([self.blur, self.holes])])
        super().__init__()
        # inside another explorer (nested), that one carries the style and the "run this cell" lines
        self.children = self._rows() if nested else [self._restart_safe(self), *self._rows()]
        for control in (self.blur, self.holes):
            control.observe(self._on_redraw, names="value")
        self.threshold.observe(self._on_threshold, names="index")
        self.redraw()

    def _rows(self) -> list:
        "The controls, the caption, the picture (a deck of frames when cached) and the area label."
        if self.cached:
            deck = widgets.Tab(children=self.frames, selected_index=self.threshold.index)
            deck.add_class("diffedit-frames")
            widgets.jslink((self.threshold, "index"), (deck, "selected_index"))  # switched in the browser
        else:
            deck = self.frames[0]
        live = widgets.VBox([self.controls, widgets.Label("input  |  mask over input  |  mask"), deck, self.area])
        live.add_class("diffedit-live")
        return [live]

    @property
    def mask(self) -> np.ndarray:
        "The mask for the current controls, (H, W) bool (a copy)."
        return self._mask.copy()

    @property
    def view(self) -> widgets.Image:
        "The frame that shows the current controls."
        return self.frames[self.threshold.index] if self.cached else self.frames[0]

    def blurred(self, kernel: int) -> np.ndarray:
        "The difference map blurred with `kernel`, (H, W) float32; computed once per kernel, then cached."
        if kernel not in self._blurred_cache:
            self._blurred_cache[kernel] = blur_mask(self.difference_map, kernel)
        return self._blurred_cache[kernel]

    def mask_at(self, threshold: float) -> np.ndarray:
        "The mask at `threshold` with the current blur and hole filling, (H, W) bool."
        return make_mask(self.blurred(self.blur.value), threshold, blur=0, holes=self.holes.value)

    def redraw(self, defer: bool = False) -> None:
        """Redraw every frame, nearest the one on screen first, then the mask and label. With
        `defer`, inside a running kernel, only the frame on screen is drawn now: the others follow
        in chunks of FRAME_CHUNK from the kernel's event loop, FRAME_PAUSE_S apart, so the browser
        paints the new picture before a hundred others reach it (a newer redraw drops the rest of
        an older one). Nearby stops are redrawn first: about 0.2 s after a change, all are."""
        self._redraws += 1
        if self.cached:
            order = sorted(range(len(self.frames)), key=lambda i: abs(i - self.threshold.index))
            loop = _running_loop() if defer else None
            self._draw_frames(order if loop is None else order[:1], self._redraws)
            if loop is not None:  # after the browser has had time to paint the frame on screen
                loop.call_later(FRAME_PAUSE_S[0], self._draw_later, loop, order[1:], self._redraws)
        self.update()

    def _draw_frames(self, indices: list[int], redraw: int) -> None:
        for i in indices:
            if redraw != self._redraws:  # a newer redraw has started
                return
            self.frames[i].value = self._draw(self.mask_at(self.threshold.options[i][1]))

    def _draw_later(self, loop, todo: list[int], redraw: int) -> None:
        self._draw_frames(todo[:FRAME_CHUNK], redraw)
        if todo[FRAME_CHUNK:] and redraw == self._redraws:
            loop.call_later(FRAME_PAUSE_S[1], self._draw_later, loop, todo[FRAME_CHUNK:], redraw)

    def update(self) -> None:
        "Recompute the mask for the current controls; redraw the one frame when not cached; relabel."
        self._mask = self.mask_at(self.threshold.value)
        if not self.cached:
            self.frames[0].value = self._draw(self._mask)
        self.area.value = f"mask: {100 * self._mask.mean():.1f} % of the image"

    def _on_threshold(self, change) -> None:
        self.update()

    def _on_redraw(self, change) -> None:
        self.redraw(defer=True)

    def _draw(self, mask: np.ndarray) -> bytes:
        "Paint the overlay and mask panels into the cached canvas and encode it as PNG."
        m = mask[..., None]  # (H, W, 1)
        w = self._image.shape[1]
        x1, x2 = w + PAD, 2 * (w + PAD)
        self._canvas[:, x1 : x1 + w] = np.where(m, self._tinted, self._image)  # mask over input
        self._canvas[:, x2 : x2 + w] = m * np.uint8(255)  # the mask, white on black
        return encode_png(self._canvas)


def _running_loop():
    "The kernel's running asyncio loop (ipykernel handles widget messages on it), or None outside one."
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _mask_controls(threshold: float, blur: int, fill_holes: bool):
    "The threshold slider (wide: 100 stops), the blur slider and the hole-filling box."
    wide = widgets.Layout(width="600px")  # on its own row: a track of over 400 px, 4 or more pixels per stop
    threshold_slider = widgets.SelectionSlider(options=threshold_options(threshold), value=threshold,
                                               description="mask threshold", layout=wide,
                                               style={"description_width": "initial"})
    blur_slider = widgets.SelectionSlider(options=blur_options(max(MAX_BLUR, blur)), value=blur, description="blur (px)")
    holes = widgets.Checkbox(value=fill_holes, description="fill holes", indent=False)
    return threshold_slider, blur_slider, holes


def _picture(shape: tuple, scale: int) -> widgets.Image:
    "An Image widget for a (h, w, 3) picture, drawn `scale` screen pixels per pixel, pixelated."
    h, w = shape[:2]
    picture = widgets.Image(format="png", layout=widgets.Layout(width=f"{w * scale}px", max_width="100%", height="auto"))
    picture.add_class("diffedit-pixelated")
    return picture


def encode_png(bgr: np.ndarray) -> bytes:
    "(h, w, 3) BGR uint8 -> PNG bytes."
    ok, png = cv2.imencode(".png", bgr, _PNG_FLAGS)
    if not ok:
        raise RuntimeError("could not encode the picture as PNG")
    return png.tobytes()


def _canvas(image: np.ndarray):
    """The white (H, 3 W + 2 PAD, 3) BGR canvas with the input painted in the first panel, the
    input (H, W, 3) BGR and the input tinted with the mask colour (H, W, 3) BGR."""
    bgr = np.ascontiguousarray(image[..., ::-1])  # (H, W, 3) RGB -> BGR
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
    scale: screen pixels per image pixel (the browser zooms, pixelated); None makes a panel at
        least MIN_VIEW pixels wide.
    Returns a MaskExplorer (an ipywidgets VBox: display it). Raises ValueError naming a bad argument.
    """
    config = _mask_settings(threshold, blur, fill_holes)
    rgb = _check_image(image)  # (H, W, 3) uint8
    diff = _check_map(difference_map, rgb.shape[:2])  # (H, W) float32
    scale = _check_scale(scale, rgb.shape[:2])
    return MaskExplorer(rgb, diff, config.threshold, config.blur, config.fill_holes, scale)


def _mask_settings(threshold, blur, fill_holes, base: DiffEditConfig | None = None) -> DiffEditConfig:
    "`base` (default: DiffEditConfig()) with the given mask settings, validated (ValueError naming them)."
    base = base or DiffEditConfig()
    return base.replace(
        threshold=base.threshold if threshold is None else threshold,
        blur=base.blur if blur is None else blur,
        fill_holes=base.fill_holes if fill_holes is None else _as_bool(fill_holes),
    ).validate()


def _check_scale(scale, size: tuple[int, int]) -> int:
    if scale is None:
        return max(1, -(-MIN_VIEW // max(size)))
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 1 <= scale <= 64:
        raise ValueError(f"scale must be a whole number from 1 to 64 (screen pixels per image pixel), got {scale!r}")
    return int(scale)


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


# ----------------------------------------------------------------------------- the edit explorer
class EditExplorer(RestartSafe, widgets.VBox):
    """The mask explorer's controls over a difference map computed once, plus seed, guidance and
    edit start, and an Edit button that runs `diffedit` with the tuned mask.

    Attributes:
        masks: the MaskExplorer inside (threshold, blur, holes, its frames).
        seed, guidance, edit_start: BoundedIntText and FloatSliders for the edit.
        button: the Edit button; only it runs the model.
        progress: IntProgress over the denoising steps of the current edit.
        after: Image widget, PNG bytes of  before | mask over before | after, each (H, W).
        status: Label: what the button will do, how long the last edit took, or why it failed.
        mask: the tuned mask, (H, W) bool; result: the last edit's DiffEditResult (None before).
    Build it with `edit_explorer`, which checks its arguments and computes the map.
    """

    def __init__(self, model, image, source_prompt: str, target_prompt: str, config: DiffEditConfig,
                 diff_map: np.ndarray, seed: int, scale: int):
        self.model, self.image, self.config = model, image, config
        self.source_prompt, self.target_prompt = source_prompt, target_prompt
        self.result = None
        self.masks = MaskExplorer(np.asarray(image), diff_map, config.threshold, config.blur, config.fill_holes, scale,
                                  nested=True)
        self.seed, self.guidance, self.edit_start, self.button, self.progress = _edit_controls(config, seed)
        self.status = widgets.Label("Edit runs the model with this mask (the sliders above never do).")
        self._canvas = _canvas(np.asarray(image))[0]
        self.after = _picture(self._canvas.shape, scale)
        self.after.add_class("diffedit-after")
        super().__init__()
        style = self._restart_safe(self)
        live = widgets.VBox([widgets.HBox([self.seed, self.guidance, self.edit_start]),
                             widgets.HBox([self.button, self.progress, self.status]),
                             widgets.Label("before  |  mask over before  |  after"), self.after])
        live.add_class("diffedit-live")
        self.children = [style, self.masks, live]
        self.button.on_click(self._on_click)

    @property
    def mask(self) -> np.ndarray:
        "The tuned mask, (H, W) bool (a copy)."
        return self.masks.mask

    def edit_config(self) -> DiffEditConfig:
        "The config of the next edit: the given one with the mask and edit controls' values, validated."
        return self.config.replace(threshold=self.masks.threshold.value, blur=self.masks.blur.value,
                                   fill_holes=self.masks.holes.value, guidance=float(self.guidance.value),
                                   edit_start=float(self.edit_start.value)).validate()

    def run(self):
        """Run the edit with the current mask and controls (what the button does); returns the
        DiffEditResult, also kept as `result`, and shows  before | mask | after."""
        config, mask = self.edit_config(), self.mask
        total = config.steps - config.start_index
        self.progress.max, self.progress.value = total, 0
        generator = torch.Generator().manual_seed(int(self.seed.value))  # CPU noise: the same on any device

        def advance(step, timestep, latents):
            self.progress.value = step + 1

        t0 = time.perf_counter()
        self.result = diffedit(self.model, self.image, self.source_prompt, self.target_prompt, config, generator,
                               callback=advance, progress=False, mask=mask)
        self.progress.value = total  # an empty mask runs no step
        self.after.value = self._draw(self.result)
        self.status.value = f"edited in {time.perf_counter() - t0:.1f} s (seed {self.seed.value})"
        return self.result

    def _on_click(self, button) -> None:
        self.button.disabled = True
        self.status.value = "editing..."
        try:
            self.run()
        except Exception as err:  # shown, not lost in the browser's log
            self.status.value = f"the edit failed: {type(err).__name__}: {err}"
        finally:
            self.button.disabled = False

    def _draw(self, result) -> bytes:
        "before | mask over before | after, as PNG."
        w = self.image.width
        self._canvas[:, w + PAD : 2 * w + PAD] = np.where(result.mask[..., None], self.masks._tinted, self.masks._image)
        self._canvas[:, 2 * (w + PAD) :] = np.asarray(result.image)[..., ::-1]
        return encode_png(self._canvas)


def _edit_controls(config: DiffEditConfig, seed: int):
    "Seed, guidance and edit start, the Edit button and the progress bar."
    wide = {"description_width": "initial"}
    seed_box = widgets.BoundedIntText(value=seed, min=0, max=MAX_SEED, description="seed", style=wide,
                                      layout=widgets.Layout(width="170px"))
    guidance = widgets.FloatSlider(value=config.guidance, min=0.0, max=max(15.0, config.guidance), step=0.5,
                                   description="guidance", style=wide, readout_format=".1f")
    last = (config.steps - 1) / config.steps  # edit_start must leave at least one step
    start = widgets.FloatSlider(value=config.edit_start, min=0.0, max=round(last - 0.005, 2) if last < 0.95 else 0.95,
                                step=0.05 if config.steps >= 20 else 1 / config.steps, description="edit start",
                                style=wide, readout_format=".2f")
    button = widgets.Button(description="Edit", button_style="primary", icon="play", tooltip="run the edit with this mask")
    progress = widgets.IntProgress(value=0, min=0, max=config.steps - config.start_index, description="steps")
    return seed_box, guidance, start, button, progress


def edit_explorer(model, image, source_prompt: str, target_prompt: str, config: DiffEditConfig | None = None,
                  seed: int = 0, scale: int | None = None) -> EditExplorer:
    """Tune the mask with sliders, then press Edit to run `diffedit` with it.

    model: a DiffEditModel (`load_model`) or a loaded diffusers pipeline, as `diffedit` takes.
    image, source_prompt, target_prompt: as `diffedit` takes them (the image's sides must be
        multiples of the VAE scale factor).
    config: the starting settings (None: `DiffEditConfig.for_model(model)`); the mask controls
        start at its threshold, blur and fill_holes, the edit controls at guidance and edit_start.
    seed: the noise seed of the difference map (computed once, here) and the first edit's.
    scale: screen pixels per image pixel; None makes a panel at least MIN_VIEW pixels wide.
    Returns an EditExplorer (display it). Raises ValueError/TypeError naming a bad argument,
    before any model work.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    model = as_model(model)
    rgb, config = prepare_inputs(model, image, source_prompt, target_prompt, config)  # every check diffedit makes
    scale = _check_scale(scale, (rgb.height, rgb.width))
    diff_map = difference_map(model, rgb, source_prompt, target_prompt, config, torch.Generator().manual_seed(int(seed)))
    return EditExplorer(model, rgb, source_prompt, target_prompt, config, diff_map, int(seed), scale)


# ----------------------------------------------------------------------------- still pictures
def still_picture(explorer, scale: int = 3):
    """What an explorer shows now, as one PIL image (RGB): a line with its controls' values above its
    current picture(s), each pixel drawn `scale` x `scale`. For readers whose viewer cannot run
    widgets (GitHub renders a widget as a line of text): a notebook embeds it in a markdown cell."""
    from PIL import Image, ImageDraw

    if not isinstance(explorer, (MaskExplorer, EditExplorer)):
        raise TypeError(f"explorer must be a mask or edit explorer, got {type(explorer).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or not 1 <= scale <= 16:
        raise ValueError(f"scale must be an integer in [1, 16], got {scale!r}")
    masks = explorer.masks if isinstance(explorer, EditExplorer) else explorer
    rows = [(f"mask threshold {masks.threshold.value:.2f} | blur {masks.blur.value} px | fill holes "
             f"{'on' if masks.holes.value else 'off'}   (input | mask over input | mask)", masks.view.value)]
    if isinstance(explorer, EditExplorer):
        done = explorer.result is not None
        rows.append((f"seed {explorer.seed.value} | guidance {explorer.guidance.value:g} | edit start "
                     f"{explorer.edit_start.value:g}   " + ("(before | mask over before | after)" if done else "(not run)"),
                     explorer.after.value if done else None))
    pictures = []
    for text, png in rows:
        panel = Image.open(io.BytesIO(png)).convert("RGB") if png else None
        if panel is not None:
            panel = panel.resize((panel.width * scale, panel.height * scale), Image.NEAREST)
        width = max(panel.width if panel else 0, 8 * len(text))
        line = Image.new("RGB", (width, 16), "white")
        ImageDraw.Draw(line).text((2, 2), text, fill="black")
        pictures += [line] + ([panel] if panel else [])
    out = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    y = 0
    for p in pictures:
        out.paste(p, (0, y))
        y += p.height
    return out
