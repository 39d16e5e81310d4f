"""Prompts -> CLIP token ids -> text embeddings (the conditioning the UNet attends to).

Stable Diffusion 1.x/2.x: the last hidden state of one CLIP text encoder, a (B, L, D) tensor.
Stable Diffusion XL conditions its UNet on more (`encode_prompts_xl`, as diffusers' SDXL
pipelines build it): the penultimate hidden states of both text encoders side by side
(B, L, D1 + D2), text_encoder_2's projected, pooled output (B, P), and six "time ids" per prompt
(B, 6): the image's original size, the crop's top-left corner and the target size. `XLEmbeddings`
carries the three together and batches like one tensor, so every UNet call (`noising.predict_noise`)
takes either kind.
Taught in notebook 02_text_embeddings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .config import DiffEditWarning

# a prompt's length in characters: far past what a text model reads (CLIP: 77 tokens), short enough to tokenize at once
MAX_PROMPT_CHARS = 10_000
# SDXL's micro-conditioning, in the order its UNet reads them (diffusers' add_time_ids)
TIME_IDS = ("original height", "original width", "crop top", "crop left", "target height", "target width")

def check_prompt(name: str, prompt, allow_empty: bool = False) -> str:
    """A prompt must be a string of UTF-8 text, at most MAX_PROMPT_CHARS long; a blank one only where
    `allow_empty` (the source prompt: the difference map is then taken against the unconditional,
    empty-prompt prediction)."""
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a string, got {type(prompt).__name__}")
    if not allow_empty and not prompt.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name} is {len(prompt):,} characters long, over the limit of {MAX_PROMPT_CHARS:,} (the text model "
                         f"reads only its first few dozen words)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: how Python reads a byte of the command line that is not UTF-8
        raise ValueError(f"{name} is not UTF-8 text (character {e.start + 1}, {prompt[e.start]!r}, stands for a byte that "
                         f"is not UTF-8); pass the prompt as UTF-8") from None
    return prompt


def check_prompt_list(prompts, name: str = "prompts") -> list[str]:
    "A string or a list of strings (empty strings allowed: the unconditional prompt) -> list of strings."
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a list of strings, got {_describe(prompts)}")
    return list(prompts)


def _describe(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {', '.join(sorted({type(v).__name__ for v in value}))}"
    return type(value).__name__


def tokenize(model, prompts: list[str], names: list[str] | None = None):
    """Token ids and attention mask, padded to the text model's length: each (B, L).

    A prompt longer than L tokens is cut to L, with a warning saying how many were dropped;
    `names` (one per prompt, e.g. "source_prompt") say which prompt in that warning.
    """
    prompts = check_prompt_list(prompts)
    tok = model.tokenizer
    length = model.max_prompt_tokens
    for i, p in enumerate(prompts):
        n = len(tok(p, verbose=False).input_ids)  # counted here; the library's own warning would say it again
        if n > length:
            label = names[i] if names else f"prompt {p[:40]!r}..."
            warnings.warn(f"{label} has {n} tokens, more than the text model's limit of {length}: "
                          f"truncated to {length} (the last {n - length} are ignored)", DiffEditWarning, stacklevel=3)
    out = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def indistinct(model, source_prompt: str, target_prompt: str) -> str | None:
    """Why the text model cannot tell two different prompts apart, or None if it can: the same
    tokens after lower-casing (the tokenizer ignores case and spacing), or a difference that
    lies only past the text model's token limit (the prompts are truncated there)."""
    tok = model.tokenizer
    a, b = tok(source_prompt, verbose=False).input_ids, tok(target_prompt, verbose=False).input_ids
    if a == b:
        return "they are the same tokens after lower-casing (the tokenizer ignores case and spacing)"
    n = model.max_prompt_tokens
    if tok(source_prompt, max_length=n, truncation=True).input_ids == tok(target_prompt, max_length=n, truncation=True).input_ids:
        return f"they differ only past the text model's limit of {n} tokens, where they are truncated"
    return None


@torch.no_grad()
def encode_prompts(model, prompts, names: list[str] | None = None, size: tuple[int, int] | None = None):
    """Text embeddings for a prompt or list of prompts: (B, L, D), on the model's device and dtype.

    Like Stable Diffusion, the UNet attends to the last hidden state of all L positions
    (the padding included), so no attention mask is passed to the text encoder.
    `names` label the prompts in the truncation warning. An SDXL model (two text encoders) gets
    `XLEmbeddings` instead (`encode_prompts_xl`), whose time ids say the image is `size` =
    (height, width) pixels (None: the model's native size); other models ignore `size`.
    """
    prompts = check_prompt_list(prompts)
    if getattr(model, "text_encoder_2", None) is not None:
        return encode_prompts_xl(model, prompts, names, size)
    ids, _ = tokenize(model, prompts, names)
    emb = model.text_encoder(ids.to(model.text_encoder.device)).last_hidden_state  # (B, L, D)
    return emb.to(model.dtype)


