"""The mask explorer: the controls drive `make_mask` on a cached map and the view shows its result."""

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
from diffedit_helpers.widgets import PAD, MaskExplorer, mask_explorer

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


def panels(explorer: MaskExplorer) -> list[np.ndarray]:
    "Cut the view into its three (H * scale, W * scale, 3) panels: input, overlay, mask."
    view = decode(explorer.view.value)
    h, w = (s * explorer.scale for s in explorer.difference_map.shape)
    assert view.shape == (h, 3 * w + 2 * PAD, 3)
    return [view[:, i * (w + PAD) : i * (w + PAD) + w] for i in range(3)]


def zoom(a: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def test_defaults_come_from_the_config(image, diff_map):
    ex = mask_explorer(image, diff_map)
    cfg = DiffEditConfig()
    assert isinstance(ex, MaskExplorer)
    assert (ex.threshold.value, ex.blur.value, ex.holes.value) == (cfg.threshold, cfg.blur, cfg.fill_holes)
    assert ex.mask.shape == (H, W) and ex.mask.dtype == bool
    assert ex.scale == 4  # a 64 px image is zoomed to 256 px panels


def test_mask_is_make_mask_of_the_current_values(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=0, fill_holes=False)
    for t, b, holes in [(0.3, 0, False), (0.5, 0, False), (0.5, 7, False), (0.2, 7, True), (0.2, 3, True), (0.65, 15, False)]:
        ex.threshold.value, ex.blur.value, ex.holes.value = t, b, holes
        np.testing.assert_array_equal(ex.mask, make_mask(diff_map, t, b, holes), err_msg=f"t={t} b={b} holes={holes}")


def test_raising_the_threshold_never_grows_the_mask_and_redraws(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.0, blur=5, fill_holes=False)
    previous_mask, previous_png = ex.mask, ex.view.value
    changes = 0
    for t in np.linspace(0.05, 1.0, 20):
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
    np.testing.assert_array_equal(inp, zoom(np.asarray(image), 3))
    np.testing.assert_array_equal(over, zoom(np.asarray(overlay(image, mask)), 3))
    np.testing.assert_array_equal(shown, zoom(np.repeat(mask[..., None] * np.uint8(255), 3, axis=-1), 3))
    assert ex.area.value == f"mask: {100 * mask.mean():.1f} % of the image"


def test_each_change_redraws_the_view_once(image, diff_map):
    ex = mask_explorer(image, diff_map, threshold=0.3, blur=0, fill_holes=False)
    redraws = []
    ex.view.observe(redraws.append, names="value")
    ex.threshold.value = 0.6
    assert len(redraws) == 1
    ex.blur.value = 9
    assert len(redraws) == 2
    ex.holes.value = True
    assert len(redraws) <= 3  # filling may leave this mask unchanged, and then the PNG too


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
