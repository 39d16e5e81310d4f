"""Cross-attention as a mask: where in the picture does the UNet look up each word of the prompt?

Every cross-attention layer of the UNet turns each latent position (a query) into a softmax over
the prompt's tokens (the keys): a (queries, tokens) table of probabilities per head, each row
summing to 1. Averaged over the layers, the heads and a few noise levels, a word's column, laid
back on the latent grid, is a map of where that word is: the idea behind Prompt-to-Prompt's and
DAAM's maps. DiffEdit's map (`mask.noise_difference`) is another question: where do two prompts
*disagree*? A word's attention needs one prompt, and says nothing about where a new object would go.

The probabilities are recorded with diffusers' attention-processor API: `AttentionRecorder` is a
processor that computes the attention probabilities of a cross-attention layer from its own query
and key projections, hands the layer's computation itself to the processor it replaces (so the
UNet's output is unchanged), and adds the head-averaged probabilities to a running sum per grid
size. `record_attention` installs it on the cross-attention layers (`unet.set_attn_processor`) and
puts the original processors back afterwards; no module is changed.
Taught in notebook 09_successors.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .images import fit_size, to_rgb
from .latents import encode_image
from .mask import normalise_map, upsample_map
from .noising import add_noise, draw_noise, make_scheduler, predict_noise, timestep_at
from .text import encode_prompts

# the grids the maps are averaged over, as the latent grid's side divided by the layer's: 2 and 4 are
# Stable Diffusion's 32x32 and 16x16 layers at 512 px (the ones Prompt-to-Prompt and DAAM use), and the
# bundled model's 8x8 and 4x4 (its only cross-attention layers)
DEFAULT_DOWNSCALES = (2, 4)
# the normalised map binarised in the middle, as the DiffEdit paper binarises its map; benchmarks/attention.py
# measures the best threshold on scenes apart from the held-out ones
ATTENTION_THRESHOLD = 0.5
DEFAULT_STRENGTHS = (0.3, 0.5, 0.7)  # noise levels the image is seen at, fractions of the schedule (like mask_strength)


class AttentionRecorder:
    """A diffusers attention processor for one cross-attention layer: records the attention
    probabilities and leaves the layer's output to `inner`, the processor it replaces.

    Each call adds the probabilities averaged over heads, (B, queries, tokens) float32, to
    `sums[(h, w)]` (h x w = queries, the layer's grid, worked out from `latent_size`) and counts
    the call in `counts[(h, w)]`. Self-attention calls (no encoder states) are passed through."""

    def __init__(self, inner, sums: dict, counts: dict, latent_size: tuple[int, int]):
        self.inner, self.sums, self.counts, self.latent_size = inner, sums, counts, latent_size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            self.record(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    @torch.no_grad()
    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask):
        x = hidden_states
        if x.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
            x = x.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        batch, tokens = context.shape[0], context.shape[1]
        mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        query = attn.head_to_batch_dim(attn.to_q(x))  # (B*heads, queries, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*heads, tokens, d)
        probs = attn.get_attention_scores(query, key, mask)  # (B*heads, queries, tokens), rows sum to 1
        probs = probs.float().reshape(batch, attn.heads, *probs.shape[1:]).mean(dim=1)  # (B, queries, tokens)
        grid = layer_grid(probs.shape[1], self.latent_size)
        self.sums[grid] = self.sums.get(grid, 0) + probs
        self.counts[grid] = self.counts.get(grid, 0) + 1


def layer_grid(queries: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer with `queries` positions, from the latent grid's size: each
    UNet down block halves both sides (rounding up), so the grid is latent_size / 2**k."""
    h, w = latent_size
    for _ in range(16):
        if h * w == queries:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"an attention layer with {queries} positions is no halving of the {latent_size} latent grid")


def is_cross_attention(name: str) -> bool:
    "diffusers names each transformer block's cross-attention layer `attn2` (`attn1` attends to the image itself)."
    return name.endswith("attn2.processor")


@contextmanager
def processors_kept(unet):
    """Within the block, code may install other attention processors on `unet`; on exit, even after
    an error, every layer gets back the very processor it had. Yields {layer name: processor}."""
    original = dict(unet.attn_processors)
    try:
        yield original
    finally:
        unet.set_attn_processor(dict(original))  # a copy: set_attn_processor empties the dict it is given


