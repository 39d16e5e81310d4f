"""`DiffEditPipeline` against diffusers' deprecated `StableDiffusionDiffEditPipeline`, the pipeline it
replaces, on the same components, inputs and seeded generator: random Stable Diffusion 1.5-shaped
(epsilon) and 2.1-shaped (v-prediction) components, the random components of the deprecated
pipeline's own (removed) fast tests, and the bundled model.

Equal where the deprecated pipeline is right (the mask, the inverted latents, an edit under a full
mask), closer to the input where it is not (the background under a partial mask), and the known
failures of the deprecated pipeline (a PIL mask, unequal strengths) work. These tests skip once
diffusers stops shipping the deprecated class."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit_helpers import BUNDLED_PATH, DiffEditPipeline
from diffedit_helpers.world.sd_shaped import build_sd_components
from diffedit_helpers.world.shapes import horse_scene, make_edit, render

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "StableDiffusionDiffEditPipeline"):
    pytest.skip("this diffusers no longer ships StableDiffusionDiffEditPipeline, the reference these tests compare "
                "against", allow_module_level=True)

STEPS = 10
MASK = dict(num_inference_steps=STEPS, num_maps_per_mask=4)
EDIT = make_edit(horse_scene(), "pattern")
SRC, TGT = EDIT.source_prompt, EDIT.target_prompt


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pipelines(components: dict):
    "(deprecated, ours) on the same component objects, with DDIM and DDIM-inverse schedulers."
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    config = components.pop("scheduler_config")
    parts = dict(components, scheduler=DDIMScheduler.from_config(config), safety_checker=None, feature_extractor=None,
                 inverse_scheduler=DDIMInverseScheduler.from_config(config), requires_safety_checker=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated: the reference, not a dependency
        theirs = StableDiffusionDiffEditPipeline(**parts)
    ours = DiffEditPipeline(**parts)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


def _sd_components(version: str) -> dict:
    c = build_sd_components(version, small=True, seed=3)
    for name in ("vae", "unet", "text_encoder"):
        c[name].requires_grad_(False).eval()
    return c


def _bundled_components() -> dict:
    from diffedit_helpers import load_model

    m = load_model("bundled")
    return dict(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, scheduler_config=m.scheduler_config)


def _removed_test_components(prediction_type: str) -> dict:
    """The random components of the deprecated pipeline's own fast tests (removed from diffusers with it): a
    2-level UNet (32, 64) with SD 2's linear projections, a 2-level VAE (a 2x scale factor), a 5-layer CLIP
    text encoder 32 wide; the bundled CLIP tokenizer stands in for the hub one they loaded."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=128,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
                                        vocab_size=49408, hidden_act="gelu", projection_dim=512))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type=prediction_type)
    for m in (vae, unet, text):
        m.requires_grad_(False).eval()
    return dict(vae=vae, unet=unet, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(BUNDLED_PATH / "tokenizer"),
                scheduler_config=dict(scheduler.config))


@pytest.fixture(scope="module", params=["sd15", "sd21", "bundled", "removed-tests-epsilon", "removed-tests-v"])
def pair(request):
    "(deprecated pipeline, ours, the source image) for one kind of model."
    if request.param == "bundled":
        theirs, ours = _pipelines(_bundled_components())
        image = render(EDIT.source)[0]
    elif request.param.startswith("removed-tests"):
        theirs, ours = _pipelines(_removed_test_components("epsilon" if request.param.endswith("epsilon") else "v_prediction"))
        image = render(EDIT.source)[0].resize((32, 32), Image.BICUBIC)
    else:
        theirs, ours = _pipelines(_sd_components("1.5" if request.param == "sd15" else "2.1"))
        image = render(EDIT.source)[0].resize((128, 128), Image.BICUBIC)
    return theirs, ours, image


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _invert(pipe, image, strength=0.8):
    return _quiet(pipe.invert, prompt=SRC, image=image, num_inference_steps=STEPS, inpaint_strength=strength,
                  generator=_gen()).latents


# ----------------------------------------------------------------------------- equal where it is right
def test_generate_mask_returns_the_same_mask(pair):
    theirs, ours, image = pair
    a = _quiet(theirs.generate_mask, image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), **MASK)
    b = ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), **MASK)
    f = ours.vae_scale_factor
    assert b.shape == a.shape == (1, image.height // f, image.width // f) and b.dtype == a.dtype
    assert set(np.unique(b)) <= {0, 1}
    np.testing.assert_array_equal(b, a)
    other = ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(1), **MASK)
    assert 0 < b.sum() < b.size or not np.array_equal(other, b)  # a mask that depends on its input, not a constant


