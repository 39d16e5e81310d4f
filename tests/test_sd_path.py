"""The Stable Diffusion path, offline: SD-1.5- and SD-2.1-shaped folders with random weights built
at test time (real configs' structure, small channel counts), loaded the ways diffusers users load
models (local folders, fp16 variants, the hub cache, a loaded pipeline), and refused up front when
DiffEdit here cannot run them."""

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit_helpers import DiffEditConfig, DiffEditModel, ModelLoadError, diffedit, feather_alpha, load_model
from diffedit_helpers.models import resolve_device
from diffedit_helpers.world.sd_shaped import save_sd_folder

SRC, TGT = "a cup of coffee on a saucer", "a cup of green tea on a saucer"
FAST = DiffEditConfig(steps=4, n_noise=2, threshold=0.3)


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return dict(sd15=save_sd_folder(root / "sd15"), sd21=save_sd_folder(root / "sd21", version="2.1"),
                sd15_fp16=save_sd_folder(root / "sd15-fp16", variant="fp16"))


def _photo(size=128):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _copy(folder, tmp_path, name="model"):
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def _edit_config(folder, component, **changes):
    path = folder / component / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------- what the SD shape means
@pytest.mark.parametrize("which, prediction", [("sd15", "epsilon"), ("sd21", "v_prediction")])
def test_sd_shaped_folders_load_with_sd_constants_from_their_configs(sd_folders, which, prediction):
    model = load_model(sd_folders[which])
    assert model.vae_scale_factor == 8 and model.latent_channels == 4 and model.max_prompt_tokens == 77
    assert model.prediction_type == prediction and model.vae.config.scaling_factor == pytest.approx(0.18215)
    r = diffedit(model, _photo(), SRC, TGT, FAST, generator=torch.Generator().manual_seed(0), progress=False)
    assert r.image.size == (128, 128) and r.mask.shape == (128, 128) and r.mask.dtype == bool
    assert np.isfinite(r.difference_map).all() and 0 <= r.difference_map.min() and r.difference_map.max() <= 1
    outside = feather_alpha(r.mask, FAST.feather) == 0  # composite: there the pixels are the input's, exactly
    assert outside.any()
    np.testing.assert_array_equal(np.asarray(r.image)[outside], np.asarray(r.input_image)[outside])


