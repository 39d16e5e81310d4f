"""What notebook 09_successors reads and teaches besides the attention maps: diffusers' clamp rule
(`mask.ratio_mask`), the benchmark tables read back cell for cell (`world.results`), and the
notebook's stored table, which must be the benchmark's to the printed digit."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffedit_helpers import normalise_map
from diffedit_helpers.mask import ratio_mask
from diffedit_helpers.world.results import (
    format_table,
    leditspp_settings,
    markdown_tables,
    quality_summary,
    read_json,
    results_dir,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402
from peer import LeditsSettings  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "09_successors.ipynb"


# ----------------------------------------------------------------------------- the clamp rule
def test_ratio_mask_keeps_the_cells_above_half_the_ratio_times_the_mean():
    raw = torch.rand((16, 16), generator=torch.Generator().manual_seed(0))
    for ratio in (1.0, 3.0, 6.0):
        expected = (raw > ratio / 2 * raw.mean()).numpy()
        np.testing.assert_array_equal(ratio_mask(raw, ratio).astype(bool), expected)
        np.testing.assert_array_equal(ratio_mask(raw * 1000, ratio), ratio_mask(raw, ratio))  # no absolute scale


def test_one_extreme_cell_rescales_min_max_but_not_the_clamp():
    rng = np.random.default_rng(0)
    raw = 0.1 + 0.02 * rng.random((32, 32))  # a noise floor
    raw[8:20, 8:20] = 1.0  # the region the prompts disagree about (14% of the cells)
    obj = np.zeros_like(raw, bool)
    obj[8:20, 8:20] = True
    raw[30, 30] = 100.0  # one extreme cell, away from it
    min_max = (normalise_map(torch.from_numpy(raw)) > 0.25).numpy()
    assert min_max.sum() == 1  # the region fell below a quarter of the range: only the extreme cell is left
    clamp = ratio_mask(raw, 3.0).astype(bool)
    assert clamp[obj].all() and clamp.sum() == obj.sum() + 1  # the region kept, the floor dropped


def test_ratio_mask_of_identical_prompts_is_empty_and_bad_ratios_are_named():
    assert not ratio_mask(np.zeros((8, 8)), 3.0).any()
    for bad in (0, -1.0, float("inf"), "3", True):
        with pytest.raises(ValueError, match=r"^ratio must be a number > 0"):
            ratio_mask(np.ones((4, 4)), bad)


# ----------------------------------------------------------------------------- the tables, read back
def _rows():
    "Rows as benchmarks/quality.py makes them, for two methods."
    rows = []
    for i, method in enumerate(("ours (noise)", "LEDITS++")):
        for k in range(3):
            rows.append(dict(method=method, kind="colour", iou=float("nan") if method == "LEDITS++" else 0.8 + 0.01 * k,
                             iou_unrefined=0.6, changed_iou=0.5 - 0.1 * i, psnr=30.0 + k, psnr_raw=22.123, psnr_pasted=float("nan"),
                             success=bool(k), success_raw=float("nan"), success_pasted=float("nan"), seconds=0.5 + i))
    return rows


def test_the_summary_table_reads_back_as_the_benchmark_printed_it():
    rows = _rows()
    text = "# Quality\n\nintro\n\n" + quality.summary_table(rows, ["ours (noise)", "LEDITS++"]) + "\n\nafter\n"
    (table,) = markdown_tables(text)
    assert [r["method"] for r in table] == ["ours (noise)", "LEDITS++"]
    ours, ledits = table
    assert ours["mask IoU"] == quality.num(quality.mean(rows[:3], "iou")) == "0.810"
    assert ledits["mask IoU"] == "-"  # no explicit mask
    assert ours["success (95% CI)"] == quality.success_text(rows[:3])
    assert ledits["s / edit"] == "1.50" and ours["bg PSNR as returned (dB)"] == "31.00"


def test_malformed_tables_are_refused():
    with pytest.raises(ValueError, match="2 cells, its header 3"):
        markdown_tables("| a | b | c |\n|---|---|---|\n| 1 | 2 |\n")


def test_the_leditspp_settings_line_reads_back(tmp_path):
    settings = LeditsSettings(edit_guidance_scale=5.0, edit_threshold=0.9, skip=0.3)
    path = tmp_path / "quality.md"
    path.write_text(f"Seed 0. LEDITS++: `{settings.text()}`, 50 inversion steps, source guidance 7.5.")
    assert LeditsSettings(**leditspp_settings(path)) == settings
    path.write_text("LEDITS++ was left out of this run.")
    with pytest.raises(ValueError, match=r"names no LEDITS\+\+ settings"):
        leditspp_settings(path)


def test_the_committed_results_hold_every_method_and_the_tuned_settings():
    table = quality_summary()
    assert [r["method"] for r in table] == list(quality.METHODS)
    LeditsSettings(**leditspp_settings())  # the notebook builds its settings this way
    attention = read_json("attention.json")
    assert set(attention["iou"]["colour + shape + pattern"]) >= {"n", "DiffEdit", "attention", "attention, refined"}


# ----------------------------------------------------------------------------- the notebook's stored table
def _printed(cell_source_start: str) -> str:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "".join(cell["source"]).startswith(cell_source_start):
            return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
    raise AssertionError(f"no cell starting {cell_source_start!r} in {NOTEBOOK.name}")


def test_the_notebook_table_is_the_benchmarks_to_the_printed_digit():
    printed = _printed("table = quality_summary()").splitlines()
    header = re.split(r"\s{2,}", printed[0].strip())
    assert header[0] == "method" and "mask IoU" in header and "success (95% CI)" in header
    by_method = {r["method"]: r for r in quality_summary()}
    shown = [line for line in printed[1:] if re.split(r"\s{2,}", line.strip())[0] in by_method]
    assert len(shown) == len(by_method)  # every method of the results, once
    for line in shown:
        cells = re.split(r"\s{2,}", line.strip())
        row = by_method[cells[0]]
        assert cells == [row[c] for c in header], f"the notebook shows {cells}, {results_dir() / 'quality.md'} holds {row}"
    assert format_table(quality_summary(), header[1:]) in "\n".join(printed)
    whole = read_json("attention.json")["iou"]["colour + shape + pattern"]
    assert f"IoU {whole['attention']:.3f}, refined {whole['attention, refined']:.3f}" in "\n".join(printed)


def test_leditspp_on_shared_components_gives_the_unet_its_processors_back(tiny_model):
    from peer import leditspp_edit, leditspp_from_components, leditspp_invert, leditspp_masks

    from diffedit_helpers import DiffEditConfig
    from diffedit_helpers.world.shapes import horse_scene, render

    m = tiny_model
    before = dict(m.unet.attn_processors)
    pipe = leditspp_from_components(m.vae, m.text_encoder, m.tokenizer, m.unet, m.scheduler_config)
    assert pipe.unet is m.unet  # shared, not copied
    settings = LeditsSettings(edit_guidance_scale=5.0, edit_threshold=0.9, skip=0.3)
    image = render(horse_scene())[0]
    leditspp_invert(pipe, image, "a brown horse on grass", DiffEditConfig(steps=6), settings, torch.Generator().manual_seed(0))
    out = leditspp_edit(pipe, "a brown horse on grass", "a zebra on grass", settings, torch.Generator().manual_seed(0))
    assert out.size == image.size
    assert all(m.unet.attn_processors[n] is p for n, p in before.items())  # its attention-storing processors are gone
    masks = leditspp_masks(pipe)  # (2 editing prompts, h, w): the share of the steps each cell was edited
    assert masks.shape == (2, 16, 16) and masks.min() >= 0 and masks.max() <= 1 and masks.max() > 0