def test_invert_returns_the_same_latents(pair):
    theirs, ours, image = pair
    a, b = _invert(theirs, image), _invert(ours, image)
    f = ours.vae_scale_factor
    assert b.shape == a.shape == (1, int(STEPS * 0.8), ours.unet.config.in_channels, image.height // f, image.width // f)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    out = ours.invert(prompt=SRC, image=image, num_inference_steps=STEPS, generator=_gen(), return_dict=False)
    assert isinstance(out, tuple) and out[1] is None and torch.equal(out[0], b)


def test_an_edit_under_a_full_mask_is_the_same_image(pair):
    theirs, ours, image = pair
    a_lat, b_lat = _invert(theirs, image), _invert(ours, image)
    f = ours.vae_scale_factor
    full = np.ones((1, image.height // f, image.width // f), dtype=np.int64)
    kw = dict(prompt=TGT, mask_image=full, num_inference_steps=STEPS, generator=_gen(), output_type="np")
    a = _quiet(theirs, image_latents=a_lat, **kw).images
    b = ours(image_latents=b_lat, **kw).images
    assert b.shape == a.shape == (1, image.height, image.width, 3) and b.dtype == a.dtype
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    images, nsfw = ours(image_latents=b_lat, return_dict=False, **kw)
    assert nsfw is None and np.array_equal(images, b)


# ----------------------------------------------------------------------------- better where it is not
def test_under_a_partial_mask_our_background_is_at_least_as_close_to_the_input(pair):
    theirs, ours, image = pair
    f = ours.vae_scale_factor
    h, w = image.height // f, image.width // f
    mask = np.zeros((1, h, w), dtype=np.int64)
    mask[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1  # the middle edits, the rest is background
    kw = dict(prompt=TGT, mask_image=mask, num_inference_steps=STEPS, generator=_gen())
    a = _quiet(theirs, image_latents=_invert(theirs, image), output_type="latent", **kw).images
    b = ours(image_latents=_invert(ours, image), output_type="latent", **kw).images
    # the input's latents: the VAE posterior draw both inversions start from
    pixels = ours.image_processor.preprocess(image)
    clean = ours.vae.encode(pixels).latent_dist.sample(_gen()) * ours.vae.config.scaling_factor  # (1, C, h, w)
    outside = torch.from_numpy(mask[:, None] == 0).expand_as(clean)
    err_theirs, err_ours = ((x - clean)[outside].abs().mean().item() for x in (a, b))
    assert err_ours <= err_theirs and err_ours < 1e-6  # ours: the input's latents (theirs: one level behind)
    # in pixels, against what the VAE makes of the input
    a_px, b_px, ref = (ours.image_processor.postprocess(ours.vae.decode(x / ours.vae.config.scaling_factor).sample,
                                                        output_type="np")[0] for x in (a, b, clean))
    px_outside = ~np.kron(mask[0].astype(bool), np.ones((f, f), dtype=bool))  # (H, W)
    assert np.abs(b_px - ref)[px_outside].mean() <= np.abs(a_px - ref)[px_outside].mean()


def test_a_pil_mask_is_a_list_of_l_images_and_is_accepted_back(pair):
    _, ours, image = pair
    arr = ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), **MASK)
    pil = ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), output_type="pil", **MASK)
    assert isinstance(pil, list) and len(pil) == 1 and pil[0].mode == "L" and pil[0].size == arr.shape[:0:-1]
    np.testing.assert_array_equal(np.asarray(pil[0]), arr[0].astype(np.uint8) * 255)
    latents = _invert(ours, image)
    kw = dict(prompt=TGT, image_latents=latents, num_inference_steps=STEPS, generator=_gen(), output_type="np")
    np.testing.assert_array_equal(ours(mask_image=pil, **kw).images, ours(mask_image=arr, **kw).images)


def test_the_edit_may_run_a_smaller_strength_than_the_inversion(pair):
    _, ours, image = pair
    latents = _invert(ours, image, strength=0.8)
    mask = ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), **MASK)
    kw = dict(prompt=TGT, mask_image=mask, image_latents=latents, num_inference_steps=STEPS, output_type="np")
    steps = []
    out = ours(inpaint_strength=0.5, callback=lambda i, t, x: steps.append(int(t)), **kw).images
    assert out.shape == (1, image.height, image.width, 3) and np.isfinite(out).all()
    assert steps == [int(t) for t in ours.scheduler.timesteps[5:]]
    with pytest.raises(ValueError, match="inpaint_strength asks for 9 of 10 steps.*at most 0.8"):
        ours(inpaint_strength=0.9, **kw)


