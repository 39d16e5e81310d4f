"""The DiffEdit pipeline step by step, on tiny random components (fast) and the bundled model."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit_helpers import (
    DiffEditConfig,
    add_noise,
    composite,
    ddim_invert,
    decode_latents,
    diffedit,
    encode_image,
    encode_prompts,
    guided_noise,
    latent_mask,
    make_scheduler,
    masked_denoise,
    noise_difference,
    noised_backgrounds,
    normalise_map,
    predict_noise,
    timestep_at,
    to_epsilon,
    tokenize,
)
from diffedit_helpers.edit import encode_inputs
from diffedit_helpers.noising import alpha_bar, draw_noise
from diffedit_helpers.world.shapes import horse_scene, random_scene, render

FAST = DiffEditConfig(steps=8, n_noise=4, threshold=0.3, blur=3)


@pytest.fixture(scope="module")
def scene_image():
    return render(horse_scene())[0]  # 64 x 64 RGB


def _x0_and_prompts(model, image, src="a brown horse on grass", tgt="a zebra on grass"):
    "The image latents and the source, target and empty embeddings, encoded as diffedit encodes them."
    return encode_inputs(model, image, src, tgt)


# ----------------------------------------------------------------------------- shapes and dtypes
def test_shapes_and_dtypes_at_each_step(tiny_model, scene_image, gen):
    m = tiny_model
    f = m.vae_scale_factor
    assert f == 2 ** (len(m.vae.config.block_out_channels) - 1)
    x0 = encode_image(m, scene_image)
    assert x0.shape == (1, m.latent_channels, 64 // f, 64 // f) and x0.dtype == torch.float32
    pixels = decode_latents(m, x0)
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == torch.float32
    ids, attn = tokenize(m, ["horse", "a zebra on grass"])
    assert ids.shape == attn.shape == (2, m.max_prompt_tokens)
    assert attn[0].sum() == 3  # <start> horse <end>
    emb = encode_prompts(m, ["horse", "a zebra on grass", ""])
    assert emb.shape == (3, m.max_prompt_tokens, m.text_encoder.config.hidden_size)
    sched = make_scheduler(m, 10)
    t = timestep_at(sched, 0.5)
    assert t in sched.timesteps.tolist()
    noise = draw_noise(x0.shape, gen, x0.device, x0.dtype)
    xt = add_noise(sched, x0, noise, t)
    assert xt.shape == x0.shape
    eps = predict_noise(m, xt, t, emb[:1])
    assert eps.shape == x0.shape
    raw = noise_difference(m, x0, emb[:1], emb[1:2], sched, n_noise=3, generator=gen)
    assert raw.shape == x0.shape[-2:] and raw.dtype == torch.float32
    norm = normalise_map(raw)
    assert float(norm.min()) == 0.0 and float(norm.max()) == 1.0


def test_result_mask_is_boolean_at_image_size(tiny_model, scene_image, gen):
    r = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", FAST, generator=gen, progress=False)
    assert r.mask.dtype == bool and r.mask.shape == (64, 64)
    assert r.difference_map.dtype == np.float32 and r.difference_map.shape == (64, 64)
    assert 0.0 <= r.difference_map.min() and r.difference_map.max() <= 1.0
    assert r.image.size == scene_image.size and r.image.mode == "RGB"


# ----------------------------------------------------------------------------- the mask
def test_guidance_does_not_change_the_mask_difference(tiny_model, scene_image, gen):
    "(u + g (c_t - u)) - (u + g (c_s - u)) = g (c_t - c_s): the unconditional pass is not needed."
    m = tiny_model
    x0, src, tgt, unc = _x0_and_prompts(m, scene_image)
    sched = make_scheduler(m, 10)
    t = timestep_at(sched, 0.5)
    xt = add_noise(sched, x0, draw_noise(x0.shape, gen, x0.device, x0.dtype), t)
    g = 7.5
    guided = guided_noise(m, xt, t, tgt, unc, g) - guided_noise(m, xt, t, src, unc, g)
    conditional = predict_noise(m, xt, t, tgt) - predict_noise(m, xt, t, src)
    torch.testing.assert_close(guided, g * conditional, rtol=1e-3, atol=1e-4)  # batched vs single calls: float rounding


def test_noise_difference_batches_agree_with_one_call(tiny_model, scene_image):
    "Chunking the 2n UNet evaluations does not change the map."
    m = tiny_model
    x0, src, tgt, _ = _x0_and_prompts(m, scene_image)
    sched = make_scheduler(m, 10)
    a = noise_difference(m, x0, src, tgt, sched, 5, 0.5, torch.Generator().manual_seed(3), batch_size=3)
    b = noise_difference(m, x0, src, tgt, sched, 5, 0.5, torch.Generator().manual_seed(3), batch_size=64)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_identical_prompts_give_an_empty_mask_and_no_nan(tiny_model, scene_image, gen):
    with pytest.warns(UserWarning, match="identical"):
        r = diffedit(tiny_model, scene_image, "a brown horse on grass", "a brown horse on grass", FAST, generator=gen, progress=False)
    assert not r.mask.any()
    assert np.isfinite(r.difference_map).all() and r.difference_map.max() == 0
    assert np.array_equal(np.asarray(r.image), np.asarray(scene_image))


# ----------------------------------------------------------------------------- the edit loop
def _run_loop(model, image, encoding, gen, steps=8, start=2):
    x0, src, tgt, unc = _x0_and_prompts(model, image)
    sched = make_scheduler(model, steps)
    mask = np.zeros((64, 64), bool)
    mask[16:40, 20:52] = True
    m = latent_mask(mask, x0.shape[-2:])
    if encoding == "noise":
        backgrounds = noised_backgrounds(sched, x0, draw_noise(x0.shape, gen, x0.device, x0.dtype), start)
    else:
        backgrounds = ddim_invert(model, x0, src, sched, start)
    seen = []
    out = masked_denoise(model, backgrounds[start], backgrounds, m, tgt, unc, sched, start, 7.5,
                         callback=lambda i, t, x: seen.append(x.clone()))
    return x0, sched, m, backgrounds, seen, out


@pytest.mark.parametrize("encoding", ["noise", "inversion"])
def test_outside_the_mask_latents_follow_the_original_at_the_next_level(tiny_model, scene_image, gen, encoding):
    x0, sched, m, backgrounds, seen, out = _run_loop(tiny_model, scene_image, encoding, gen)
    start = 2
    assert len(seen) == len(sched.timesteps) - start
    outside = m == 0
    assert outside.any() and (~outside).any()
    for i, x in enumerate(seen):
        k = start + i
        expected = backgrounds[k + 1]  # the level just reached, not the one the step started from
        assert torch.equal(x.masked_select(outside.expand_as(x)), expected.masked_select(outside.expand_as(x)))
        if k + 1 < len(sched.timesteps):
            wrong = backgrounds[k]  # one step off (what a blend at the current level would give)
            assert not torch.equal(x.masked_select(outside.expand_as(x)), wrong.masked_select(outside.expand_as(x)))
    # after the last step the outside is the clean image latents, exactly
    assert torch.equal(out.masked_select(outside.expand_as(out)), x0.masked_select(outside.expand_as(x0)))
    assert torch.equal(backgrounds[-1], x0)
    # and the inside was actually denoised towards the target
    assert not torch.equal(out.masked_select(~outside.expand_as(out)), x0.masked_select(~outside.expand_as(x0)))


def test_noise_encoding_backgrounds_are_the_original_noised_to_each_level(tiny_model, scene_image, gen):
    m = tiny_model
    x0 = encode_image(m, scene_image)
    sched = make_scheduler(m, 8)
    noise = draw_noise(x0.shape, gen, x0.device, x0.dtype)
    bgs = noised_backgrounds(sched, x0, noise, 2)
    for k in range(2, 8):
        a = alpha_bar(sched, sched.timesteps[k])
        torch.testing.assert_close(bgs[k], a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_composite_keeps_every_pixel_outside_the_feathered_mask(scene_image):
    edited = Image.fromarray(255 - np.asarray(scene_image))
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    out = np.asarray(composite(scene_image, edited, mask, feather=5)).astype(int)
    src, ed = np.asarray(scene_image).astype(int), np.asarray(edited).astype(int)
    ring = np.zeros_like(mask)
    ring[18:42, 18:42] = True  # feather of 5 px reaches 2 px outside the mask
    assert np.array_equal(out[~ring], src[~ring])
    assert np.array_equal(out[mask], ed[mask])


def test_composite_result_equals_input_outside_the_feather(tiny_model, scene_image, gen):
    cfg = FAST.replace(composite=True, feather=3, threshold=0.5)
    r = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", cfg, generator=gen, progress=False)
    from diffedit_helpers.mask import blur_mask

    reach = np.maximum(r.mask, blur_mask(r.mask.astype(np.float32), 3) > 0)
    assert (~reach).any()
    assert np.array_equal(np.asarray(r.image)[~reach], np.asarray(scene_image)[~reach])


# ----------------------------------------------------------------------------- determinism, batches, sizes
@pytest.mark.parametrize("encoding", ["noise", "inversion"])
def test_a_seed_reproduces_the_result_bit_for_bit(tiny_model, scene_image, encoding):
    cfg = FAST.replace(encoding=encoding)
    a = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", cfg, torch.Generator().manual_seed(5), progress=False)
    b = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", cfg, torch.Generator().manual_seed(5), progress=False)
    c = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", cfg, torch.Generator().manual_seed(6), progress=False)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.difference_map, b.difference_map)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(a.difference_map, c.difference_map)


def test_a_batch_gives_each_image_what_it_would_get_alone(tiny_model):
    images = [render(random_scene(s))[0] for s in (3, 4)]
    prompts = [random_scene(s).caption for s in (3, 4)]
    targets = ["a red circle on grass", "a blue square on sand"]
    batch = diffedit(tiny_model, images, prompts, targets, FAST, torch.Generator().manual_seed(1), progress=False)
    for im, s, t, r in zip(images, prompts, targets, batch):
        alone = diffedit(tiny_model, im, s, t, FAST, torch.Generator().manual_seed(1), progress=False)
        assert np.array_equal(alone.mask, r.mask)
        assert np.array_equal(np.asarray(alone.image), np.asarray(r.image))
    assert not np.array_equal(batch[0].difference_map, batch[1].difference_map)


def test_non_square_images_keep_their_size(tiny_model, scene_image, gen):
    image = scene_image.crop((0, 0, 64, 48))  # 64 wide, 48 high
    r = diffedit(tiny_model, image, "a brown horse on grass", "a zebra on grass", FAST, generator=gen, progress=False)
    assert r.mask.shape == (48, 64) and r.difference_map.shape == (48, 64) and r.image.size == (64, 48)


# ----------------------------------------------------------------------------- v-prediction
def test_v_prediction_conversion_matches_the_scheduler(tiny_vpred_model, gen):
    "Our v -> epsilon conversion gives the same DDIM step as diffusers' v-prediction scheduler."
    sched = make_scheduler(tiny_vpred_model, 10)
    t, t_prev = sched.timesteps[3], sched.timesteps[4]
    x = torch.randn(1, 4, 8, 8, generator=gen)
    v = torch.randn(1, 4, 8, 8, generator=gen)
    a, a_prev = alpha_bar(sched, t), alpha_bar(sched, t_prev)
    eps = to_epsilon(v, x, a, "v_prediction")
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    ours = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(ours, sched.step(v, t, x).prev_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoding", ["noise", "inversion"])
def test_v_prediction_edits_run_and_stay_finite(tiny_vpred_model, scene_image, gen, encoding):
    assert tiny_vpred_model.prediction_type == "v_prediction"
    r = diffedit(tiny_vpred_model, scene_image, "a brown horse on grass", "a zebra on grass", FAST.replace(encoding=encoding),
                 generator=gen, progress=False)
    assert np.isfinite(r.difference_map).all() and r.mask.shape == (64, 64)


def test_guidance_at_or_below_one_uses_only_the_conditional_prediction(tiny_model, scene_image, gen):
    x0, src, tgt, unc = _x0_and_prompts(tiny_model, scene_image)
    sched = make_scheduler(tiny_model, 10)
    t = sched.timesteps[5]
    for g in (0.0, 1.0):
        torch.testing.assert_close(guided_noise(tiny_model, x0, t, tgt, unc, g), predict_noise(tiny_model, x0, t, tgt))
    r = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", FAST.replace(guidance=1.0), gen, progress=False)
    assert r.mask.shape == (64, 64)


# ----------------------------------------------------------------------------- refinement
def test_refine_map_moves_a_soft_edge_onto_the_image_edge():
    from diffedit_helpers.mask import refine_map

    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 30:] = 255  # a sharp vertical edge between columns 29 and 30
    soft = np.clip((np.arange(64) - 22) / 16, 0, 1).astype(np.float32)[None].repeat(64, 0)  # a ramp over 16 px
    out = refine_map(soft, image, radius=8, eps=1e-4)
    assert out.shape == soft.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    row, steps_in = out[32], np.diff(soft[32])
    steps_out = np.diff(row)
    assert steps_out.argmax() == 29  # the steepest change sits on the image's edge (columns 29 -> 30)
    assert steps_out.max() > 4 * steps_in.max()  # and is far sharper than the input's ramp
    assert np.array_equal(refine_map(soft, image, radius=0), soft)


def test_result_mask_is_made_from_the_returned_map(tiny_model, scene_image, gen):
    from diffedit_helpers import make_mask

    for refine in (True, False):
        cfg = FAST.replace(refine=refine)
        r = diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", cfg, generator=gen, progress=False)
        assert np.array_equal(r.mask, make_mask(r.difference_map, cfg.threshold, cfg.blur, cfg.fill_holes))
        assert r.raw_map.shape == r.difference_map.shape
        assert np.array_equal(r.raw_map, r.difference_map) != refine


def test_n_noise_moves_only_the_mask_the_edit_noise_has_its_own_stream(tiny_model, scene_image):
    "With a mask that covers everything whatever the map, the edit depends only on its own noise stream."
    from diffedit_helpers.noising import generator_streams

    whole = FAST.replace(threshold=0.0, blur=63, fill_holes=True, composite=False)  # every pixel ends above 0
    edits = [diffedit(tiny_model, scene_image, "a brown horse on grass", "a zebra on grass", whole.replace(n_noise=n),
                      generator=torch.Generator().manual_seed(5), progress=False) for n in (1, 4)]
    assert all(e.mask.all() for e in edits)
    assert not np.array_equal(edits[0].raw_map, edits[1].raw_map)  # the knob moved the map
    assert np.array_equal(np.asarray(edits[0].image), np.asarray(edits[1].image))  # and not the edit's noise
    # the streams are a pure function of the generator's state, and differ from each other
    a, b = generator_streams(torch.Generator().manual_seed(5)), generator_streams(torch.Generator().manual_seed(5))
    assert torch.equal(torch.randn(3, generator=a[1]), torch.randn(3, generator=b[1]))
    assert not torch.equal(torch.randn(3, generator=a[0]), torch.randn(3, generator=a[1]))
    assert generator_streams(None) == (None, None)
