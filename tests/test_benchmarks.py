"""The benchmarks' own machinery, on tiny random components: the UNet call counter, the peer
(diffusers' DiffEdit pipeline) run with our settings, the README section writer, the GPU script's
CPU smoke path. Nothing here is timed."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu  # noqa: E402
import quality  # noqa: E402
import update_readme  # noqa: E402
from peer import (  # noqa: E402
    PEER_RATIO,
    UNetRecorder,
    inpaint_strength,
    peer_edit,
    peer_from_components,
    peer_map_from_mask_call,
    peer_mask_at,
    pixel_mask,
)

from diffedit_helpers import DiffEditConfig, diffedit  # noqa: E402
from diffedit_helpers.edit import composite  # noqa: E402
from diffedit_helpers import edit as edit_module  # noqa: E402
from diffedit_helpers import mask as mask_module  # noqa: E402
from diffedit_helpers.world.shapes import horse_scene, render  # noqa: E402

CFG = DiffEditConfig(steps=8, n_noise=3, threshold=0.2, blur=0, edit_start=0.25)
SRC, TGT = "a brown horse on grass", "a zebra on grass"


@pytest.fixture(scope="module")
def image():
    return render(horse_scene())[0]


@pytest.fixture(scope="module")
def peer(tiny_model):
    m = tiny_model
    return peer_from_components(m.vae, m.text_encoder, m.tokenizer, m.unet, m.scheduler_config)


def test_recorder_counts_our_calls_by_stage_and_restores_everything(tiny_model, image):
    homes = {"noise_difference": mask_module, "masked_denoise": edit_module, "ddim_invert": edit_module}
    originals = {n: getattr(module, n) for n, module in homes.items()}
    for encoding in ("noise", "inversion"):
        with UNetRecorder(tiny_model.unet) as rec:  # the stages come from diffedit itself: nothing is patched
            r = diffedit(tiny_model, image, SRC, TGT, CFG.replace(encoding=encoding), torch.Generator().manual_seed(0),
                         progress=False, on_stage=rec.on_stage)
        assert r.mask.any()  # otherwise the edit returns early and there is no denoising to count
        steps = CFG.steps - CFG.start_index
        assert rec.calls["mask"] == 1 and rec.samples["mask"] == 2 * CFG.n_noise
        assert rec.calls["denoising"] == steps and rec.samples["denoising"] == 2 * steps  # guidance: 2 per call
        assert rec.calls.get("encoding", 0) == (steps if encoding == "inversion" else 0)
        assert set(rec.wall) >= {"mask", "denoising", "encode", "decode"}
    assert "forward" not in vars(tiny_model.unet)  # the wrapper is gone
    assert all(getattr(homes[n], n) is f for n, f in originals.items())


def test_peer_runs_our_steps_and_its_mask_is_rebuilt_exactly(tiny_model, peer, image):
    steps = CFG.steps - CFG.start_index
    assert int(CFG.steps * inpaint_strength(CFG)) == steps
    with UNetRecorder(peer.unet, keep="mask") as rec:
        p = peer_edit(peer, image, SRC, TGT, CFG, torch.Generator().manual_seed(0), recorder=rec)
    assert p.image.size == image.size
    f = tiny_model.vae_scale_factor
    assert p.latent_mask.shape == (image.height // f, image.width // f)
    assert p.mask.shape == (image.height, image.width) and p.mask.dtype == bool
    assert rec.calls == {"mask": 1, "encoding": steps, "denoising": steps}
    assert rec.samples["mask"] == 4 * CFG.n_noise  # guided source and target predictions
    rebuilt = peer_map_from_mask_call(rec.kept[0], CFG.n_noise, CFG.guidance)
    np.testing.assert_array_equal(peer_mask_at(rebuilt, PEER_RATIO), p.latent_mask)
    # its rule is "above ratio / 2 times the mean"
    np.testing.assert_array_equal(peer_mask_at(rebuilt, 2.0), (rebuilt > rebuilt.mean()).astype(np.float32))


def test_pixel_mask_covers_each_latent_cell():
    latent = np.zeros((4, 4), np.float32)
    latent[1, 2] = 1
    px = pixel_mask(latent, (16, 16))
    assert px.sum() == 16 and px[4:8, 8:12].all()


def test_replace_section_touches_only_the_results_markers():
    readme = "# T\n\n<!-- api:start -->\nkeep\n<!-- api:end -->\n<!-- results:start -->\nold\n<!-- results:end -->\nend\n"
    out = update_readme.replace_section(readme, "new table")
    assert out == readme.replace("old", "new table")
    with pytest.raises(ValueError, match="results:start"):
        update_readme.replace_section("no markers", "x")


def test_section_links_pictures_from_the_repository_root(tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "quality.md").write_text("# Quality\n\n![a](quality_iou.png)\n")
    (tmp_path / "res" / "speed.md").write_text("# Speed\n\n| x |\n")
    body = update_readme.results_section(tmp_path / "res", tmp_path)
    assert "### Quality" in body and "### Speed" in body and "](res/quality_iou.png)" in body


def test_gpu_script_smoke_on_cpu(capsys):
    assert gpu.main(["--device", "cpu", "--tiny", "--repeats", "1", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "diffusers" in out and "ours (noise)" in out and "warning" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path taken without CUDA")
def test_gpu_script_exits_cleanly_without_cuda(capsys):
    assert gpu.main([]) == 0
    assert capsys.readouterr().out.count("\n") == 1


# ----------------------------------------------------------------------------- the quality report's pieces
def test_changed_region_is_where_the_output_moved_past_the_threshold():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    out = image.astype(np.float32) + rng.uniform(-10, 10, image.shape)  # decoder noise everywhere: not a change
    out[4:8, 2:10] = 255 - image[4:8, 2:10]  # a real change, but where |255 - 2x| is small it stays below the threshold
    changed = quality.changed_region(out, image)
    expected = np.abs(out - image.astype(np.float32)).mean(-1) > quality.CHANGE_THRESHOLD
    np.testing.assert_array_equal(changed, expected)
    assert changed.dtype == bool and changed.shape == (16, 16)
    assert not changed[~np.pad(np.ones((4, 8), bool), ((4, 8), (2, 6)))].any()  # nothing outside the changed block
    assert changed[4:8, 2:10].mean() > 0.5
    truth = np.zeros((16, 16), bool)
    truth[4:8, 2:10] = True
    assert quality.mask_iou(changed, truth) == pytest.approx(changed.sum() / truth.sum())


def test_wilson_interval_matches_the_formula_and_its_limits():
    lo, hi = quality.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)  # the textbook values
    lo, hi = quality.wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # never a zero-width interval at 0%
    lo, hi = quality.wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9
    assert quality.wilson_interval(0, 0) == (0.0, 1.0)
    narrow, wide = quality.wilson_interval(60, 100), quality.wilson_interval(6, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more edits, a tighter interval


def test_the_peer_pasted_through_its_mask_keeps_the_input_outside_it(image):
    arr = np.asarray(image)
    peer_out = np.clip(arr.astype(np.int16) + 40, 0, 255).astype(np.uint8)  # a peer that changed everything
    mask = np.zeros(arr.shape[:2], bool)
    mask[20:40, 20:40] = True
    truth = mask.copy()
    paste = composite(image, peer_out, mask, 5)
    far = ~np.pad(np.ones((40, 40), bool), 12)  # 8 pixels or more from the mask: beyond the feather
    np.testing.assert_array_equal(np.asarray(paste)[far], arr[far])
    np.testing.assert_array_equal(np.asarray(paste)[mask], peer_out[mask])
    assert quality.background_psnr(paste, image, truth) > quality.background_psnr(peer_out, image, truth)


def test_latent_grid_ceiling_keeps_whole_cells_and_loses_partial_ones():
    truth = np.zeros((16, 16), bool)
    truth[0:4, 0:4] = True  # one whole cell
    truth[4:6, 4:8] = True  # half a cell: kept (at least half)
    truth[8:9, 8:12] = True  # a quarter of a cell: lost
    grid = quality.latent_grid_mask(truth, 4)
    assert grid[0:4, 0:4].all() and grid[4:8, 4:8].all() and not grid[8:12, 8:12].any()
    assert grid.sum() == 32


def test_the_knob_sweep_runs_each_setting_once_and_guidance_leaves_the_mask_alone(tiny_model):
    import knobs

    from diffedit_helpers.world.evaluate import held_out_edits

    edits = held_out_edits(2, cycle=True)
    lines = []
    out = knobs.sweep_knobs(tiny_model, edits, {"guidance": [1.0, 7.5], "seed": [0, 1]},
                            base=DiffEditConfig(steps=4, n_noise=2), log=lines.append)
    assert [r["value"] for r in out["guidance"]] == [1.0, 7.5] and [r["value"] for r in out["seed"]] == [0, 1]
    assert len(lines) == 3  # guidance 7.5 at seed 0 is the same setting as seed 0: run once
    assert out["guidance"][1] == {**out["seed"][0], "value": 7.5}
    assert out["guidance"][0]["iou"] == out["guidance"][1]["iou"]  # the mask is drawn before guidance acts
    for rows in out.values():
        for r in rows:
            assert 0 <= r["iou"] <= 1 and 0 <= r["success"] <= 1 and set(r["by_kind"]) == {"colour", "shape", "pattern"}


def test_probe_snapshots_skip_the_steps_the_curve_has_and_folders_that_are_gone(tmp_path):
    import json

    import probes

    for step in (100, 200, 300):
        (tmp_path / f"step-{step}").mkdir()
    listed = [dict(step=s, cpu_hours=s / 1000, loss=0.1, folder=str(tmp_path / f"step-{s}")) for s in (100, 200, 300, 400)]
    (tmp_path / "snapshots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in listed))
    rows = [dict(run="long", step=100), dict(run="other", step=200)]
    todo = probes.unprobed_snapshots(tmp_path, "long", rows)
    assert [s["step"] for s in todo] == [200, 300]  # 100 is probed for this run; 400's folder does not exist
    table = probes.format_curve([dict(run="long", step=s, cpu_hours=0.5, loss=0.2, null=1, zebras=0, colour=2, colour_iou=0.9)
                                 for s in (300, 100)])
    assert [line.split(" | ")[1] for line in table.splitlines()[2:]] == ["100", "300"]  # in step order


def test_vae_ceiling_passes_the_rendered_targets_and_never_more_through_the_vae():
    import probes

    from diffedit_helpers.models import BUNDLED_PATH

    result = probes.ceiling(BUNDLED_PATH, scenes=3)
    for kind in ("colour", "removal", "null"):  # the judges pass a true target as rendered (calibration)
        assert result[kind]["rendered"]["success"] == result[kind]["rendered"]["n"] == 3
    for cell in result.values():
        assert 0 <= cell["through_vae"]["success"] <= cell["through_vae"]["n"]
    assert result["whole_zebra"]["rendered"]["success"] == probes.ZEBRA_SEEDS
