"""The bundled model's architecture: Stable Diffusion's components, small.

The configs here are what `train` builds and trains, what the tests build with random weights
(fast, any prediction type) and what the GPU benchmark scales up; none of them needs the
training script.

    components = build_components(seed=0)   # vae, text_encoder, tokenizer, unet, scheduler
"""

from __future__ import annotations

from pathlib import Path

import torch

# CLIP's real BPE vocabulary and merges, shipped with the bundled model (tools/make_clip_tokenizer.py)
TOKENIZER_SOURCE = Path(__file__).resolve().parent.parent / "bundled" / "tokenizer"


# The architectures, by their latent grid for a 64 px scene. "16x16" is the bundled model's: one latent cell
# is 4 px, wider than the world's finest detail (a leg or a stripe is about 3 px). "32x32" halves the cell:
# a VAE with two blocks (scale factor 2) and a UNet one level deeper, so its coarse levels (8x8, 4x4, with
# cross-attention) stay those of "16x16" and only a 32x32 level without attention is added.
LATENT_GRID = {"16x16": 16, "32x32": 32}  # latent side for a 64 px scene
ARCHITECTURES = tuple(LATENT_GRID)
DEFAULT_ARCHITECTURE = "16x16"


def _check_architecture(arch: str):
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


def vae_config(arch: str = DEFAULT_ARCHITECTURE):
    """AutoencoderKL: "16x16" has three blocks (scale factor 2 ** (3 - 1) = 4, 64 px -> 16x16x4 latents),
    "32x32" two (scale factor 2, 64 px -> 32x32x4)."""
    _check_architecture(arch)
    channels = (32, 64, 64) if arch == "16x16" else (32, 64)
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        sample_size=64,
    )


def unet_config(cross_attention_dim=64, sample_size: int | None = None, arch: str = DEFAULT_ARCHITECTURE):
    "UNet2DConditionModel with cross-attention at 8x8 and 4x4 only (full-resolution attention costs twice the time per step on a CPU)."
    _check_architecture(arch)
    plain = ("DownBlock2D",) if arch == "16x16" else ("DownBlock2D", "DownBlock2D")
    return dict(
        sample_size=sample_size or LATENT_GRID[arch], in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128) if arch == "16x16" else (32, 64, 128, 128), norm_num_groups=16,
        down_block_types=(*plain, "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", *("UpBlock2D",) * len(plain)),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8,
    )


def text_config():
    "A 2-layer CLIP text model over CLIP's full 49,408-token vocabulary, 77-token prompts."
    return dict(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def scheduler_config(prediction_type="epsilon"):
    "Stable Diffusion 1.x's DDIM settings."
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
        timestep_spacing="leading",
    )


def build_components(tokenizer_dir=TOKENIZER_SOURCE, seed=0, prediction_type="epsilon", arch: str = DEFAULT_ARCHITECTURE):
    "Randomly initialised components of the tiny architecture `arch` (what training starts from, and what the tests use)."
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(arch))
    tcfg = text_config()
    text_encoder = CLIPTextModel(CLIPTextConfig(**tcfg))
    unet = UNet2DConditionModel(**unet_config(cross_attention_dim=tcfg["hidden_size"], arch=arch))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=tcfg["max_position_embeddings"])
    scheduler = DDIMScheduler(**scheduler_config(prediction_type))
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
