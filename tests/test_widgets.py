"""The explorers: the mask controls drive `make_mask` on a cached map and the view shows its
result; the edit explorer's button runs `diffedit` with that mask, and nothing else runs the model."""

import asyncio
import io
import warnings

import numpy as np
import pytest
import torch
import traitlets
from PIL import Image

import diffedit_helpers.widgets as widgets_module
from diffedit_helpers import DiffEditConfig
from diffedit_helpers.mask import make_mask
from diffedit_helpers.plotting import overlay
from diffedit_helpers.widgets import NOTE, PAD, STALE, MaskExplorer, mask_explorer

H, W = 48, 64


@pytest.fixture
def image():
    "A (H, W) RGB gradient with some texture: every panel pixel is known."
    yy, xx = np.mgrid[:H, :W]
    rgb = np.stack([xx * 255 // (W - 1), yy * 255 // (H - 1), (xx * 7 + yy * 3) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture
def diff_map():
    "A smooth (H, W) map in [0, 1]: a bright blob, a dimmer one and seeded noise."
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    blob = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 60) + 0.6 * np.exp(-((yy - 30) ** 2 + (xx - 48) ** 2) / 30)
    noise = np.random.default_rng(0).random((H, W), dtype=np.float32) * 0.15
    m = blob + noise
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def ring_map(size=40, inner=8, outer=13):
    "(size, size) map: 1 on an annulus, 0 inside and outside it, so the mask is a ring with a hole."
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    return ((r >= inner) & (r <= outer)).astype(np.float32)


def decode(png: bytes) -> np.ndarray:
    "PNG bytes -> (h, w, 3) uint8 RGB."
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def cut(png: bytes, shape) -> list[np.ndarray]:
    "Cut a picture of three panels (at the image's own size, `shape` = (H, W)) into its panels."
    view = decode(png)
    h, w = shape
    assert view.shape == (h, 3 * w + 2 * PAD, 3)  # sent at the image's own size: the browser scales it
    return [view[:, i * (w + PAD) : i * (w + PAD) + w] for i in range(3)]


def panels(explorer: MaskExplorer) -> list[np.ndarray]:
    "The view's three (H, W, 3) panels: input, overlay, mask."
    return cut(explorer.view.value, explorer.difference_map.shape)


def test_defaults_come_from_the_config(image, diff_map):
    ex = mask_explorer(image, diff_map)
    cfg = DiffEditConfig()
    assert isinstance(ex, MaskExplorer)
    assert (ex.threshold.value, ex.blur.value, ex.holes.value) == (cfg.threshold, cfg.blur, cfg.fill_holes)
    assert ex.mask.shape == (H, W) and ex.mask.dtype == bool
    assert ex.scale == 4  # a 64 px image is shown zoomed to 256 px panels, by the browser
    assert ex.view.layout.width == f"{4 * (3 * W + 2 * PAD)}px" and "diffedit-pixelated" in ex.view._dom_classes


def test_mask_is_make_mask_of_the_current_values(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=0, fill_holes=False)
    for t, b, holes in [(0.3, 0, False), (0.5, 0, False), (0.5, 7, False), (0.2, 7, True), (0.2, 3, True), (0.65, 15, False)]:
        ex.threshold.value, ex.blur.value, ex.holes.value = t, b, holes
        np.testing.assert_array_equal(ex.mask, make_mask(diff_map, t, b, holes), err_msg=f"t={t} b={b} holes={holes}")
        shown = panels(ex)[2][..., 0] == 255  # the mask panel of the frame on screen
        np.testing.assert_array_equal(shown, make_mask(diff_map, t, b, holes), err_msg=f"t={t} b={b} holes={holes}")


def test_every_frame_shows_its_threshold_stop(image, diff_map):
    "The browser switches frames by itself: frame i must be the mask at stop i, for the current blur and holes."
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=5, fill_holes=True)
    assert ex.cached and len(ex.frames) == len(ex.threshold.options) == 101
    for blur, holes in [(5, True), (0, False)]:
        ex.blur.value, ex.holes.value = blur, holes
        for i in (0, 17, 30, 64, 100):
            t = ex.threshold.options[i][1]
            shown = cut(ex.frames[i].value, (H, W))[2][..., 0] == 255
            np.testing.assert_array_equal(shown, make_mask(diff_map, t, blur, holes), err_msg=f"stop {t}")