@contextmanager
def record_attention(unet, latent_size: tuple[int, int]):
    """Within the block, every cross-attention layer of `unet` records its probabilities:
    yields (sums, counts), both keyed by the layer grid (h, w), filled as the UNet runs.
    The original processors are put back on exit, even after an error."""
    if not any(is_cross_attention(n) for n in unet.attn_processors):
        raise ValueError("this UNet has no cross-attention layers (no `attn2`): there is no word to attend to")
    with processors_kept(unet) as original:
        sums, counts = {}, {}
        unet.set_attn_processor({name: AttentionRecorder(p, sums, counts, latent_size) if is_cross_attention(name) else p
                                 for name, p in original.items()})
        yield sums, counts


@dataclass
class AttentionMaps:
    """Head- and step-averaged cross-attention of one prompt over one image.

    tokens: the prompt's tokens as the tokenizer writes them, the start token first, then the
    padding (len = the text model's length L). by_grid: {(h, w): (L, h, w) float32}, the mean over
    that grid's layers; at every position the L values sum to 1, as attention's softmax does.
    words: each word of the prompt with the token positions it was split into."""

    tokens: list[str]
    by_grid: dict
    words: list[tuple[str, list[int]]]
    latent_size: tuple[int, int]
    image_size: tuple[int, int]

    def averaged(self, grids=None) -> torch.Tensor:
        """(L, h, w) at the latent grid: each layer grid's maps upsampled (bilinear, which keeps
        the sum over tokens at 1) and averaged with equal weight per grid."""
        grids = list(self.by_grid) if grids is None else [tuple(g) for g in grids]
        ups = [F.interpolate(self.by_grid[g][None], size=self.latent_size, mode="bilinear", align_corners=False)[0]
               for g in grids]
        return torch.stack(ups).mean(dim=0)

    def word_index(self, word: str, occurrence: int | None = 0) -> list[int]:
        """The token positions of `word` (compared in lower case): of its `occurrence`-th appearance
        in the prompt (0: the first), or of every appearance for None."""
        found = [positions for w, positions in self.words if isinstance(word, str) and w == word.lower()]
        if not found:
            raise ValueError(f"word must be one of the prompt's words {[w for w, _ in self.words]}, got {word!r}")
        if occurrence is None:
            return [p for positions in found for p in positions]
        if isinstance(occurrence, bool) or not isinstance(occurrence, int) or not 0 <= occurrence < len(found):
            raise ValueError(f"occurrence must be None (all) or an integer in [0, {len(found) - 1}] "
                             f"({word!r} appears {len(found)} times), got {occurrence!r}")
        return found[occurrence]

    def word_raw(self, word: str, grids=None, occurrence: int | None = 0) -> torch.Tensor:
        """The attention the latent grid pays to `word` (summed over its tokens; over every appearance
        for occurrence=None), (h, w): probabilities, not normalised."""
        return self.averaged(grids)[self.word_index(word, occurrence)].sum(dim=0)

    def word_map(self, word: str, grids=None, occurrence: int | None = 0) -> np.ndarray:
        "`word`'s attention, min-max normalised and upsampled to the image: (H, W) float32 in [0, 1], like a difference map."
        return upsample_map(normalise_map(self.word_raw(word, grids, occurrence)), self.image_size).astype(np.float32)


