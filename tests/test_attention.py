"""Cross-attention maps (`diffedit_helpers.attention`): recorded through diffusers' attention
processors, they are attention (each position's weights over the tokens sum to 1), the object's
word lights the object on held-out scenes, and recording changes neither the UNet nor its output."""

import numpy as np
import pytest
import torch

from diffedit_helpers import make_mask, predict_noise
from diffedit_helpers.attention import (
    ATTENTION_THRESHOLD,
    attention_map,
    attention_maps,
    layer_grid,
    prompt_words,
    record_attention,
)
from diffedit_helpers.text import encode_prompts
from diffedit_helpers.world.evaluate import held_out_edits
from diffedit_helpers.world.metrics import mask_iou
from diffedit_helpers.world.shapes import horse_scene, render

# the floor the object's word must reach on held-out colour and pattern edits: the mean IoU of its
# thresholded map (no refinement) with the object, over 12 scenes the model never saw
WORD_IOU_FLOOR = 0.5


def _horse():
    scene = horse_scene()
    return render(scene)[0], scene.caption  # 'a brown horse on grass'


def test_the_maps_sum_over_the_tokens_as_attention_does(bundled, gen):
    image, prompt = _horse()
    maps = attention_maps(bundled, image, prompt, generator=gen)
    assert len(maps.tokens) == bundled.max_prompt_tokens and maps.tokens[0] == "<|startoftext|>"
    assert set(maps.by_grid) == {(8, 8), (4, 4)}  # the latent grid (16 x 16) halved and quartered
    for grid, m in maps.by_grid.items():
        assert m.shape == (len(maps.tokens), *grid) and (m >= 0).all()
        torch.testing.assert_close(m.sum(dim=0), torch.ones(grid), atol=1e-5, rtol=0)
    averaged = maps.averaged()  # upsampled to the latent grid and averaged: still a distribution per cell
    assert averaged.shape == (len(maps.tokens), 16, 16)
    torch.testing.assert_close(averaged.sum(dim=0), torch.ones(16, 16), atol=1e-5, rtol=0)
    # a word's raw map is its tokens' share, below 1 everywhere; normalised it spans [0, 1]
    raw = maps.word_raw("horse")
    assert 0 < raw.max() < 1
    word = maps.word_map("horse")
    assert word.shape == (64, 64) and 0 <= word.min() < 0.05 and 0.95 < word.max() <= 1  # bilinear: near, not at, the ends


def test_prompt_words_follow_the_tokenizer(bundled):
    words = prompt_words(bundled.tokenizer, "a zebra on grass")
    ids = bundled.tokenizer("a zebra on grass").input_ids  # [start, a, zebra..., on, grass, end]
    assert [w for w, _ in words] == ["a", "zebra", "on", "grass"]
    positions = [p for _, ps in words for p in ps]
    assert positions == list(range(1, len(ids) - 1))  # every token between the start and end tokens, once


def test_the_object_word_lights_the_object_on_held_out_scenes(bundled):
    edits = held_out_edits(12, ("colour", "pattern"), cycle=True)  # scenes the model never saw
    word_ious, background_ious = [], []
    for edit in edits:
        image, masks = render(edit.source)
        thing = edit.source.things[edit.index]
        maps = attention_maps(bundled, image, edit.source_prompt, generator=torch.Generator().manual_seed(0))
        word_ious.append(mask_iou(make_mask(maps.word_map(thing.noun), ATTENTION_THRESHOLD, 0, True), masks[edit.index]))
        background = edit.source.background  # the last word of the caption: the ground, not the object
        background_ious.append(mask_iou(make_mask(maps.word_map(background), ATTENTION_THRESHOLD, 0, True), masks[edit.index]))
    print(f"object word IoU {np.mean(word_ious):.3f}, background word {np.mean(background_ious):.3f}")
    assert np.mean(word_ious) > WORD_IOU_FLOOR, word_ious
    assert np.mean(word_ious) > np.mean(background_ious) + 0.15, (word_ious, background_ious)


def _module_state(unet):
    "Every module's class and instance attributes that could replace its forward, and the parameters."
    modules = {name: (type(m), "forward" in vars(m), "__call__" in vars(m)) for name, m in unet.named_modules()}
    return modules, {k: v.clone() for k, v in unet.state_dict().items()}