def test_an_off_grid_start_is_a_stop(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.333, blur=0, fill_holes=False)
    assert ex.threshold.value == 0.333 and ("0.333", 0.333) in ex.threshold.options
    np.testing.assert_array_equal(ex.mask, diff_map > 0.333)


def test_raising_the_threshold_never_grows_the_mask_and_redraws(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.0, blur=5, fill_holes=False)
    previous_mask, previous_png = ex.mask, ex.view.value
    changes = 0
    for t in np.round(np.linspace(0.05, 1.0, 20), 2):
        ex.threshold.value = float(t)
        mask, png = ex.mask, ex.view.value
        assert not (mask & ~previous_mask).any(), f"threshold {t:.2f} added pixels to the mask"
        if not np.array_equal(mask, previous_mask):
            changes += 1
            assert png != previous_png, f"threshold {t:.2f} changed the mask but not the view"
        previous_mask, previous_png = mask, png
    assert changes >= 10  # the sweep really moved the mask
    assert not ex.mask.any()  # nothing is strictly above 1


def test_view_shows_input_overlay_and_mask(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.4, blur=3, fill_holes=True, scale=3)
    ex.threshold.value = 0.55
    inp, over, shown = panels(ex)
    mask = make_mask(diff_map, 0.55, 3, True)
    np.testing.assert_array_equal(inp, np.asarray(image))
    np.testing.assert_array_equal(over, np.asarray(overlay(image, mask)))
    np.testing.assert_array_equal(shown, np.repeat(mask[..., None] * np.uint8(255), 3, axis=-1))
    assert ex.area.value == f"mask: {100 * mask.mean():.1f} % of the image"


def test_a_threshold_move_sends_no_picture_when_the_frames_are_cached(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=0, fill_holes=False)
    sent = []
    for frame in ex.frames:
        frame.observe(sent.append, names="value")
    ex.threshold.value = 0.6
    assert sent == []  # the browser shows frame 60 by itself (jslink); the kernel only re-masks
    assert ex.view is ex.frames[60] and ex.area.value == f"mask: {100 * (diff_map > 0.6).mean():.1f} % of the image"
    ex.blur.value = 9
    assert sent and sent[0].owner is ex.frames[60]  # the frame on screen is redrawn first
    assert len(sent) <= len(ex.frames)


def test_in_a_kernel_a_blur_change_draws_the_frame_on_screen_first(image, diff_map):
    "Inside a running event loop (a kernel), the other frames follow later; a newer change drops an older one's."
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=0, fill_holes=False)
    shown = lambda frame: cut(frame.value, (H, W))[2][..., 0] == 255  # noqa: E731

    async def change():
        ex.blur.value = 9
        first = shown(ex.view), shown(ex.frames[60])  # on screen: redrawn; stop 0.6, 30 stops away: not yet
        ex.blur.value = 5
        await asyncio.sleep(0.6)  # every deferred chunk has run
        return first

    on_screen, not_yet = asyncio.run(change())
    np.testing.assert_array_equal(on_screen, make_mask(diff_map, 0.3, 9, False))
    np.testing.assert_array_equal(not_yet, make_mask(diff_map, 0.6, 0, False))
    assert not np.array_equal(not_yet, make_mask(diff_map, 0.6, 9, False))  # the blur changes that frame
    for i in range(0, 101, 5):  # all redrawn for the newer blur
        np.testing.assert_array_equal(shown(ex.frames[i]), make_mask(diff_map, ex.threshold.options[i][1], 5, False))


def test_each_change_redraws_the_one_picture_once_when_not_cached(image, diff_map):
    ex = MaskExplorer(np.asarray(image), diff_map, 0.3, 0, False, scale=1, cached=False)
    assert len(ex.frames) == 1
    redraws = []
    ex.view.observe(redraws.append, names="value")
    ex.threshold.value = 0.6
    assert len(redraws) == 1
    ex.blur.value = 9
    assert len(redraws) == 2
    ex.holes.value = True
    assert len(redraws) <= 3  # filling may leave this mask unchanged, and then the PNG too
    np.testing.assert_array_equal(panels(ex)[2][..., 0] == 255, make_mask(diff_map, 0.6, 9, True))


def test_a_large_picture_is_redrawn_in_the_kernel():
    ex = mask_explorer(np.zeros((256, 256, 3), np.uint8), np.random.default_rng(0).random((256, 256), np.float32))
    assert not ex.cached and len(ex.frames) == 1 and ex.scale == 1