def test_an_fp16_variant_folder_loads(sd_folders):
    assert {f.name for f in (sd_folders["sd15_fp16"] / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.fp16.safetensors"}
    half = load_model(sd_folders["sd15_fp16"])  # float32 on the CPU, from the float16 weights
    assert half.dtype == torch.float32
    full = load_model(sd_folders["sd15"])
    for a, b in zip(half.unet.parameters(), full.unet.parameters()):  # the same seed: the same weights, rounded
        torch.testing.assert_close(a, b.half().float())


# ----------------------------------------------------------------------------- the hub cache, offline
def _as_hub_cache(folder, cache, repo_id):
    "Lay `folder` out as the Hugging Face cache holds a downloaded repository."
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)


def test_a_cached_hub_id_loads_offline_with_the_fp16_variant_or_without(sd_folders, tmp_path):
    cache = tmp_path / "hub"
    _as_hub_cache(sd_folders["sd15"], cache, "someone/sd15-small")
    _as_hub_cache(sd_folders["sd15_fp16"], cache, "someone/sd15-small-fp16")
    code = (
        "import warnings, torch\n"
        "from diffedit_helpers import load_model\n"
        "a = load_model('someone/sd15-small')\n"
        "b = load_model('someone/sd15-small-fp16', variant='fp16')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    c = load_model('someone/sd15-small', variant='fp16')  # no such variant: the full weights\n"
        "assert any('has no' in str(x.message) and 'variant' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "print(a.vae_scale_factor, b.vae_scale_factor, c.vae_scale_factor, a.name)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["8", "8", "8", "someone/sd15-small"]
    # not in the cache: refused in one line that says so
    proc = subprocess.run([sys.executable, "-c", "from diffedit_helpers import load_model; load_model('someone/other')"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "not in the local Hugging Face cache" in proc.stderr


# ----------------------------------------------------------------------------- a loaded pipeline
def test_a_loaded_stable_diffusion_pipeline_edits_as_its_folder_does(sd_folders):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folders["sd15"]), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    model = DiffEditModel.from_pipe(pipe)
    assert model.unet is pipe.unet and model.vae is pipe.vae  # shared, not copied
    run = lambda m: diffedit(m, _photo(), SRC, TGT, FAST, generator=torch.Generator().manual_seed(0), progress=False)  # noqa: E731
    from_pipe, from_folder = run(pipe), run(load_model(sd_folders["sd15"]))
    np.testing.assert_array_equal(from_pipe.mask, from_folder.mask)
    np.testing.assert_array_equal(np.asarray(from_pipe.image), np.asarray(from_folder.image))


# ----------------------------------------------------------------------------- refused at load time
def _garble_weights(folder):
    "Weights that cannot load: a refusal that still comes proves the configs were read first."
    for f in folder.rglob("*.safetensors"):
        f.write_bytes(b"not weights")


@pytest.mark.parametrize("change, message", [
    (lambda f: _edit_config(f, "unet", in_channels=9), "inpainting UNet with 9 input channels"),
    (lambda f: _edit_config(f, "text_encoder", hidden_size=48), "text encoder is 48 wide but the UNet attends to 32"),
    (lambda f: shutil.copytree(f / "text_encoder", f / "text_encoder_2"), "SDXL-style model"),
    (lambda f: _edit_config(f, "unet", addition_embed_type="text_time"), "SDXL-style model"),
])
def test_unsupported_models_are_refused_before_their_weights_load(sd_folders, tmp_path, change, message):
    folder = _copy(sd_folders["sd15"], tmp_path)
    change(folder)
    _garble_weights(folder)
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(folder)
    assert "supported: Stable Diffusion 1.x/2.x" in str(err.value) and "\n" not in str(err.value)


def test_missing_weights_are_an_error_naming_the_component_and_keys(sd_folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(sd_folders["sd15"], tmp_path)
    path = folder / "text_encoder" / "model.safetensors"
    weights = load_file(str(path))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path))
    with pytest.raises(ModelLoadError, match="text_encoder weights have missing keys") as err:
        load_model(folder)
    assert dropped.removeprefix("text_model.") in str(err.value)  # named as the model calls it


def test_a_broken_tokenizer_or_scheduler_folder_is_refused(sd_folders, tmp_path):
    folder = _copy(sd_folders["sd15"], tmp_path)
    vocab = folder / "tokenizer" / "vocab.json"
    vocab.write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    for extra in ("tokenizer.json",):
        (folder / "tokenizer" / extra).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="tokenizer knows only"):
        load_model(folder)
    folder = _copy(sd_folders["sd15"], tmp_path, "model2")
    (folder / "scheduler" / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="must hold a JSON object"):
        load_model(folder)


# ----------------------------------------------------------------------------- paths, devices, threads
def test_a_missing_path_is_said_to_be_missing_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match=r"^model folder 'models/sd15' does not exist$"):
        load_model("models/sd15")  # its first part is a folder here: a path
    for name in ("./sd15", "~/no-such-model-here", "a/b/c"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            load_model(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"^'weights/sd15' is not a local folder and looks like a hub id"):
        load_model("weights/sd15")  # no such folder: then, and only then, a hub id


@pytest.mark.parametrize("device", ["xpu", "meta", "gpu", "cuda:7" if not torch.cuda.is_available() else "xpu"])
def test_a_device_this_torch_cannot_use_is_refused_naming_the_ones_it_can(device):
    with pytest.raises(ValueError, match="device") as err:
        resolve_device(device)
    assert "cpu" in str(err.value)


def test_loading_in_threads_leaves_warning_filters_and_log_levels_as_they_were():
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    filters, levels = list(warnings.filters), (dlog.get_verbosity(), tlog.get_verbosity())
    errors = []

    def load():
        try:
            load_model("bundled")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert list(warnings.filters) == filters and (dlog.get_verbosity(), tlog.get_verbosity()) == levels


def test_an_sd_size_unet_on_the_cpu_is_warned_about(sd_folders, monkeypatch):
    import diffedit_helpers.models as models

    monkeypatch.setattr(models, "SD_SIZE_PARAMETERS", 1)  # the small SD shape stands in for the 860 M UNet
    with pytest.warns(UserWarning, match="Stable Diffusion-size UNet .* on the CPU: a default 512-px edit takes about"):
        load_model(sd_folders["sd15"])


# ----------------------------------------------------------------------------- the CLI on a 512-px photo
@pytest.mark.slow
def test_cli_edits_a_512_px_photo_with_an_sd_shaped_model(sd_folders, tmp_path):
    from diffedit_helpers.cli import main
    from diffedit_helpers.paths import images_dir

    photo = images_dir() / "coffee.jpg"
    out = tmp_path / "out"
    assert main(["edit", str(photo), "--source", SRC, "--target", TGT, "--out", str(out), "--model",
                 str(sd_folders["sd15"]), "--steps", "3", "--n-noise", "1", "--quiet"]) == 0
    edited = Image.open(out / "edited.png")
    assert edited.size == Image.open(photo).size == (512, 512)
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    width, height = Image.open(out / "overview.png").size
    assert 800 <= width <= 1200 and height < 400  # four panels of about 256 px, not 4x the photo


# ----------------------------------------------------------------------------- per-model defaults, examples
def test_stable_diffusion_gets_the_papers_mask_rule_and_the_bundled_model_its_measured_one(sd_folders, tiny_model):
    from diffedit_helpers.config import STABLE_DIFFUSION

    sd = load_model(sd_folders["sd15"])
    assert DiffEditConfig.for_model(sd) == DiffEditConfig(**STABLE_DIFFUSION) != DiffEditConfig()
    assert DiffEditConfig.for_model(sd).threshold == 0.5 and not DiffEditConfig.for_model(sd).refine
    assert DiffEditConfig.for_model(tiny_model) == DiffEditConfig()
    r = diffedit(sd, _photo(), SRC, TGT, None, generator=torch.Generator().manual_seed(0), progress=False)
    assert r.config == DiffEditConfig(**STABLE_DIFFUSION)  # config=None: the model's defaults


def test_the_command_line_gives_stable_diffusion_its_defaults_with_the_options_given_over_them(sd_folders, tmp_path):
    from diffedit_helpers.cli import main
    from diffedit_helpers.edit import difference_map
    from diffedit_helpers.manifest import read_manifest
    from diffedit_helpers.mask import make_mask

    sd, folder = load_model(sd_folders["sd15"]), str(sd_folders["sd15"])
    photo = tmp_path / "photo.png"
    _photo().save(photo)

    def mask_for(config):  # step 1 through the library, seed 0
        diff_map = difference_map(sd, _photo(), SRC, TGT, config, generator=torch.Generator().manual_seed(0))
        return make_mask(diff_map, config.threshold, config.blur, config.fill_holes)

    # edit: no mask option given, so the mask is Stable Diffusion's rule, not the shapes world's
    assert main(["edit", str(photo), "--source", SRC, "--target", TGT, "--out", str(tmp_path / "edit"), "--model", folder,
                 "--steps", "4", "--n-noise", "2", "--mask-only", "--quiet"]) == 0
    written = np.asarray(Image.open(tmp_path / "edit" / "mask.png")) > 127
    assert np.array_equal(written, mask_for(DiffEditConfig.for_model(sd).replace(steps=4, n_noise=2)))
    assert not np.array_equal(written, mask_for(DiffEditConfig(steps=4, n_noise=2)))  # the two rules differ here
    # batch: the manifest records the settings a job ran with, the model's defaults under the options given
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": "photo.png", "source": SRC, "target": TGT}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--model", folder, "--steps", "2", "--n-noise", "1",
                 "--threshold", "0.6", "--fill-holes", "--quiet"]) == 0
    (record,) = read_manifest(tmp_path / "batch").values()
    expected = DiffEditConfig.for_model(sd).replace(steps=2, n_noise=1, threshold=0.6, fill_holes=True)
    assert record["settings"] == expected.to_dict() and record["settings"]["normalise"] == "clamp"


