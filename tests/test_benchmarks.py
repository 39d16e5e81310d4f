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
