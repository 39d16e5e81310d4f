"""Prompts -> CLIP token ids -> text embeddings (the conditioning the UNet attends to)."""

from __future__ import annotations

import warnings

import torch


def check_prompt(name: str, prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return prompt


def tokenize(model, prompts: list[str]):
    """Token ids and attention mask, padded to the text model's length: each (B, L).

    A prompt longer than L tokens is cut to L, with a warning saying how many were dropped.
    """
    tok = model.tokenizer
    length = model.max_prompt_tokens
    for p in prompts:
        n = len(tok(p).input_ids)
        if n > length:
            warnings.warn(f"prompt {p[:40]!r}... has {n} tokens; truncated to the model's {length}", stacklevel=3)
    out = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


@torch.no_grad()
def encode_prompts(model, prompts) -> torch.Tensor:
    """Text embeddings for a prompt or list of prompts: (B, L, D), on the model's device and dtype.

    Like Stable Diffusion, the UNet attends to the last hidden state of all L positions
    (the padding included), so no attention mask is passed to the text encoder.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids, _ = tokenize(model, prompts)
    emb = model.text_encoder(ids.to(model.text_encoder.device)).last_hidden_state  # (B, L, D)
    return emb.to(model.dtype)
