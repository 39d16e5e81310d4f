"""Properties of the mask post-processing, for any difference map and any valid threshold and blur:
the mask is boolean and the map's shape, a higher threshold never grows it, nothing is NaN."""

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffedit_helpers import blur_mask, make_mask, normalise_map, upsample_map

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)  # the same examples on every run: CI never flickers

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
unit = st.floats(0.0, 1.0, allow_nan=False, width=32)
maps = shapes.flatmap(lambda s: arrays(np.float32, s, elements=unit))  # (H, W) in [0, 1]
thresholds = st.floats(0.0, 1.0, allow_nan=False)
kernels = st.sampled_from([0, 1, 3, 5, 7, 9, 15])  # valid blurs: off or odd


@SETTINGS
@given(maps, thresholds, kernels, st.booleans())
def test_the_mask_is_boolean_at_the_maps_shape(diff_map, threshold, blur, holes):
    mask = make_mask(diff_map, threshold, blur, holes)
    assert mask.dtype == bool and mask.shape == diff_map.shape


@SETTINGS
@given(maps, thresholds, thresholds, kernels, st.booleans())
def test_a_higher_threshold_never_grows_the_mask(diff_map, t1, t2, blur, holes):
    low, high = sorted((t1, t2))
    loose, tight = make_mask(diff_map, low, blur, holes), make_mask(diff_map, high, blur, holes)
    assert not (tight & ~loose).any()  # tight is a subset of loose


@SETTINGS
@given(maps, kernels)
def test_the_blurred_map_stays_finite_and_in_range(diff_map, blur):
    blurred = blur_mask(diff_map, blur)
    assert blurred.shape == diff_map.shape and blurred.dtype == np.float32
    assert np.isfinite(blurred).all()
    assert blurred.min() >= diff_map.min() - 1e-6 and blurred.max() <= diff_map.max() + 1e-6


@SETTINGS
@given(maps, kernels)
def test_the_extreme_thresholds(diff_map, blur):
    assert not make_mask(diff_map, 1.0, blur).any()  # nothing is strictly above 1
    blurred = blur_mask(diff_map, blur)
    assert np.array_equal(make_mask(diff_map, 0.0, blur), blurred > 0)


raw_values = st.floats(allow_nan=True, allow_infinity=True, width=32)
raw_maps = shapes.flatmap(lambda s: arrays(np.float32, s, elements=raw_values))


@SETTINGS
@given(raw_maps, st.tuples(st.integers(1, 48), st.integers(1, 48)), thresholds, kernels)
@example(np.array([[3.4028235e38, -1.0141205e31]], np.float32), (1, 1), 0.0, 0)  # max - min overflows float32
def test_any_raw_map_gives_a_finite_unit_map_and_a_boolean_mask(raw, size, threshold, blur):
    unit_map = normalise_map(torch.from_numpy(raw))
    assert torch.isfinite(unit_map).all() and unit_map.min() >= 0 and unit_map.max() <= 1
    up = upsample_map(unit_map, size)  # (H, W) at image resolution
    assert up.shape == size and np.isfinite(up).all() and up.min() >= 0 and up.max() <= 1
    mask = make_mask(up, threshold, blur, holes=True)
    assert mask.dtype == bool and mask.shape == size