# ----------------------------------------------------------------------------- Stable Diffusion XL
@dataclass(frozen=True)
class XLEmbeddings:
    """SDXL's conditioning for B prompts, batched like one tensor along the first axis:

    hidden (B, L, D1 + D2): both text encoders' penultimate hidden states, side by side (what the
        UNet attends to; 768 + 1280 = 2048 wide on SDXL);
    pooled (B, P): text_encoder_2's projected pooled output (1280 on SDXL);
    time_ids (B, 6): original (height, width), crop (top, left), target (height, width) (TIME_IDS).

    Slicing, `expand`, `chunk`, `to`, `torch.cat` and `torch.equal` act on all three at once, so the
    code that batches plain (B, L, D) embeddings batches these too; `shape` is the hidden states'.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index) -> "XLEmbeddings":
        "Rows of the batch: a slice or index list (an int gives the rows without their batch axis)."
        return XLEmbeddings(self.hidden[index], self.pooled[index], self.time_ids[index])

    def expand(self, batch: int, *rest) -> "XLEmbeddings":
        "A (1, ...) batch repeated to `batch` rows without copying, as Tensor.expand(batch, -1, -1)."
        return XLEmbeddings(self.hidden.expand(batch, *rest), self.pooled.expand(batch, -1), self.time_ids.expand(batch, -1))

    def chunk(self, chunks: int) -> tuple["XLEmbeddings", ...]:
        return tuple(XLEmbeddings(*parts) for parts in zip(*(t.chunk(chunks) for t in self._parts())))

    def to(self, *args, **kwargs) -> "XLEmbeddings":
        return XLEmbeddings(*(t.to(*args, **kwargs) for t in self._parts()))

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.hidden, self.pooled, self.time_ids

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """torch.cat (along the batch axis) and torch.equal, part by part; any other torch function is not defined."""
        kwargs = kwargs or {}
        if func in (torch.cat, torch.concat, torch.concatenate):
            items, dim = list(args[0]), kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim != 0 or not all(isinstance(e, XLEmbeddings) for e in items):
                raise TypeError("XLEmbeddings concatenate only with XLEmbeddings, along the batch axis (dim=0)")
            return XLEmbeddings(*(torch.cat(parts) for parts in zip(*(e._parts() for e in items))))
        if func is torch.equal:
            a, b = args
            return isinstance(b, XLEmbeddings) and all(torch.equal(x, y) for x, y in zip(a._parts(), b._parts()))
        return NotImplemented


def unet_conditioning(embeddings) -> dict:
    """The UNet's keyword arguments for text embeddings: `encoder_hidden_states` (B, L, D), and for
    XLEmbeddings also `added_cond_kwargs` {"text_embeds": (B, P), "time_ids": (B, 6)} (SDXL's)."""
    if isinstance(embeddings, XLEmbeddings):
        return dict(encoder_hidden_states=embeddings.hidden,
                    added_cond_kwargs={"text_embeds": embeddings.pooled, "time_ids": embeddings.time_ids})
    return dict(encoder_hidden_states=embeddings)


def time_ids(size: tuple[int, int], crop: tuple[int, int] = (0, 0)) -> list[int]:
    """SDXL's six time ids (TIME_IDS) for an image of `size` = (height, width) pixels, shown whole:
    original size, crop top-left corner, target size (diffusers' add_time_ids, original = target)."""
    return [*size, *crop, *size]


def native_size(model) -> tuple[int, int]:
    "(height, width) in pixels the UNet was configured for: its sample_size in latent cells times the VAE factor."
    side = model.unet.config.sample_size * model.vae_scale_factor
    return side, side


@torch.no_grad()
def encode_prompts_xl(model, prompts, names: list[str] | None = None, size: tuple[int, int] | None = None) -> XLEmbeddings:
    """SDXL's conditioning for a prompt or list of B prompts, on the model's device and dtype.

    Each prompt goes through both tokenizers and text encoders; the penultimate hidden states are
    concatenated on the feature axis (B, L, D1 + D2), text_encoder_2's `text_embeds` are the pooled
    embedding (B, P), and the time ids (B, 6) describe an image of `size` = (height, width) (None:
    the model's native size). With the model's `force_zeros_for_empty_prompt` (SDXL's config), a
    blank prompt, the unconditional one, is zeros in hidden and pooled, as diffusers' SDXL pipelines
    make the unconditional embedding when no negative prompt is given.
    """
    prompts = check_prompt_list(prompts)
    ids, _ = tokenize(model, prompts, names)  # (B, L); warns once about truncation
    ids_2 = model.tokenizer_2(prompts, padding="max_length", max_length=ids.shape[1], truncation=True,
                              return_tensors="pt").input_ids  # (B, L)
    out = model.text_encoder(ids.to(model.text_encoder.device), output_hidden_states=True)
    out_2 = model.text_encoder_2(ids_2.to(model.text_encoder_2.device), output_hidden_states=True)
    hidden = torch.cat([out.hidden_states[-2], out_2.hidden_states[-2].to(out.hidden_states[-2].device)], dim=-1)
    pooled = out_2.text_embeds  # (B, P)
    device, dtype = model.device, model.dtype
    hidden, pooled = hidden.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)
    if model.force_zeros_for_empty_prompt:
        blank = torch.tensor([not p.strip() for p in prompts], device=device)  # (B,)
        hidden = torch.where(blank[:, None, None], torch.zeros_like(hidden), hidden)
        pooled = torch.where(blank[:, None], torch.zeros_like(pooled), pooled)
    ids_row = time_ids(size if size is not None else native_size(model))
    times = torch.tensor([ids_row] * len(prompts), device=device, dtype=dtype)  # (B, 6)
    return XLEmbeddings(hidden, pooled, times)