def test_the_notebooks_edit_a_scene_on_the_bundled_model_and_a_photo_on_stable_diffusion(sd_folders, tiny_model):
    from diffedit_helpers.images import to_rgb
    from diffedit_helpers.paths import example_edit

    bundled = DiffEditModel(tiny_model.vae, tiny_model.tokenizer, tiny_model.text_encoder, tiny_model.unet,
                            tiny_model.scheduler_config, name="bundled")
    scene, photo = example_edit(bundled), example_edit(load_model(sd_folders["sd15"]))
    assert to_rgb(scene[0]).size == (64, 64) and scene[2] == "a zebra on grass"
    assert to_rgb(photo[0]).size == (512, 512) and photo[0].suffix == ".jpg" and photo[1] != photo[2]


# ----------------------------------------------------------------------------- the SD default mask rule
def _diffusers_rule(raw, ratio=3.0, threshold=0.5):
    "diffusers' StableDiffusionDiffEditPipeline.generate_mask, written out: clamp at ratio x mean, divide, > 0.5."
    top = raw.mean() * ratio
    return (raw.clamp(0, top) / top) > threshold


def test_the_stable_diffusion_default_is_diffusers_clamp_rule_and_its_clamp_shows(sd_folders):
    from diffedit_helpers import make_mask, scale_map, upsample_map
    from diffedit_helpers.edit import encode_inputs
    from diffedit_helpers.mask import noise_difference
    from diffedit_helpers.noising import generator_streams, make_scheduler

    sd = load_model(sd_folders["sd15"])
    config = DiffEditConfig.for_model(sd)
    # one published rule, nothing added: no blur, no hole filling, no refinement
    assert (config.normalise, config.clamp_ratio, config.threshold) == ("clamp", 3.0, 0.5)
    assert config.blur == 0 and not config.fill_holes and not config.refine
    # the library's map is that rule's map: the raw map from the same mask stream, clamped and divided
    photo, cfg = _photo(), config.replace(steps=4, n_noise=2)
    r = diffedit(sd, photo, SRC, TGT, cfg, generator=torch.Generator().manual_seed(0), progress=False)
    x0, src, tgt, _ = encode_inputs(sd, photo, SRC, TGT)
    mask_gen, _ = generator_streams(torch.Generator().manual_seed(0))
    raw = noise_difference(sd, x0, src, tgt, make_scheduler(sd, 4), 2, cfg.mask_strength, mask_gen)  # (h, w)
    top = raw.mean() * 3.0
    expected = upsample_map(raw.clamp(0, top) / top, (128, 128))
    np.testing.assert_allclose(r.raw_map, expected, atol=1e-6)
    assert np.array_equal(r.mask, expected > 0.5)
    # the clamp, visible: one extreme cell (10 x the map's peak) squashes the min-max map, so min-max at
    # 0.5 keeps that cell alone, while the clamped rule keeps every cell above half of 3 x the mean
    spiked = raw.clone()
    spiked[0, 0] = raw.max() * 10
    clamped = make_mask(scale_map(spiked, config.normalise, config.clamp_ratio).numpy(), config.threshold)
    minmax = make_mask(scale_map(spiked, "minmax").numpy(), config.threshold)
    assert minmax.sum() == 1 and minmax[0, 0]
    assert np.array_equal(clamped, _diffusers_rule(spiked).numpy()) and clamped.sum() > 1
    assert not np.array_equal(clamped, minmax)