def test_recording_patches_no_module_and_changes_no_output(tiny_model, gen):
    unet = tiny_model.unet
    before_processors = dict(unet.attn_processors)
    before_modules, before_weights = _module_state(unet)
    x = torch.randn((2, 4, 16, 16), generator=gen)
    emb = encode_prompts(tiny_model, ["a red circle on sky", "a blue square on sand"])
    plain = predict_noise(tiny_model, x, 500, emb)
    with record_attention(unet, (16, 16)) as (sums, counts):
        during_modules, _ = _module_state(unet)
        recorded = predict_noise(tiny_model, x, 500, emb)
        swapped = [n for n, p in unet.attn_processors.items() if p is not before_processors[n]]
    assert torch.equal(recorded, plain)  # the layers' own processors still compute the output
    assert during_modules == before_modules  # no module's class or forward replaced: only processors swapped
    assert swapped and all(n.endswith("attn2.processor") for n in swapped)  # cross-attention only
    assert set(counts) == {(8, 8), (4, 4)} and all(s.shape[0] == 2 for s in sums.values())
    after = unet.attn_processors
    assert all(after[n] is p for n, p in before_processors.items())  # the very same processors put back
    after_modules, after_weights = _module_state(unet)
    assert after_modules == before_modules
    assert all(torch.equal(after_weights[k], v) for k, v in before_weights.items())


def test_the_processors_come_back_after_an_error(tiny_model):
    before = dict(tiny_model.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(tiny_model.unet, (16, 16)):
            raise RuntimeError("boom")
    assert all(tiny_model.unet.attn_processors[n] is p for n, p in before.items())


def test_stable_diffusion_shaped_unets_give_their_halved_and_quartered_grids(gen):
    from diffedit_helpers.models import DiffEditModel
    from diffedit_helpers.world.sd_shaped import build_sd_components

    c = build_sd_components("1.5", small=True)
    model = DiffEditModel(c["vae"], c["tokenizer"], c["text_encoder"], c["unet"], c["scheduler_config"], name="sd-shaped")
    image = render(horse_scene(size=128))[0]  # 128 px, an 8x VAE: a 16 x 16 latent grid
    maps = attention_maps(model, image, "a brown horse on grass", generator=gen, steps=10)
    assert set(maps.by_grid) == {(8, 8), (4, 4)}  # at 512 px these are SD's 32 x 32 and 16 x 16 layers
    for grid, m in maps.by_grid.items():
        torch.testing.assert_close(m.sum(dim=0), torch.ones(grid), atol=1e-4, rtol=0)


def test_layer_grids_are_halvings_of_the_latent_grid():
    assert layer_grid(64 * 64, (64, 64)) == (64, 64)
    assert layer_grid(16 * 16, (64, 64)) == (16, 16)
    assert layer_grid(4 * 3, (16, 12)) == (4, 3)
    assert layer_grid(3 * 2, (9, 5)) == (3, 2)  # sides rounded up at every halving, as the UNet's strided convolutions do
    with pytest.raises(ValueError, match="no halving"):
        layer_grid(50, (64, 64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(word="cat"), r"word must be one of the prompt's words \['a', 'brown', 'horse', 'on', 'grass'\], got 'cat'"),
    (dict(word="horse", strengths=(0.5, 0.0)), r"strengths must be one or more noise levels in \(0, 1\]"),
    (dict(word="horse", strengths=()), r"strengths must be one or more noise levels in \(0, 1\]"),
    (dict(word="horse", downscales=(3,)), r"downscales must be powers of two in \[1, 16\]"),
    (dict(word="horse", downscales=(1,)), r"downscales: this UNet has cross-attention only on the grids \[\(4, 4\), \(8, 8\)\]"),
])
def test_bad_input_names_the_argument(bundled, kwargs, match):
    image, prompt = _horse()
    with pytest.raises(ValueError, match=match):
        attention_map(bundled, image, prompt, generator=torch.Generator().manual_seed(0), **kwargs)


def test_a_bad_word_is_refused_before_any_model_work(bundled, monkeypatch):
    image, prompt = _horse()
    calls = []
    monkeypatch.setattr(bundled.unet, "forward", lambda *a, **k: calls.append(1))  # the model must not run
    with pytest.raises(ValueError, match="word must be one of"):
        attention_map(bundled, image, prompt, "zebra")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        attention_map(bundled, image, "  ", "zebra")
    assert calls == []


def test_a_word_that_appears_twice_is_asked_for_by_occurrence(tiny_model, gen):
    image = render(horse_scene())[0]
    prompt = "a red circle and a blue circle on grass"
    maps = attention_maps(tiny_model, image, prompt, generator=gen, strengths=(0.5,))
    first, second = maps.word_index("circle", 0), maps.word_index("circle", 1)
    assert first != second and maps.word_index("circle", None) == first + second
    assert [maps.tokens[p] for p in first + second] == ["circle</w>", "circle</w>"]
    together = maps.word_raw("circle", occurrence=None)
    torch.testing.assert_close(together, maps.word_raw("circle", occurrence=0) + maps.word_raw("circle", occurrence=1))
    with pytest.raises(ValueError, match=r"occurrence must be None \(all\) or an integer in \[0, 1\] \('circle' appears 2 times\)"):
        maps.word_map("circle", occurrence=2)