def test_bad_arguments_are_refused_naming_them_before_any_model_work(pair):
    _, ours, image = pair
    with pytest.raises(ValueError, match="mask_encode_strength must be a number in \\(0, 1\\]"):
        ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, mask_encode_strength=1.5)
    with pytest.raises(ValueError, match="num_maps_per_mask must be a positive integer"):
        ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, num_maps_per_mask=0)
    with pytest.raises(ValueError, match="output_type must be one of"):
        ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, output_type="jpeg")
    with pytest.raises(ValueError, match=r"inpaint_strength=0.05 runs no step of num_inference_steps=10: use at least 0.1"):
        ours.invert(prompt=SRC, image=image, num_inference_steps=10, inpaint_strength=0.05)
    with pytest.raises(ValueError, match="num_reg_steps must be 0"):
        ours.invert(prompt=SRC, image=image, num_reg_steps=1)
    with pytest.raises(ValueError, match="mask_image must be given"):
        ours(prompt=TGT, image_latents=torch.zeros(1, 8, 4, 2, 2))


# ----------------------------------------------------------------------------- diffusers' pipeline machinery
def test_from_pretrained_and_from_pipe_load_what_the_deprecated_pipeline_loads(tmp_path):
    import sys
    from pathlib import Path

    from diffusers import DDIMInverseScheduler, DDIMScheduler

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from peer import load_peer

    folder = str(BUNDLED_PATH)
    theirs = load_peer(folder)
    ours = DiffEditPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
        inverse_scheduler=DDIMInverseScheduler.from_pretrained(folder, subfolder="scheduler"))
    ours.set_progress_bar_config(disable=True)
    image = render(EDIT.source)[0]
    a = _quiet(theirs.generate_mask, image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(), **MASK)
    np.testing.assert_array_equal(ours.generate_mask(image=image, source_prompt=SRC, target_prompt=TGT, generator=_gen(),
                                                     **MASK), a)
    torch.testing.assert_close(_invert(ours, image), _invert(theirs, image), rtol=0, atol=1e-4)

    shared = DiffEditPipeline.from_pipe(theirs)
    assert shared.unet is theirs.unet and shared.inverse_scheduler is not None
    ours.save_pretrained(tmp_path / "saved")
    again = DiffEditPipeline.from_pretrained(tmp_path / "saved", torch_dtype=torch.float32)
    assert type(again.inverse_scheduler).__name__ == "DDIMInverseScheduler"
    assert all(torch.equal(p, q) for p, q in zip(again.unet.parameters(), ours.unet.parameters()))


# ----------------------------------------------------------------------------- diffusers' step-end hook
@pytest.fixture(scope="module")
def tiny_pipe(tiny_model):
    "DiffEditPipeline on the tiny random components (fast): only ours, no comparison."
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    m = tiny_model
    pipe = DiffEditPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                            scheduler=DDIMScheduler.from_config(m.scheduler_config),
                            inverse_scheduler=DDIMInverseScheduler.from_config(m.scheduler_config),
                            requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = render(EDIT.source)[0]
    latents = pipe.invert(prompt=SRC, image=image, num_inference_steps=6, inpaint_strength=1.0, generator=_gen()).latents
    return pipe, latents


def _tiny_edit(tiny_pipe, **kw):
    pipe, latents = tiny_pipe
    return pipe(prompt=TGT, mask_image=np.ones(latents.shape[-2:]), image_latents=latents, num_inference_steps=6,
                inpaint_strength=1.0, output_type="np", **kw).images


def test_callback_on_step_end_has_diffusers_signature_and_can_replace_the_latents(tiny_pipe):
    pipe, latents = tiny_pipe
    seen = []

    def watch(p, step, timestep, callback_kwargs):
        seen.append((p, step, int(timestep), callback_kwargs["latents"].shape))
        return {}

    plain, watched = _tiny_edit(tiny_pipe), _tiny_edit(tiny_pipe, callback_on_step_end=watch)
    assert [s[1] for s in seen] == list(range(6)) and all(s[0] is pipe for s in seen)
    assert len({s[2] for s in seen}) == 6 and all(s[3] == latents[:, 0].shape for s in seen)
    np.testing.assert_array_equal(plain, watched)  # returning nothing new changes nothing
    zeroed = _tiny_edit(tiny_pipe, callback_on_step_end=lambda p, s, t, kw: {"latents": torch.zeros_like(kw["latents"])})
    assert not np.allclose(zeroed, plain)
    with pytest.raises(TypeError, match=r"^callback_on_step_end must return a dict \(diffusers' convention\), got NoneType"):
        _tiny_edit(tiny_pipe, callback_on_step_end=lambda *a: None)
    with pytest.raises(TypeError, match="^callback_on_step_end must be a function or None"):
        _tiny_edit(tiny_pipe, callback_on_step_end="print")