def test_display_adds_a_run_this_cell_line_the_live_widget_hides(image, diff_map):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    ex = mask_explorer(image, diff_map)
    with capture_output() as captured:
        display(ex)
    note, shown = (o.data for o in captured.outputs)
    assert NOTE.split(":")[0] in note["text/html"] and "application/vnd.jupyter.widget-view+json" in shown
    note_class = note["text/html"].split('class="')[1].split('"')[0]
    style = ex.children[0].value  # the live widget's style hides exactly this note ...
    assert f".{note_class} {{display: none;}}" in style
    # ... and shows the STALE line once ipywidgets marks the views disconnected (kernel gone)
    assert ".diffedit-explorer.jupyter-widgets-disconnected .diffedit-stale {display: block;" in style
    assert STALE in style.replace("&#x27;", "'") and "diffedit-explorer" in ex._dom_classes


def test_threshold_moves_reuse_the_blurred_map(image, diff_map, monkeypatch):
    calls = []
    real_blur = widgets_module.blur_mask

    def counting_blur(x, kernel):
        calls.append(kernel)
        return real_blur(x, kernel)

    monkeypatch.setattr(widgets_module, "blur_mask", counting_blur)
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=5)
    assert calls == [5]
    for t in (0.1, 0.4, 0.7):
        ex.threshold.value = t
    ex.holes.value = not ex.holes.value
    assert calls == [5]  # no re-blur for threshold or holes
    ex.blur.value = 11
    ex.threshold.value = 0.2
    ex.blur.value = 5
    assert calls == [5, 11]  # one blur per kernel size, then the cache


def test_blur_can_never_be_even(image, diff_map):
    ex = mask_explorer(image, diff_map)
    assert all(b == 0 or b % 2 == 1 for b in ex.blur.options)
    assert {0, 1, 3, 31} <= set(ex.blur.options)
    before = ex.blur.value
    for even in (2, 4, 30):
        with pytest.raises(traitlets.TraitError):
            ex.blur.value = even
    assert ex.blur.value == before
    with pytest.warns(UserWarning, match="even"):
        rounded = mask_explorer(image, diff_map, blur=4)
    assert rounded.blur.value == 5
    wide = mask_explorer(image, diff_map, blur=41)  # a larger kernel extends the slider, still odd
    assert wide.blur.value == 41 and all(b == 0 or b % 2 == 1 for b in wide.blur.options)


