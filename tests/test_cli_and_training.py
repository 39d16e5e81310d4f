"""The CLI end to end in a temporary folder, the training command, and the bundled model's folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffedit_helpers import DiffEditConfig, diffedit, load_model
from diffedit_helpers.cli import DEMO_GUIDANCE, DEMO_SEED, main
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.world.metrics import edit_success
from diffedit_helpers.world.shapes import horse_scene, make_edit, random_scene, render
from diffedit_helpers.world.train import ParamEMA, caption_variant, learning_rate, min_snr_weights, pyramid_noise, training_record
from diffedit_helpers.world.train import main as train_main


@pytest.fixture
def horse_png(tmp_path):
    path = tmp_path / "horse.png"
    render(horse_scene())[0].save(path)
    return path


def test_cli_edit_writes_three_pictures_and_refuses_to_overwrite(tmp_path, horse_png, capsys):
    out = tmp_path / "out"
    before = horse_png.read_bytes()
    args = ["edit", str(horse_png), "--source", "a brown horse on grass", "--target", "a zebra on grass",
            "--out", str(out), "--steps", "6", "--n-noise", "3", "--quiet"]
    assert main(args) == 0
    for name in ("mask.png", "edited.png", "overview.png"):
        assert (out / name).exists()
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / "edited.png").size == (64, 64)
    assert horse_png.read_bytes() == before  # the input is never touched
    stamp = (out / "edited.png").stat().st_mtime_ns
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "edited.png").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0


def test_cli_errors_are_one_line_without_traceback(tmp_path, horse_png):
    cmd = [sys.executable, "-m", "diffedit_helpers", "edit", str(horse_png), "--source", "a", "--target", "b",
           "--out", str(tmp_path / "o"), "--threshold", "1.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "threshold" in proc.stderr and "[0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_demo_never_reuses_a_folder(tmp_path, capsys):
    base = tmp_path / "demo"
    assert main(["demo", "--out", str(base), "--steps", "5", "--n-noise", "2", "--quiet"]) == 0
    assert main(["demo", "--out", str(base), "--steps", "5", "--n-noise", "2", "--quiet"]) == 0
    assert (base / "overview.png").exists() and (tmp_path / "demo-2" / "overview.png").exists()
    assert "demo-2" in capsys.readouterr().out


@pytest.mark.slow
def test_training_command_runs_a_few_steps_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "model"
    train_main(["--out", str(out), "--scenes", "48", "--vae-steps", "2", "--vae-batch", "4",
                "--unet-steps", "2", "--unet-batch", "4"])
    model = load_model(out)
    assert model.vae_scale_factor == load_model("bundled").vae_scale_factor
    assert model.vae.config.scaling_factor > 0
    assert (out / "model_index.json").exists() and list((out / "unet").glob("*.safetensors"))
    with pytest.raises(SystemExit):  # refuses to write into a non-empty folder
        train_main(["--out", str(out), "--scenes", "8"])


def test_training_continues_a_saved_model_keeping_its_vae_and_scaling(tmp_path):
    tiny = ["--scenes", "48", "--vae-steps", "2", "--vae-batch", "4", "--unet-steps", "2", "--unet-batch", "4"]
    first, second = tmp_path / "first", tmp_path / "second"
    train_main(["--out", str(first), *tiny])
    train_main(["--out", str(second), "--init-from", str(first), *tiny, "--warmup", "1"])
    a, b = load_model(first), load_model(second)
    assert b.vae.config.scaling_factor == a.vae.config.scaling_factor
    for (name, p), q in zip(a.vae.state_dict().items(), b.vae.state_dict().values()):
        assert torch.equal(p, q), f"the VAE changed: {name}"
    changed = [n for (n, p), q in zip(a.unet.state_dict().items(), b.unet.state_dict().values()) if not torch.equal(p, q)]
    assert changed, "the UNet was not trained further"
    with pytest.raises(SystemExit):  # one starting point at a time
        train_main(["--out", str(tmp_path / "third"), "--init-from", str(first), "--vae-from", str(first)])


def test_demo_settings_turn_the_horse_into_a_zebra_that_passes_the_check(bundled):
    # the README picture and `make demo` use these settings; after a retrain they must be chosen again
    edit = make_edit(horse_scene(), "pattern")
    image = render(edit.source)[0]
    result = diffedit(bundled, image, edit.source_prompt, edit.target_prompt, DiffEditConfig(guidance=DEMO_GUIDANCE),
                      generator=torch.Generator().manual_seed(DEMO_SEED), progress=False)
    assert edit.target_prompt == "a zebra on grass"
    assert edit_success(result.image, edit)


def test_min_snr_weights_cap_only_the_nearly_clean_levels():
    abar = torch.linspace(0.01, 0.99, 99)
    snr = abar / (1 - abar)
    w = min_snr_weights(abar, gamma=5.0)
    noisy = snr <= 5.0
    assert torch.equal(w[noisy], torch.ones(int(noisy.sum())))  # untouched where SNR <= gamma
    assert torch.allclose(w[~noisy], 5.0 / snr[~noisy])  # gamma / SNR above it
    assert (w[1:] <= w[:-1]).all() and (w > 0).all()  # cleaner samples never weigh more
    v = min_snr_weights(abar, gamma=5.0, prediction_type="v_prediction")
    assert torch.allclose(v, snr.clamp(max=5.0) / (snr + 1)) and (v < 1).all()


def test_param_ema_follows_the_weights_with_its_decay():
    net = torch.nn.Linear(3, 2)
    ema = ParamEMA([net], decay=0.9)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update()  # first update: decay warms up to min(0.9, 2 / 11)
    d = 2 / 11
    for s, p0 in zip(ema.shadow, start):
        assert torch.allclose(s, p0 + (1 - d))
    for _ in range(200):
        ema.update()
    ema.copy_to_params()  # after many updates the average reaches the constant weights
    for p, p0 in zip(net.parameters(), start):
        assert torch.allclose(p, p0 + 1.0, atol=1e-6)


def test_bundled_model_is_small_and_uses_clip_tokens(bundled):
    size = sum(p.stat().st_size for p in BUNDLED_PATH.rglob("*") if p.is_file())
    assert size <= 25 * 1024 * 1024, f"bundled model is {size / 2**20:.1f} MB"
    assert bundled.tokenizer("horse").input_ids == [49406, 4558, 49407]
    assert bundled.tokenizer("zebra").input_ids == [49406, 22548, 49407]
    assert len(bundled.tokenizer) == 49408
    assert bundled.dtype.is_floating_point and str(bundled.device) == "cpu"


def test_bundled_folder_is_a_diffusers_stable_diffusion_folder():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(BUNDLED_PATH), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    assert pipe.vae_scale_factor == 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


# ----------------------------------------------------------------------------- training noise, captions, checkpoints
def test_pyramid_noise_is_white_at_discount_zero_and_has_coarse_power_otherwise():
    shape = (8, 4, 16, 16)
    white = pyramid_noise(shape, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(white, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    coarse = pyramid_noise(shape, torch.Generator().manual_seed(0), 0.7)
    assert coarse.shape == shape and coarse.dtype == torch.float32
    assert torch.allclose(coarse.std(dim=(1, 2, 3)), torch.ones(8), atol=1e-5)  # each sample at unit variance
    # a 4x4 block's mean varies far more than white noise's (1/4 of its std): the coarse scales are there
    assert F.avg_pool2d(coarse, 4).std() > 1.5 * F.avg_pool2d(white, 4).std()


def test_caption_variants_leave_out_colours_and_background_but_never_a_pattern_word():
    rng = np.random.default_rng(0)
    scenes = [random_scene(s) for s in range(200)]
    assert [caption_variant(s, rng, 0.0) for s in scenes] == [s.caption for s in scenes]
    words = set(training_record([s.caption for s in scenes])["words"])
    variants = [caption_variant(s, rng, 0.5) for s in scenes]
    assert any(v != s.caption for v, s in zip(variants, scenes))
    for v, s in zip(variants, scenes):
        assert set(v.split()) <= words | {"a", "an"}, v
        for t in s.things:  # the shape is always named; a pattern word stays (a zebra may be "a striped horse")
            assert t.shape in v or t.name == "zebra" and "zebra" in v, (v, s.caption)
            if t.pattern != "plain":
                assert t.pattern in v or "zebra" in v, (v, s.caption)
    assert caption_variant(scenes[3], np.random.default_rng(1), 0.5) == caption_variant(scenes[3], np.random.default_rng(1), 0.5)


def test_training_stopped_midway_resumes_to_the_same_model(tmp_path, monkeypatch):
    import diffedit_helpers.world.train as train_module

    tiny = ["--scenes", "24", "--vae-steps", "2", "--vae-batch", "4", "--unet-steps", "3", "--unet-batch", "4",
            "--tune-steps", "3", "--noise-discount", "0.6", "--caption-dropout", "0.3", "--checkpoint-every", "2", "--warmup", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_main(["--out", str(whole), *tiny])
    real_lr, calls = train_module.cosine_lr, []

    def stop_in_stage_4(step, total, base, warmup=100):  # 2 VAE steps, 3 of stage 3, then stage 4's third, after its first checkpoint
        calls.append(step)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_lr(step, total, base, warmup)

    monkeypatch.setattr(train_module, "cosine_lr", stop_in_stage_4)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--out", str(resumed), *tiny])
    assert (tmp_path / "resumed.ckpt" / "stage4.pt").exists() and not (resumed / "unet").exists()
    monkeypatch.setattr(train_module, "cosine_lr", real_lr)
    train_main(["--out", str(resumed), *tiny])
    assert not (tmp_path / "resumed.ckpt").exists()  # checkpoints go once the model is saved
    a, b = load_model(whole), load_model(resumed)
    for (name, p), q in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(p, q), f"resuming changed {name}"
    recipe = json.loads((resumed / "training.json").read_text())["recipe"]
    assert recipe["noise_discount"] == 0.6 and recipe["tune_steps"] == 3


def test_open_ended_training_snapshots_its_ema_model_and_goes_on_where_it_stopped(tmp_path):
    ckpt = tmp_path / "long-run"
    tiny = ["--arch", "32x32", "--scenes", "24", "--vae-steps", "2", "--vae-batch", "4", "--unet-batch", "4", "--warmup", "1",
            "--checkpoints", str(ckpt), "--snapshot-minutes", "0.01"]
    train_main(["--out", str(tmp_path / "first"), *tiny, "--cpu-hours", "0.0005"])
    listed = [json.loads(line) for line in (ckpt / "snapshots.jsonl").read_text().splitlines()]
    steps = [s["step"] for s in listed]
    assert len(steps) >= 2 and steps == sorted(set(steps))
    assert all(Path(s["folder"]).is_dir() for s in listed) and (ckpt / "stage3.pt").exists()  # a named folder is kept
    model = load_model(listed[-1]["folder"])
    assert model.vae_scale_factor == 2 and model.unet.config.sample_size == 32  # the 32x32 architecture
    recipe = json.loads((Path(listed[-1]["folder"]) / "training.json").read_text())["recipe"]
    assert recipe["arch"] == "32x32" and recipe["step"] == steps[-1]
    # a larger budget goes on from the last checkpoint: later steps, the same VAE
    train_main(["--out", str(tmp_path / "second"), *tiny, "--cpu-hours", "0.001"])
    later = [json.loads(line) for line in (ckpt / "snapshots.jsonl").read_text().splitlines()][len(listed):]
    assert later and min(s["step"] for s in later) > steps[-1]
    assert later[-1]["cpu_hours"] > listed[-1]["cpu_hours"]
    first, second = load_model(tmp_path / "first"), load_model(tmp_path / "second")
    for (name, p), q in zip(first.vae.state_dict().items(), second.vae.state_dict().values()):
        assert torch.equal(p, q), f"the VAE changed: {name}"


def test_learning_rate_warms_up_then_decays_or_holds():
    assert learning_rate(0, 1000, 1.0, warmup=10) == pytest.approx(0.1)
    assert learning_rate(0, 1000, 1.0, warmup=10, schedule="constant") == pytest.approx(0.1)
    assert learning_rate(999, 1000, 1.0, warmup=10) < 1e-4  # cosine: down to 0 at the end
    assert learning_rate(10**6, 0, 1.0, warmup=10, schedule="constant") == 1.0  # open-ended: held


def test_training_options_out_of_range_are_refused(tmp_path, capsys):
    for option, value in (("--noise-discount", "1.0"), ("--caption-dropout", "-0.1"), ("--tune-steps", "-1"), ("--checkpoint-every", "0"),
                          ("--cpu-hours", "0"), ("--snapshot-minutes", "nan"), ("--arch", "8x8")):
        with pytest.raises(SystemExit):
            train_main(["--out", str(tmp_path / "m"), option, value])
        assert option in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
