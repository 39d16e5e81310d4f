"""DiffEdit on Stable Diffusion XL, offline: an SDXL-shaped folder with random weights built at test
time (SDXL's configs' structure, small channel counts: two text encoders of different widths, a
3-level "text_time" UNet, an 8x VAE), loaded the ways diffusers users load SDXL, and edited. Random
weights paint noise; shapes, conditioning, masks, backgrounds and determinism are real."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sd_path import _copy, _edit_config, _garble_weights

from diffedit_helpers import DiffEditConfig, DiffEditModel, ModelLoadError, diffedit, feather_alpha, load_model
from diffedit_helpers.config import STABLE_DIFFUSION
from diffedit_helpers.latents import encode_image
from diffedit_helpers.mask import noise_difference
from diffedit_helpers.noising import guided_noise, make_scheduler, predict_noise
from diffedit_helpers.text import TIME_IDS, XLEmbeddings, encode_prompts
from diffedit_helpers.world.sd_shaped import save_sd_folder

SRC, TGT = "a cup of coffee on a saucer", "a cup of green tea on a saucer"
FAST = DiffEditConfig(steps=4, n_noise=2, threshold=0.3)
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "00_quickstart.ipynb"


@pytest.fixture(scope="session")
def xl_folder(tmp_path_factory):
    return save_sd_folder(tmp_path_factory.mktemp("sdxl") / "sdxl", version="xl")


@pytest.fixture(scope="session")
def xl(xl_folder):
    return load_model(xl_folder)


def _photo(height=128, width=96, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _run(model, image=None, seed=0, config=FAST, **kwargs):
    image = _photo() if image is None else image
    return diffedit(model, image, SRC, TGT, config, generator=torch.Generator().manual_seed(seed), progress=False, **kwargs)


# ----------------------------------------------------------------------------- loading
def test_an_sdxl_folder_loads_with_both_text_encoders_and_its_config(xl_folder, xl):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert {p.name for p in xl_folder.iterdir()} >= {"text_encoder_2", "tokenizer_2", "unet", "vae", "model_index.json"}
    assert xl.is_xl and isinstance(xl.text_encoder, CLIPTextModel) and isinstance(xl.text_encoder_2, CLIPTextModelWithProjection)
    assert xl.unet.config.addition_embed_type == "text_time"
    assert xl.force_zeros_for_empty_prompt is True  # model_index.json, as SDXL ships it
    assert xl.vae_scale_factor == 8 and xl.latent_channels == 4 and xl.max_prompt_tokens == 77
    assert all(not p.requires_grad for p in xl.text_encoder_2.parameters()) and not xl.text_encoder_2.training
    # the same defaults as Stable Diffusion: the VAE factor is 8
    assert DiffEditConfig.for_model(xl) == DiffEditConfig(**STABLE_DIFFUSION)


def test_force_zeros_follows_the_model_index(xl_folder, tmp_path):
    folder = _copy(xl_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, force_zeros_for_empty_prompt=False)))
    assert load_model(folder).force_zeros_for_empty_prompt is False


def test_an_sdxl_pipeline_edits_as_its_folder_does(xl_folder, xl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(xl_folder))
    model = DiffEditModel.from_pipe(pipe)
    assert model.is_xl and model.text_encoder_2 is pipe.text_encoder_2 and model.tokenizer_2 is pipe.tokenizer_2
    assert model.unet is pipe.unet  # shared, not copied
    assert model.force_zeros_for_empty_prompt == pipe.config.force_zeros_for_empty_prompt
    from_pipe, from_folder = _run(pipe), _run(xl)  # diffedit takes the pipeline itself too
    np.testing.assert_array_equal(from_pipe.mask, from_folder.mask)
    np.testing.assert_array_equal(np.asarray(from_pipe.image), np.asarray(from_folder.image))


def test_an_fp16_variant_sdxl_folder_and_a_cached_hub_id_load(tmp_path):
    half = save_sd_folder(tmp_path / "sdxl-fp16", version="xl", variant="fp16")
    assert {f.name for f in (half / "text_encoder_2").iterdir()} == {"config.json", "model.fp16.safetensors"}
    model = load_model(half)
    assert model.is_xl and model.text_encoder_2.dtype == torch.float32
    # the hub cache, offline: laid out as a downloaded repository
    snapshot = tmp_path / "hub" / "models--someone--sdxl-small" / "snapshots" / ("0" * 40)
    shutil.copytree(half, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    code = ("from diffedit_helpers import load_model\n"
            "m = load_model('someone/sdxl-small', variant='fp16')\n"
            "print(m.is_xl, m.force_zeros_for_empty_prompt, type(m.text_encoder_2).__name__)\n")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "CLIPTextModelWithProjection"]


@pytest.mark.parametrize("change, message", [
    (lambda f: shutil.rmtree(f / "tokenizer_2"), "SDXL-style model .* has no tokenizer_2/"),
    (lambda f: _edit_config(f, "unet", addition_embed_type=None), "has a UNet without addition_embed_type 'text_time'"),
    (lambda f: _edit_config(f, "text_encoder_2", hidden_size=64), r"text encoders are 32 \+ 64 = 96 wide but the UNet attends to 80"),
    (lambda f: _edit_config(f, "text_encoder_2", projection_dim=32), "added embedding reads 64 values"),
    (lambda f: _edit_config(f, "unet", in_channels=9), "inpainting UNet with 9 input channels"),
])
def test_broken_sdxl_folders_are_refused_before_their_weights_load(xl_folder, tmp_path, change, message):
    folder = _copy(xl_folder, tmp_path)
    change(folder)
    _garble_weights(folder)
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(folder)
    assert "SDXL base models" in str(err.value) and "\n" not in str(err.value)


def test_missing_text_encoder_2_weights_are_an_error_naming_it(xl_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(xl_folder, tmp_path)
    path = folder / "text_encoder_2" / "model.safetensors"
    weights = load_file(str(path))
    save_file({k: v for k, v in weights.items() if k != "text_projection.weight"}, str(path))
    with pytest.raises(ModelLoadError, match="text_encoder_2 weights have missing keys: text_projection.weight"):
        load_model(folder)


# ----------------------------------------------------------------------------- the conditioning
def test_prompt_embeddings_are_both_encoders_penultimate_states_the_pooled_projection_and_time_ids(xl):
    d1, d2 = xl.text_encoder.config.hidden_size, xl.text_encoder_2.config.hidden_size
    emb = encode_prompts(xl, [SRC, TGT], size=(128, 96))
    assert isinstance(emb, XLEmbeddings)
    assert emb.shape == (2, xl.max_prompt_tokens, d1 + d2) == (2, 77, xl.unet.config.cross_attention_dim)
    assert emb.pooled.shape == (2, xl.text_encoder_2.config.projection_dim) and emb.time_ids.shape == (2, len(TIME_IDS))
    assert emb.dtype == xl.dtype and emb.pooled.dtype == xl.dtype and emb.time_ids.dtype == xl.dtype
    assert emb.time_ids.tolist() == [[128, 96, 0, 0, 128, 96]] * 2  # original size, crop top-left, target size
    ids = xl.tokenizer([SRC], padding="max_length", max_length=77, return_tensors="pt").input_ids
    out1 = xl.text_encoder(ids, output_hidden_states=True)
    out2 = xl.text_encoder_2(ids, output_hidden_states=True)
    torch.testing.assert_close(emb.hidden[0, :, :d1], out1.hidden_states[-2][0])
    torch.testing.assert_close(emb.hidden[0, :, d1:], out2.hidden_states[-2][0])
    torch.testing.assert_close(emb.pooled[0], out2.text_embeds[0])
    default = encode_prompts(xl, SRC)  # no size: the UNet's native size, sample_size x the VAE factor
    native = xl.unet.config.sample_size * xl.vae_scale_factor
    assert default.time_ids.tolist() == [[native, native, 0, 0, native, native]]


def test_the_blank_prompt_is_zeros_only_when_the_config_forces_it(xl):
    emb = encode_prompts(xl, ["", TGT])
    assert not emb.hidden[0].any() and not emb.pooled[0].any()
    assert emb.hidden[1].abs().sum() > 0 and emb.pooled[1].abs().sum() > 0
    unforced = DiffEditModel(**{**xl.__dict__, "force_zeros_for_empty_prompt": False})
    emb = encode_prompts(unforced, [""])
    assert emb.hidden.abs().sum() > 0 and emb.pooled.abs().sum() > 0


def test_xl_embeddings_batch_like_one_tensor(xl):
    a, b = encode_prompts(xl, SRC), encode_prompts(xl, TGT)
    both = torch.cat([a, b])
    assert len(both) == 2 and both.shape == (2, 77, a.shape[-1]) and both.pooled.shape[0] == 2
    first, second = both.chunk(2)
    assert torch.equal(first, a) and torch.equal(second, b) and not torch.equal(a, b)
    assert torch.equal(both[1:2], b) and torch.equal(a.expand(3, -1, -1)[2:3], a)
    with pytest.raises(TypeError, match="batch axis"):
        torch.cat([a, b], dim=1)


def test_shapes_at_each_step_and_the_unet_gets_text_embeds_and_time_ids_on_every_call(xl):
    """A forward hook records what the UNet receives: every call (the mask's batched source/target
    calls, guidance, the masked denoising) must carry the pooled embedding and the image's time ids."""
    image = _photo(128, 96)
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape, kwargs.get("encoder_hidden_states"), kwargs.get("added_cond_kwargs")))

    handle = xl.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        x0 = encode_image(xl, image)
        assert x0.shape == (1, xl.latent_channels, 128 // xl.vae_scale_factor, 96 // xl.vae_scale_factor)
        emb = encode_prompts(xl, [SRC, TGT, ""], size=(128, 96))
        sched = make_scheduler(xl, 4)
        out = predict_noise(xl, x0, sched.timesteps[0], emb[0:1])
        assert out.shape == x0.shape
        assert guided_noise(xl, x0, sched.timesteps[0], emb[1:2], emb[2:3], 7.5).shape == x0.shape
        raw = noise_difference(xl, x0, emb[0:1], emb[1:2], sched, n_noise=3, batch_size=4, generator=torch.Generator().manual_seed(0))
        assert raw.shape == x0.shape[-2:] and raw.dtype == torch.float32
        n_before = len(calls)
        r = _run(xl, image, config=FAST.replace(encoding="inversion"))
    finally:
        handle.remove()
    assert len(calls) > n_before + 2  # the edit called the UNet too: mask, inversion, denoising
    assert [c[0][0] for c in calls[:4]] == [1, 2, 4, 2]  # one, guidance's pair, the mask's batches of 4 and 2
    for shape, hidden, added in calls:
        assert added is not None and set(added) == {"text_embeds", "time_ids"}
        assert added["text_embeds"].shape == (shape[0], xl.text_encoder_2.config.projection_dim)
        assert added["time_ids"].tolist() == [[128, 96, 0, 0, 128, 96]] * shape[0]
        assert hidden.shape == (shape[0], 77, xl.unet.config.cross_attention_dim)
    assert r.image.size == (96, 128) and r.mask.shape == (128, 96) and r.difference_map.shape == (128, 96)


# ----------------------------------------------------------------------------- the edit
def test_the_mask_is_binary_at_image_size_and_the_background_is_the_input_bit_for_bit(xl):
    image = _photo(128, 96)
    r = _run(xl, image)
    assert r.mask.shape == (128, 96) and r.mask.dtype == bool and r.mask.any() and not r.mask.all()
    assert set(np.unique(np.asarray(r.mask_image))) <= {0, 255}
    assert np.isfinite(r.difference_map).all() and 0 <= r.difference_map.min() and r.difference_map.max() <= 1
    outside = feather_alpha(r.mask, FAST.feather) == 0  # composite: there the pixels are the input's, exactly
    assert outside.any()
    np.testing.assert_array_equal(np.asarray(r.image)[outside], np.asarray(image)[outside])
    assert (np.asarray(r.image)[r.mask] != np.asarray(image)[r.mask]).any()  # and inside, the edit changed something


def test_a_seed_reproduces_the_edit_bit_for_bit_and_another_seed_does_not(xl):
    a, b, c = _run(xl, seed=3), _run(xl, seed=3), _run(xl, seed=4)
    np.testing.assert_array_equal(a.difference_map, b.difference_map)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_a_users_mask_a_negative_prompt_and_a_batch_work_on_sdxl(xl):
    image = _photo(128, 96)
    mask = np.zeros((128, 96), bool)
    mask[32:96, 24:72] = True
    r = _run(xl, image, mask=mask, config=FAST.replace(negative_prompt="blurry"))
    np.testing.assert_array_equal(r.mask, mask)
    np.testing.assert_array_equal(np.asarray(r.image)[~mask], np.asarray(image)[~mask])
    alone = [_run(xl, im) for im in (image, _photo(128, 96, seed=1))]
    batch = diffedit(xl, [image, _photo(128, 96, seed=1)], SRC, TGT, FAST, generator=torch.Generator().manual_seed(0),
                     progress=False)
    for one, many in zip(alone, batch):
        np.testing.assert_array_equal(np.asarray(one.image), np.asarray(many.image))


def test_the_notebooks_512_px_photo_is_edited_at_its_own_size(xl):
    from diffedit_helpers.paths import example_edit

    path, source, target = example_edit(xl)
    image = Image.open(path).convert("RGB")
    r = diffedit(xl, image, source, target, FAST.replace(n_noise=1, steps=2), generator=torch.Generator().manual_seed(0),
                 progress=False)
    assert image.size == (512, 512) and r.image.size == image.size and r.mask.shape == (512, 512)


@pytest.mark.slow
def test_notebook_00_runs_on_an_sdxl_shaped_model(xl_folder, tmp_path):
    # the SDXL-shaped folder with a native size of 512 px instead of 1024: the notebook generates its horse
    # at the model's native size, and a quarter of the pixels is a quarter of the CPU time
    xl_folder = _copy(xl_folder, tmp_path, "sdxl-512")
    _edit_config(xl_folder, "unet", sample_size=64)
    env = dict(os.environ, DIFFEDIT_MODEL=str(xl_folder), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(tmp_path),
           "--ExecutePreprocessor.timeout=900", str(NOTEBOOK)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=NOTEBOOK.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads((tmp_path / NOTEBOOK.name).read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert f"model: {xl_folder}" in printed and "coffee.jpg" in printed
    model = load_model(xl_folder)
    native = model.unet.config.sample_size * model.vae_scale_factor  # the generated horse's size
    assert native == 512 and model.is_xl
    assert f"edited image size: ({native}, {native})" in printed and "same image: True" in printed
    assert re.search(r"pixels changed further out:\s+0 of \d+", printed)  # beyond the feathered mask: the input, exactly


# ----------------------------------------------------------------------------- diffusers' API: DiffEditXLPipeline
@pytest.fixture(scope="module")
def xl_pipe(xl_folder):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    from diffedit_helpers import DiffEditXLPipeline

    pipe = DiffEditXLPipeline.from_pretrained(
        xl_folder, torch_dtype=torch.float32, scheduler=DDIMScheduler.from_pretrained(xl_folder, subfolder="scheduler"),
        inverse_scheduler=DDIMInverseScheduler.from_pretrained(xl_folder, subfolder="scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_three_calls_run_end_to_end_on_sdxl_and_keep_the_background(xl_pipe):
    image, steps = _photo(128, 96), 4
    calls = []
    hook = xl_pipe.unet.register_forward_hook(lambda m, a, kw, out: calls.append(kw["added_cond_kwargs"]), with_kwargs=True)
    try:
        mask = xl_pipe.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, num_inference_steps=steps,
                                     num_maps_per_mask=2, generator=torch.Generator().manual_seed(0))
        latents = xl_pipe.invert(prompt=SRC, image=image, num_inference_steps=steps,
                                 generator=torch.Generator().manual_seed(0)).latents
        edited = xl_pipe(prompt=TGT, mask_image=mask, image_latents=latents, num_inference_steps=steps,
                         generator=torch.Generator().manual_seed(0), output_type="latent").images
    finally:
        hook.remove()
    f = xl_pipe.vae_scale_factor
    assert mask.shape == (1, 128 // f, 96 // f) and mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert latents.shape == (1, int(steps * 0.8), 4, 128 // f, 96 // f) and edited.shape == (1, 4, 128 // f, 96 // f)
    # every UNet call got the pooled embedding and the time ids of this image's own size
    assert calls and all(c["time_ids"].tolist() == [[128, 96, 0, 0, 128, 96]] * len(c["time_ids"]) for c in calls)
    assert all(c["text_embeds"].shape[-1] == xl_pipe.text_encoder_2.config.projection_dim for c in calls)
    # outside the mask, the image's own latents (the posterior draw the inversion started from), exactly
    pixels = xl_pipe.image_processor.preprocess(image)
    clean = xl_pipe.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0)) * xl_pipe.vae.config.scaling_factor
    outside = torch.from_numpy(mask[:, None] == 0).expand_as(clean)
    assert 0 < outside.float().mean() < 1
    torch.testing.assert_close(edited[outside], clean[outside], rtol=0, atol=1e-6)
    pil = xl_pipe(prompt=TGT, mask_image=mask, image_latents=latents, num_inference_steps=steps).images[0]
    assert pil.size == (96, 128)


def test_sdxl_masks_are_seeded_and_prompt_embeds_are_refused(xl_pipe):
    image = _photo(128, 96)
    kw = dict(image=image, source_prompt=SRC, target_prompt=TGT, num_inference_steps=4, num_maps_per_mask=2)
    a, b = (xl_pipe.generate_mask(generator=torch.Generator().manual_seed(1), **kw) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="prompt_embeds are not supported on SDXL"):
        xl_pipe.invert(prompt_embeds=torch.zeros(1, 77, 80), image=image)


def test_from_pipe_takes_a_stable_diffusion_xl_pipelines_components(xl_folder, xl_pipe):
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionXLPipeline

    from diffedit_helpers import DiffEditXLPipeline

    sdxl = StableDiffusionXLPipeline.from_pretrained(xl_folder, torch_dtype=torch.float32)
    pipe = DiffEditXLPipeline.from_pipe(sdxl, scheduler=DDIMScheduler.from_config(sdxl.scheduler.config),
                                        inverse_scheduler=DDIMInverseScheduler.from_config(sdxl.scheduler.config))
    assert pipe.unet is sdxl.unet and pipe.text_encoder_2 is sdxl.text_encoder_2 and pipe.config.force_zeros_for_empty_prompt
    pipe.set_progress_bar_config(disable=True)
    kw = dict(image=_photo(128, 96), source_prompt=SRC, target_prompt=TGT, num_inference_steps=4, num_maps_per_mask=2)
    np.testing.assert_array_equal(pipe.generate_mask(generator=torch.Generator().manual_seed(0), **kw),
                                  xl_pipe.generate_mask(generator=torch.Generator().manual_seed(0), **kw))