def test_filling_holes_closes_a_ring():
    ring = ring_map()
    image = np.zeros((*ring.shape, 3), np.uint8)
    ex = mask_explorer(image, ring, threshold=0.5, blur=0, fill_holes=False)
    centre = (ring.shape[0] // 2, ring.shape[1] // 2)
    np.testing.assert_array_equal(ex.mask, ring > 0.5)
    assert not ex.mask[centre]
    png_ring = ex.view.value
    ex.holes.value = True
    filled = ex.mask
    assert filled[centre] and (filled >= (ring > 0.5)).all()
    yy, xx = np.mgrid[: ring.shape[0], : ring.shape[1]]
    disc = np.hypot(yy - ring.shape[0] / 2 + 0.5, xx - ring.shape[1] / 2 + 0.5) <= 13
    np.testing.assert_array_equal(filled, disc)
    assert ex.view.value != png_ring
    ex.holes.value = False
    assert not ex.mask[centre] and ex.view.value == png_ring


def test_accepts_a_tensor_map(image, diff_map):
    ex = mask_explorer(image, torch.from_numpy(diff_map), threshold=0.5, blur=0, fill_holes=False)
    np.testing.assert_array_equal(ex.mask, diff_map > 0.5)


def test_the_map_is_copied(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.5, blur=0, fill_holes=False)
    expected = ex.mask
    diff_map[:] = 1.0  # the caller's array changes; the explorer keeps its own
    ex.threshold.value = 0.51
    ex.threshold.value = 0.5
    np.testing.assert_array_equal(ex.mask, expected)


def _with(diff_map, **changes):
    out = diff_map.copy()
    for (i, j), v in changes.get("set", {}).items():
        out[i, j] = v
    return out


@pytest.mark.parametrize(
    "make_map, message",
    [
        (lambda m: m[:-1], r"difference_map has shape \(47, 64\) but the image is \(H, W\) = \(48, 64\)"),
        (lambda m: m.T, r"difference_map has shape \(64, 48\)"),
        (lambda m: m[None], r"difference_map must be 2-D"),
        (lambda m: _with(m, set={(3, 4): np.nan}), r"difference_map contains 1 NaN"),
        (lambda m: _with(m, set={(0, 0): np.inf}), r"difference_map contains 1 NaN or infinite"),
        (lambda m: m * 255, r"difference_map values must be in \[0, 1\], got min 0 and max 255"),
        (lambda m: m - 0.5, r"difference_map values must be in \[0, 1\]"),
        (lambda m: m.astype(str), r"difference_map must hold real numbers"),
    ],
)
def test_bad_difference_map_is_named(image, diff_map, make_map, message):
    with pytest.raises(ValueError, match=message):
        mask_explorer(image, make_map(diff_map))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=1.5), r"threshold must be in \[0, 1\]"),
        (dict(threshold=float("nan")), r"threshold must be a finite number"),
        (dict(blur=-3), r"blur must be 0 \(off\) or an odd"),
        (dict(fill_holes="yes"), r"fill_holes"),
        (dict(scale=0), r"scale must be a whole number from 1 to 64"),
        (dict(scale=2.5), r"scale must be a whole number"),
    ],
)
def test_bad_settings_are_named(image, diff_map, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mask_explorer(image, diff_map, **kwargs)


def test_bad_image_is_named(diff_map):
    with pytest.raises(ValueError, match=r"image must be"):
        mask_explorer(np.zeros((H, W, 4), np.uint8), diff_map)
    with pytest.raises(ValueError, match=r"image must be"):
        mask_explorer("not an image", diff_map)


def test_valid_input_raises_no_warning(image, diff_map):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # ipywidgets 7 itself uses a Comm class newer ipykernels deprecate: not a warning of ours
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ipywidgets")
        mask_explorer(image, diff_map, threshold=0.2, blur=7, fill_holes=True, scale=1)


# ----------------------------------------------------------------------------- the edit explorer
@pytest.fixture(scope="module")
def horse(bundled):
    "The bundled model's example edit: (image, source, target)."
    from diffedit_helpers.images import to_rgb
    from diffedit_helpers.paths import example_edit

    image, source, target = example_edit(bundled)
    return to_rgb(image), source, target


@pytest.fixture
def unet_calls(bundled, monkeypatch):
    "Counts the bundled UNet's forward calls while the test runs."
    calls = []
    forward = bundled.unet.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(bundled.unet, "forward", counted)
    return calls


def test_edit_explorer_masks_like_diffedit_and_edits_only_inside(bundled, horse, unet_calls):
    from diffedit_helpers import difference_map
    from diffedit_helpers.widgets import EditExplorer, edit_explorer

    image, source, target = horse
    ex = edit_explorer(bundled, image, source, target, seed=3)
    assert isinstance(ex, EditExplorer) and ex.result is None
    construction = len(unet_calls)
    assert construction > 0  # the map, once
    expected_map = difference_map(bundled, image, source, target, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(ex.masks.difference_map, expected_map)
    ex.masks.threshold.value, ex.masks.blur.value, ex.masks.holes.value = 0.3, 3, False
    np.testing.assert_array_equal(ex.mask, make_mask(expected_map, 0.3, 3, False))
    ex.guidance.value, ex.edit_start.value = 5.0, 0.5
    assert len(unet_calls) == 2 * construction  # the reference map above; no control ran the model
    ex.button.click()
    assert len(unet_calls) > 2 * construction and ex.result is not None, ex.status.value
    r = ex.result
    np.testing.assert_array_equal(r.mask, ex.mask)
    assert (r.config.guidance, r.config.edit_start, r.config.threshold) == (5.0, 0.5, 0.3)
    changed = (np.asarray(r.image) != np.asarray(image)).any(-1)
    assert not (changed & ~r.mask).any()  # a given mask: every pixel outside it is the input's
    assert changed.any()
    assert ex.progress.value == ex.progress.max == r.config.steps - r.config.start_index
    before, over, after = cut(ex.after.value, r.mask.shape)
    np.testing.assert_array_equal(before, np.asarray(image))
    np.testing.assert_array_equal(over, np.asarray(overlay(image, r.mask)))
    np.testing.assert_array_equal(after, np.asarray(r.image))
    assert not ex.button.disabled and ex.status.value.startswith("edited in")
    # one "run this cell" state for the whole explorer: the mask explorer inside carries none of its own
    assert "diffedit-explorer" in ex._dom_classes and "diffedit-explorer" not in ex.masks._dom_classes
    assert STALE in ex.children[0].value.replace("&#x27;", "'") and not isinstance(ex.masks.children[0], type(ex.children[0]))


def test_edit_explorer_seed_reproduces(bundled, horse):
    from diffedit_helpers.widgets import edit_explorer

    ex = edit_explorer(bundled, *horse, seed=0)
    first = np.asarray(ex.run().image)
    np.testing.assert_array_equal(np.asarray(ex.run().image), first)
    ex.seed.value = 1
    assert not np.array_equal(np.asarray(ex.run().image), first)


def test_edit_explorer_shows_a_failure(bundled, horse):
    from diffedit_helpers.widgets import edit_explorer

    ex = edit_explorer(bundled, *horse)
    ex.image = None  # what diffedit would refuse
    ex.button.click()
    assert ex.status.value.startswith("the edit failed") and ex.result is None and not ex.button.disabled


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(seed=-1), ValueError, r"seed must be a whole number from 0"),
        (dict(seed=1.5), ValueError, r"seed must be a whole number"),
        (dict(config=DiffEditConfig(threshold=2.0)), ValueError, r"threshold must be in \[0, 1\]"),
        (dict(config=DiffEditConfig(edit_start=1.0)), ValueError, r"edit_start must be in \[0, 1\)"),
        (dict(scale=0), ValueError, r"scale must be a whole number from 1 to 64"),
        (dict(target_prompt=""), ValueError, r"target_prompt"),
        (dict(image=np.zeros((30, 64, 3), np.uint8)), ValueError, r"image"),
    ],
)
def test_edit_explorer_bad_input_is_named_before_model_work(bundled, horse, unet_calls, kwargs, error, message):
    from diffedit_helpers.widgets import edit_explorer

    image, source, target = horse
    args = dict(image=image, source_prompt=source, target_prompt=target) | kwargs
    with pytest.raises(error, match=message):
        edit_explorer(bundled, args.pop("image"), args.pop("source_prompt"), args.pop("target_prompt"), **args)
    assert unet_calls == []


