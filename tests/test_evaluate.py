"""The held-out quality script: its edits, metrics and success checks (on rendered ground truth)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from diffedit_helpers import DiffEditConfig, diffedit, difference_map
from diffedit_helpers.mask import make_mask
from diffedit_helpers.world.evaluate import EVAL_KINDS, evaluate, held_out_edits, main, summarise, sweep
from diffedit_helpers.world.metrics import PSNR_CAP, background_psnr, colour_labels, edit_success, mask_iou
from diffedit_helpers.world.shapes import COLOURS, EDIT_KINDS, HELD_OUT_SEED, random_scene, render

FAST = DiffEditConfig(steps=6, n_noise=3, threshold=0.3, blur=3)


# ----------------------------------------------------------------------------- edits
def test_held_out_edits_are_deterministic_held_out_and_complete():
    edits = held_out_edits(6, EDIT_KINDS)
    again = held_out_edits(6, EDIT_KINDS)
    assert len(edits) == 6 * len(EDIT_KINDS)
    assert [(e.kind, e.source, e.target) for e in edits] == [(e.kind, e.source, e.target) for e in again]
    # the scenes are the first scenes with an object from HELD_OUT_SEED on, each edited in every kind
    seeds = [s for s in range(HELD_OUT_SEED, HELD_OUT_SEED + 100) if random_scene(s).things][:6]
    assert [e.source for e in edits[:: len(EDIT_KINDS)]] == [random_scene(s) for s in seeds]
    assert [e.kind for e in edits[: len(EDIT_KINDS)]] == list(EDIT_KINDS)
    assert all(e.index == 0 and e.source.things for e in edits)
    assert all(e.source_prompt != e.target_prompt for e in edits)


def test_held_out_edits_skip_empty_scenes_and_cycle():
    start = next(s for s in range(HELD_OUT_SEED, HELD_OUT_SEED + 1000) if not random_scene(s).things)
    edits = held_out_edits(3, ("colour",), first_seed=start)
    assert len(edits) == 3 and all(e.source.things for e in edits)
    cycled = held_out_edits(8, EDIT_KINDS, cycle=True)
    assert [e.kind for e in cycled] == list(EDIT_KINDS) * 2
    assert len({e.source for e in cycled}) == 8


@pytest.mark.parametrize("bad", [dict(n_scenes=0), dict(n_scenes=2.5), dict(kinds=("colour", "size")), dict(kinds=())])
def test_held_out_edits_reject_bad_arguments(bad):
    with pytest.raises(ValueError, match="n_scenes|kinds"):
        held_out_edits(**bad)


# ----------------------------------------------------------------------------- metrics
def test_mask_iou_values():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    assert mask_iou(a, b) == 1.0  # nothing to find, nothing found
    a[:4] = True  # 32 pixels
    assert mask_iou(a, b) == 0.0
    b[2:6] = True  # 32 pixels, 16 shared
    assert mask_iou(a, b) == pytest.approx(16 / 48)
    assert mask_iou(b, a) == mask_iou(a, b)
    assert mask_iou(a, a) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(a, np.zeros((4, 4), bool))


def test_background_psnr_ignores_the_true_region():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    region = np.zeros((16, 16), bool)
    region[4:8, 4:8] = True
    edited = src.copy()
    edited[region] = 255 - edited[region]  # any change inside the region
    assert background_psnr(edited, src, region) == PSNR_CAP
    edited = edited.astype(np.float64)
    edited[~region] += 5.0  # MSE 25 outside
    assert background_psnr(edited, src, region) == pytest.approx(10 * np.log10(255**2 / 25))
    with pytest.raises(ValueError, match="whole image"):
        background_psnr(src, src, np.ones((16, 16), bool))


def test_colour_labels_name_palette_colours_and_background():
    img = np.array([[COLOURS["red"], COLOURS["white"], (70, 150, 55)]], np.uint8)  # (1, 3, 3)
    assert colour_labels(img, "grass").tolist() == [["red", "white", "background"]]
    # a red-white mix (blurred stripes) is still red, not pink
    mix = (np.array(COLOURS["red"]) * 0.6 + np.array(COLOURS["white"]) * 0.4)[None, None]
    assert colour_labels(mix, "grass")[0, 0] == "red"


# ----------------------------------------------------------------------------- success checks on ground truth
@pytest.fixture(scope="module")
def ground_truth_edits():
    return held_out_edits(40, EDIT_KINDS)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_success_accepts_the_target_render_and_rejects_the_source(ground_truth_edits, kind):
    edits = [e for e in ground_truth_edits if e.kind == kind]
    assert len(edits) == 40
    for e in edits:
        target, source = render(e.target)[0], render(e.source)[0]
        assert edit_success(target, e), f"{e.target_prompt!r} render fails its own {kind} check"
        assert not edit_success(source, e), f"unedited {e.source_prompt!r} passes the {kind} check"


def test_edit_success_rejects_an_object_erased_into_background():
    for e in held_out_edits(10, ("colour", "pattern")):
        erased = render(replace(e.source, things=()))[0]  # the same background, no objects
        assert not edit_success(erased, e)


def test_edit_success_rejects_a_wrong_size_image():
    e = held_out_edits(1, ("colour",))[0]
    with pytest.raises(ValueError, match="64x64"):
        edit_success(np.zeros((32, 32, 3), np.uint8), e)


# ----------------------------------------------------------------------------- running DiffEdit
def test_difference_map_is_the_map_diffedit_uses(tiny_model):
    e = held_out_edits(1, ("colour",))[0]
    image = render(e.source)[0]
    m = difference_map(tiny_model, image, e.source_prompt, e.target_prompt, FAST, torch.Generator().manual_seed(3))
    r = diffedit(tiny_model, image, e.source_prompt, e.target_prompt, FAST, torch.Generator().manual_seed(3), progress=False)
    assert m.shape == (64, 64) and m.dtype == np.float32
    np.testing.assert_allclose(m, r.difference_map, atol=1e-6)
    np.testing.assert_array_equal(make_mask(m, FAST.threshold, FAST.blur, FAST.fill_holes), r.mask)


def test_evaluate_rows(tiny_model):
    edits = held_out_edits(2, ("colour", "removal"))
    rows = evaluate(tiny_model, edits, FAST, seed=0)
    assert [r["kind"] for r in rows] == ["colour", "removal"] * 2
    for r, e in zip(rows, edits):
        assert 0.0 <= r["iou"] <= 1.0 and r["psnr"] <= PSNR_CAP and r["seconds"] > 0
        assert isinstance(r["success"], bool) and r["source_prompt"] == e.source_prompt
    again = evaluate(tiny_model, edits[:1], FAST, seed=0)
    assert again[0]["iou"] == rows[0]["iou"] and again[0]["psnr"] == rows[0]["psnr"]  # deterministic
    table = summarise(rows)
    assert table["colour"]["n"] == 2 and table["overall"]["n"] == 2 and table["all"]["n"] == 4
    assert table["overall"]["iou"] == pytest.approx(np.mean([r["iou"] for r in rows if r["kind"] in EVAL_KINDS]))


def test_sweep_remasks_cached_maps():
    rng = np.random.default_rng(0)
    maps = [rng.random((16, 16)).astype(np.float32) for _ in range(3)]
    truths = [m > 0.5 for m in maps]
    grid = sweep(maps, truths, [0.0, 0.5, 1.0], [0, 3], fill_holes=False)
    assert grid.shape == (3, 2)
    assert grid[1, 0] == 1.0  # threshold 0.5 without blur reproduces the truths exactly
    assert grid[2, 0] == pytest.approx(0.0)  # nothing is above 1
    expected = np.mean([mask_iou(make_mask(m, 0.5, 3, False), t) for m, t in zip(maps, truths)])
    assert grid[1, 1] == pytest.approx(expected) and expected < 1.0  # blurring changes the masks
    filled = sweep(maps, truths, [0.5], [3], fill_holes=True)[0, 0]
    assert filled == pytest.approx(np.mean([mask_iou(make_mask(m, 0.5, 3, True), t) for m, t in zip(maps, truths)]))


@pytest.mark.parametrize("argv", [["--scenes", "0"], ["--kinds", "size"], ["--threshold", "2"], ["--sweep", "--thresholds", "0.2,1.5"]])
def test_cli_rejects_bad_arguments_before_loading_a_model(argv, capsys):
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
