"""Prompts -> CLIP token ids -> text embeddings (the conditioning the UNet attends to).

Taught in notebook 02_text_embeddings.
"""

from __future__ import annotations

import warnings

import torch

from .config import DiffEditWarning

MIN_VOCABULARY = 1000  # CLIP's has 49,408 tokens; a tokenizer folder missing its vocabulary loads with a handful

def check_prompt(name: str, prompt, allow_empty: bool = False) -> str:
    """A prompt must be a string; a blank one only where `allow_empty` (the source prompt: the
    difference map is then taken against the unconditional, empty-prompt prediction)."""
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a string, got {type(prompt).__name__}")
    if not allow_empty and not prompt.strip():
        raise ValueError(f"{name} must be a non-empty string")
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
        n = len(tok(p).input_ids)
        if n > length:
            label = names[i] if names else f"prompt {p[:40]!r}..."
            warnings.warn(f"{label} has {n} tokens, more than the text model's limit of {length}: "
                          f"truncated to {length} (the last {n - length} are ignored)", DiffEditWarning, stacklevel=3)
    out = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def check_tokenizer(model):
    """Refuse a tokenizer that cannot tell words apart (an empty or partial tokenizer/ folder
    loads with a few tokens, and then every prompt encodes the same): no model work."""
    from .models import ModelLoadError

    tok = model.tokenizer
    size = len(tok)
    if size < MIN_VOCABULARY:
        why = f"knows only {size} tokens (at least {MIN_VOCABULARY:,} expected; CLIP's has 49,408)"
    elif tok("cat").input_ids == tok("dog").input_ids:
        why = "encodes the different words 'cat' and 'dog' alike"
    else:
        return
    raise ModelLoadError(f"model {model.name!r}: its tokenizer {why}, so every prompt would encode the same; "
                         f"its tokenizer/ folder is incomplete (vocab.json, merges.txt): fetch it again")


def indistinct(model, source_prompt: str, target_prompt: str) -> str | None:
    """Why the text model cannot tell two different prompts apart, or None if it can: the same
    tokens after lower-casing (the tokenizer ignores case and spacing), or a difference that
    lies only past the text model's token limit (the prompts are truncated there)."""
    tok = model.tokenizer
    a, b = tok(source_prompt).input_ids, tok(target_prompt).input_ids
    if a == b:
        return "they are the same tokens after lower-casing (the tokenizer ignores case and spacing)"
    n = model.max_prompt_tokens
    if tok(source_prompt, max_length=n, truncation=True).input_ids == tok(target_prompt, max_length=n, truncation=True).input_ids:
        return f"they differ only past the text model's limit of {n} tokens, where they are truncated"
    return None


@torch.no_grad()
def encode_prompts(model, prompts, names: list[str] | None = None) -> torch.Tensor:
    """Text embeddings for a prompt or list of prompts: (B, L, D), on the model's device and dtype.

    Like Stable Diffusion, the UNet attends to the last hidden state of all L positions
    (the padding included), so no attention mask is passed to the text encoder.
    `names` label the prompts in the truncation warning.
    """
    prompts = check_prompt_list(prompts)
    ids, _ = tokenize(model, prompts, names)
    emb = model.text_encoder(ids.to(model.text_encoder.device)).last_hidden_state  # (B, L, D)
    return emb.to(model.dtype)