def test_edit_explorer_on_a_stable_diffusion_shaped_model(tmp_path):
    from diffedit_helpers import load_model
    from diffedit_helpers.widgets import edit_explorer
    from diffedit_helpers.world.sd_shaped import save_sd_folder

    model = load_model(save_sd_folder(tmp_path / "sd15"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model: "outside its training", as it should say
        ex = edit_explorer(model, image, "a cup of coffee", "a cup of tea", DiffEditConfig(steps=4, n_noise=2, threshold=0.3))
        ex.masks.threshold.value = 0.4
        r = ex.run()
    assert ex.masks.difference_map.shape == (128, 128) and r.mask.any()
    np.testing.assert_array_equal(r.mask, ex.mask)
    changed = (np.asarray(r.image) != np.asarray(image)).any(-1)
    assert not (changed & ~r.mask).any()
    assert ex.progress.value == ex.progress.max == 4 - int(0.25 * 4)


def test_a_still_picture_shows_the_current_mask_and_the_controls_values(image, diff_map):
    from diffedit_helpers.widgets import still_picture

    ex = mask_explorer(image, diff_map, threshold=0.5, blur=0)
    h, w = np.asarray(image).shape[:2]
    still = np.asarray(still_picture(ex, scale=2))
    assert still.shape[0] == 16 + 2 * h and still.shape[1] >= 2 * (3 * w + 2 * PAD)
    mask_panel = still[16:, 2 * 2 * (w + PAD):2 * (3 * w + 2 * PAD)][::2, ::2, 0]  # the mask, white on black
    np.testing.assert_array_equal(mask_panel > 127, ex.mask)
    ex.threshold.value = min(v for _, v in ex.threshold.options if v > 0.5)  # the still follows the controls
    moved = np.asarray(still_picture(ex, scale=2))[16:, 2 * 2 * (w + PAD):2 * (3 * w + 2 * PAD)][::2, ::2, 0]
    np.testing.assert_array_equal(moved > 127, ex.mask)
    with pytest.raises(ValueError, match=r"scale must be an integer in \[1, 16\]"):
        still_picture(ex, scale=0)
    with pytest.raises(TypeError, match="explorer must be"):
        still_picture(image)