def prompt_words(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Each whitespace-separated word of `prompt` (lower case) with its token positions in the
    encoded prompt (position 0 is the start token): [("a", [1]), ("brown", [2]), ...]."""
    words, position = [], 1
    for word in prompt.lower().split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        words.append((word, list(range(position, position + n))))
        position += n
    return words


def check_prompt(prompt) -> str:
    if isinstance(prompt, bool) or not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return prompt


def check_word(tokenizer, prompt: str, word) -> str:
    "`word` must be one of the prompt's words (compared in lower case)."
    words = [w for w, _ in prompt_words(tokenizer, check_prompt(prompt))]
    if not isinstance(word, str) or word.lower() not in words:
        raise ValueError(f"word must be one of the prompt's words {words}, got {word!r}")
    return word


def check_strengths(strengths) -> tuple[float, ...]:
    "At least one noise level, each a fraction of the schedule in (0, 1]."
    values = tuple(strengths) if not isinstance(strengths, (int, float)) else (strengths,)
    if not values or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1 for s in values):
        raise ValueError(f"strengths must be one or more noise levels in (0, 1], got {strengths!r}")
    return values


@torch.no_grad()
def attention_maps(model, image, prompt: str, strengths=DEFAULT_STRENGTHS, downscales=DEFAULT_DOWNSCALES,
                   generator: torch.Generator | None = None, steps: int = 50) -> AttentionMaps:
    """The cross-attention of `prompt` over `image` (a PIL image of the model's size): the image's
    latents noised once to each of `strengths` (fractions of a `steps`-step DDIM schedule, one noise
    draw each from `generator`), one batched UNet call with the prompt, the probabilities of every
    cross-attention layer whose grid is the latent grid divided by one of `downscales` averaged over
    heads, layers and noise levels. Returns `AttentionMaps`."""
    strengths = check_strengths(strengths)
    check_prompt(prompt)
    image = fit_size(to_rgb(image, multiple=model.vae_scale_factor), model.vae_scale_factor)  # sides: multiples of the VAE factor
    latent_size = (image.height // model.vae_scale_factor, image.width // model.vae_scale_factor)  # the VAE's grid
    wanted = {layer_grid_at(latent_size, d) for d in check_downscales(downscales, latent_size)}
    x0 = encode_image(model, image)  # (1, C, h, w)
    scheduler = make_scheduler(model, steps)
    t = torch.tensor([timestep_at(scheduler, s) for s in strengths], device=x0.device)  # (S,)
    noise = draw_noise((len(strengths), *x0.shape[1:]), generator, x0.device, x0.dtype)  # (S, C, h, w)
    noisy = add_noise(scheduler, x0.expand(len(strengths), -1, -1, -1), noise, t)
    emb = encode_prompts(model, [prompt], names=["prompt"], size=(image.height, image.width))  # (1, L, D)
    with record_attention(model.unet, latent_size) as (sums, counts):
        predict_noise(model, noisy, t, emb.expand(len(strengths), *emb.shape[1:]))
    missing = wanted - set(sums)
    if missing:
        raise ValueError(f"downscales: this UNet has cross-attention only on the grids {sorted(sums)} "
                         f"(latent grid {latent_size}), not on {sorted(missing)}")
    by_grid = {g: (sums[g] / counts[g]).mean(dim=0).T.reshape(-1, *g) for g in sorted(wanted, reverse=True)}  # (L, h, w)
    ids = model.tokenizer(prompt, padding="max_length", max_length=model.max_prompt_tokens, truncation=True).input_ids
    return AttentionMaps(model.tokenizer.convert_ids_to_tokens(ids), by_grid, prompt_words(model.tokenizer, prompt),
                         latent_size, (image.height, image.width))


def layer_grid_at(latent_size: tuple[int, int], downscale: int) -> tuple[int, int]:
    "The grid of the layers `downscale` times coarser than the latent grid (sides rounded up, as the UNet does)."
    return tuple(math.ceil(s / downscale) for s in latent_size)


def check_downscales(downscales, latent_size) -> tuple[int, ...]:
    "Powers of two from 1 up to the latent grid's shorter side."
    values = tuple(downscales) if not isinstance(downscales, int) else (downscales,)
    ok = values and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 and d & (d - 1) == 0
                        and d <= min(latent_size) for d in values)
    if not ok:
        raise ValueError(f"downscales must be powers of two in [1, {min(latent_size)}] (the latent grid's side "
                         f"over an attention layer's), got {downscales!r}")
    return values


def attention_map(model, image, prompt: str, word: str, **kwargs) -> np.ndarray:
    """`word`'s cross-attention map over `image` under `prompt`, normalised to [0, 1] at the
    image's size: (H, W) float32, thresholded like a difference map (`mask.make_mask`).
    Keyword arguments go to `attention_maps`."""
    check_word(model.tokenizer, prompt, word)  # before any model work
    return attention_maps(model, image, prompt, **kwargs).word_map(word)
