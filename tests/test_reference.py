"""Our masked denoising loop against diffusers' DiffEdit loop (StableDiffusionDiffEditPipeline,
the reference implementation), on tiny random components.

The loops are the same algorithm with one deliberate difference. After the DDIM step from
level t_k down to t_(k+1), both paste the original image's latents outside the mask:
  - ours pastes the original at the level just reached, t_(k+1) (`backgrounds[k + 1]`), so
    inside and outside the mask carry the same amount of noise;
  - diffusers pastes the original at the level the step started from, t_k
    (`image_latents[i]`), one level noisier than the latents it is pasted next to.
Given the original one level behind, our loop must reproduce diffusers' exactly; given the
levels as they are, the two must differ (so the difference is real, and the test can fail).
"""

import warnings

import pytest
import torch

from diffedit_helpers import DiffEditConfig, latent_mask, make_scheduler, masked_denoise, noised_backgrounds
from diffedit_helpers.edit import encode_inputs
from diffedit_helpers.noising import draw_noise
from diffedit_helpers.world.shapes import horse_scene, make_edit, render

CFG = DiffEditConfig(steps=10, edit_start=0.3, guidance=7.5)


@pytest.fixture(scope="module")
def reference_pipe(tiny_model):
    from diffusers import DDIMScheduler, StableDiffusionDiffEditPipeline

    m = tiny_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipeline is deprecated; it is the reference, not a dependency
        pipe = StableDiffusionDiffEditPipeline(
            vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
            scheduler=DDIMScheduler.from_config(m.scheduler_config), safety_checker=None, feature_extractor=None,
            inverse_scheduler=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(model):
    edit = make_edit(horse_scene(), "pattern")
    image = render(edit.source)[0]
    x0, _, tgt, unc = encode_inputs(model, image, edit.source_prompt, edit.target_prompt)
    scheduler = make_scheduler(model, CFG.steps)
    noise = draw_noise(x0.shape, torch.Generator().manual_seed(0), x0.device, x0.dtype)
    backgrounds = noised_backgrounds(scheduler, x0, noise, CFG.start_index)  # [k] at level timesteps[k]; [-1] clean
    truth = render(edit.source)[1][0] | render(edit.target)[1][0]
    mask = latent_mask(truth, x0.shape[-2:])  # (1, 1, h, w), a real object-shaped mask
    assert 0 < mask.mean() < 1
    return x0, tgt, unc, scheduler, backgrounds, mask


def _reference(pipe, backgrounds, mask, tgt, unc, k0):
    "diffusers' loop: starts from image_latents[0], pastes image_latents[i] after step i."
    levels = torch.stack(backgrounds[k0:-1], dim=1)  # (1, steps - k0, C, h, w): the original at t_k0 ... t_last
    strength = (CFG.steps - k0) / CFG.steps  # runs exactly the steps ours runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(prompt_embeds=tgt, negative_prompt_embeds=unc, mask_image=mask[0, 0], image_latents=levels,
                    num_inference_steps=CFG.steps, inpaint_strength=strength, guidance_scale=CFG.guidance,
                    output_type="latent").images


def test_masked_denoise_matches_diffusers_up_to_the_background_level(tiny_model, reference_pipe):
    x0, tgt, unc, scheduler, backgrounds, mask = _inputs(tiny_model)
    k0 = CFG.start_index
    theirs = _reference(reference_pipe, backgrounds, mask, tgt, unc, k0)
    assert len(reference_pipe.scheduler.timesteps[k0:]) == CFG.steps - k0

    # the one deliberate difference undone: after the step from timesteps[k], paste level k (not k + 1)
    one_behind = [None] * (k0 + 1) + backgrounds[k0:-1]  # one_behind[k + 1] == backgrounds[k]
    ours_as_theirs = masked_denoise(tiny_model, backgrounds[k0], one_behind, mask, tgt, unc, scheduler, k0, CFG.guidance)
    torch.testing.assert_close(ours_as_theirs, theirs, rtol=1e-4, atol=1e-4)  # float reordering only

    # as shipped: the background is pasted at the level just reached, which diffusers does not do
    ours = masked_denoise(tiny_model, backgrounds[k0], backgrounds, mask, tgt, unc, make_scheduler(tiny_model, CFG.steps),
                          k0, CFG.guidance)
    outside = (1 - mask).bool().expand_as(ours)
    assert (ours[outside] - theirs[outside]).abs().max() > 1e-2
    torch.testing.assert_close(ours[outside], x0[outside])  # ours ends on the clean original outside the mask
    assert (theirs[outside] - x0[outside]).abs().max() > 1e-2  # diffusers' ends one level noisy there