def test_clamp_ratio_and_normalise_are_checked_before_model_work(sd_folders):
    from diffedit_helpers import ConfigError, clamp_map

    sd = load_model(sd_folders["sd15"])
    for field, value, words in [("clamp_ratio", 0, "clamp_ratio must be > 0"), ("clamp_ratio", float("nan"), "finite"),
                                ("normalise", "zscore", "normalise must be one of")]:
        with pytest.raises(ConfigError, match=words) as e:
            diffedit(sd, _photo(), SRC, TGT, FAST.replace(**{field: value}), progress=False)
        assert e.value.field == field
    with pytest.raises(ConfigError, match="clamp_ratio"):
        clamp_map(torch.ones(4, 4), -1.0)
    assert torch.equal(clamp_map(torch.zeros(4, 4)), torch.zeros(4, 4))  # nothing differs: an empty map, never NaN


# ----------------------------------------------------------------------------- the generated horse
def test_generate_image_is_seeded_sized_and_checked(sd_folders):
    from diffedit_helpers import ConfigError
    from diffedit_helpers.generate import generate_image

    sd = load_model(sd_folders["sd15"])
    a = generate_image(sd, "a photo of a brown horse on grass", torch.Generator().manual_seed(3), steps=3, size=(64, 96))
    b = generate_image(sd, "a photo of a brown horse on grass", torch.Generator().manual_seed(3), steps=3, size=(64, 96))
    c = generate_image(sd, "a photo of a brown horse on grass", torch.Generator().manual_seed(4), steps=3, size=(64, 96))
    assert a.size == (96, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    for kwargs, field in [(dict(size=(60, 64)), "size"), (dict(steps=0), "steps"), (dict(guidance=-1), "guidance")]:
        with pytest.raises(ConfigError, match=field) as e:
            generate_image(sd, "a horse", **kwargs)
        assert e.value.field == field
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        generate_image(sd, "  ")


def test_stable_diffusion_edits_the_horse_it_generated_and_keeps_the_coffee_as_second_example(sd_folders, monkeypatch):
    from diffedit_helpers import generate
    from diffedit_helpers.paths import EXAMPLES

    sd = load_model(sd_folders["sd15"])
    monkeypatch.setattr(generate, "_generated", {})
    image, what, source, target = generate.example_picture(sd)
    assert (source, target) == EXAMPLES["generated"] and "horse" in source and "zebra" in target
    assert image.size == (512, 512) and "generated" in what
    again = generate.generate_image(sd, source, torch.Generator().manual_seed(generate.HORSE_SEED),
                                    DiffEditConfig.for_model(sd).steps, DiffEditConfig.for_model(sd).guidance)
    assert np.array_equal(np.asarray(image), np.asarray(again))  # the fixed seed: the same horse every time
    coffee, name, src, tgt = generate.example_picture(sd, "second")
    assert name == "coffee.jpg" and "coffee" in src and coffee.size == (512, 512)
    with pytest.raises(ValueError, match="which must be one of"):
        generate.example_picture(sd, "third")