def test_pipe_interrupt_stops_the_denoising_as_in_diffusers(tiny_pipe):
    steps = []

    def stop_after_two(pipe, step, timestep, kwargs):
        steps.append(step)
        pipe._interrupt = step >= 1
        return kwargs

    _tiny_edit(tiny_pipe, callback_on_step_end=stop_after_two)
    assert steps == [0, 1]
    full = []
    _tiny_edit(tiny_pipe, callback_on_step_end=lambda pipe, step, t, kw: (full.append(step), kw)[1])
    assert full == list(range(6))  # the next call starts with the interrupt cleared


def test_a_callback_changing_guidance_or_prompts_is_refused(tiny_pipe):
    def dynamic_guidance(pipe, step, timestep, kwargs):
        pipe._guidance_scale = 0.0
        return kwargs

    with pytest.raises(ValueError, match=r"callback_on_step_end changed pipe._guidance_scale"):
        _tiny_edit(tiny_pipe, callback_on_step_end=dynamic_guidance)
    with pytest.raises(ValueError, match=r"callback_on_step_end changed prompt_embeds"):
        _tiny_edit(tiny_pipe, callback_on_step_end=lambda p, s, t, kw: {**kw, "prompt_embeds": None})


def test_bad_latents_from_a_callback_are_blamed_on_the_callback(tiny_pipe):
    with pytest.raises(ValueError, match=r"^callback_on_step_end returned latents holding NaN or inf at step 0"):
        _tiny_edit(tiny_pipe, callback_on_step_end=lambda p, s, t, kw: {"latents": kw["latents"] * float("nan")})
    with pytest.raises(TypeError, match=r"^callback_on_step_end must return latents as a torch.Tensor .* got ndarray"):
        _tiny_edit(tiny_pipe, callback_on_step_end=lambda p, s, t, kw: {"latents": kw["latents"].numpy()})


# ----------------------------------------------------------------------------- more of the deprecated pipeline's surface
@pytest.fixture(scope="module")
def bundled_pair():
    theirs, ours = _pipelines(_bundled_components())
    return theirs, ours, render(EDIT.source)[0]


def test_invert_decodes_its_levels_as_the_deprecated_pipeline_does(bundled_pair):
    theirs, ours, image = bundled_pair
    kw = dict(prompt=SRC, image=image, num_inference_steps=STEPS, decode_latents=True, output_type="np")
    a = _quiet(theirs.invert, generator=_gen(), **kw).images
    b = ours.invert(generator=_gen(), **kw).images
    assert b.shape == a.shape == (int(STEPS * 0.8), image.height, image.width, 3)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    pil = ours.invert(generator=_gen(), **dict(kw, output_type="pil")).images
    assert len(pil) == len(b) and pil[0].size == image.size


def test_two_prompts_and_two_images_per_prompt_edit_as_the_deprecated_pipeline_does(bundled_pair):
    theirs, ours, image = bundled_pair
    prompts = [SRC, "a brown horse on sand"]
    a_lat = _quiet(theirs.invert, prompt=prompts, image=image, num_inference_steps=STEPS, generator=_gen()).latents
    b_lat = ours.invert(prompt=prompts, image=image, num_inference_steps=STEPS, generator=_gen()).latents
    assert b_lat.shape[:2] == a_lat.shape[:2] == (2, int(STEPS * 0.8))
    torch.testing.assert_close(b_lat, a_lat, rtol=0, atol=1e-4)
    full = np.ones((2, *b_lat.shape[-2:]), dtype=np.int64)
    kw = dict(prompt=[TGT, TGT], mask_image=full, num_inference_steps=STEPS, num_images_per_prompt=2, generator=_gen(),
              output_type="np")
    a = _quiet(theirs, image_latents=a_lat, **kw).images
    b = ours(image_latents=b_lat, **kw).images
    assert b.shape == a.shape == (4, image.height, image.width, 3)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


def test_one_source_prompt_serves_every_target_prompt(bundled_pair):
    _, ours, image = bundled_pair
    kw = dict(image=image, target_prompt=[TGT, "a red horse on grass"], num_inference_steps=STEPS, num_maps_per_mask=4)
    shared = ours.generate_mask(source_prompt=SRC, generator=_gen(), **kw)
    given = ours.generate_mask(source_prompt=[SRC, SRC], generator=_gen(), **kw)
    assert shared.shape == (2, image.height // ours.vae_scale_factor, image.width // ours.vae_scale_factor)
    np.testing.assert_array_equal(shared, given)
    with pytest.raises(ValueError, match="source_prompt and target_prompt must be as many, or one source prompt"):
        ours.generate_mask(source_prompt=[SRC, SRC, SRC], generator=_gen(), **kw)
