"""Pixels <-> VAE latents.

A (B, 3, H, W) image in [-1, 1] becomes (B, C, H/f, W/f) latents, f the VAE scale factor
(2 ** (down blocks - 1): 8 for Stable Diffusion, 4 for the bundled model), multiplied by the
VAE's `scaling_factor` so that the latents have roughly unit variance, as the UNet was trained.
Taught in notebook 01_latents.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def image_to_tensor(images, device=None, dtype=torch.float32) -> torch.Tensor:
    "One or more RGB PIL images (same size) -> (B, 3, H, W) in [-1, 1]."
    images = [images] if isinstance(images, Image.Image) else list(images)
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # (B, H, W, 3)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1
    return x.to(device=device, dtype=dtype)


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    "(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def _vae_in_safe_dtype(vae, fn):
    "Run fn(vae); if half precision overflows (NaN/inf), run it again in float32."
    out = fn(vae.dtype)
    if vae.dtype == torch.float16 and not torch.isfinite(out).all():
        vae.to(torch.float32)
        try:
            out = fn(torch.float32)
        finally:
            vae.to(torch.float16)
    return out


@torch.no_grad()
def encode_image(model, images, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images -> scaled latents (B, C, H/f, W/f) in the model's dtype.

    Uses the posterior mean (deterministic); with a `generator`, samples the posterior instead.
    """
    vae = model.vae

    def run(dtype):
        x = image_to_tensor(images, vae.device, dtype)
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator=generator) if generator is not None else dist.mean
        return z * vae.config.scaling_factor

    return _vae_in_safe_dtype(vae, run).to(model.dtype)


@torch.no_grad()
def encode_samples(model, pixels: torch.Tensor, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> n draws from each image's VAE posterior, scaled: (B * n, C, H/f, W/f),
    image b's draws in rows b * n ... b * n + n - 1. Each image is encoded once; the draws are
    mean + std * noise, the noise (B * n, C, h, w) from `generator` (as n encodings of the image sampled
    one after another would draw it)."""
    from .noising import draw_noise

    vae = model.vae
    dist = vae.encode(pixels.to(device=model.device, dtype=vae.dtype)).latent_dist
    mean, std = dist.mean, dist.std  # (B, C, h, w); n == 1 keeps the VAE's memory layout (the UNet's float sums follow it)
    if n > 1:
        mean, std = mean.repeat_interleave(n, dim=0), std.repeat_interleave(n, dim=0)  # (B * n, C, h, w)
    return (mean + std * draw_noise(mean.shape, generator, mean.device, mean.dtype)) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(model, latents: torch.Tensor) -> torch.Tensor:
    "Scaled latents (B, C, h, w) -> pixels (B, 3, h*f, w*f) in [-1, 1], float32."
    vae = model.vae
    return _vae_in_safe_dtype(vae, lambda dtype: vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample).float()


def decode_to_images(model, latents: torch.Tensor) -> list[Image.Image]:
    "Scaled latents (B, C, h, w) -> list of PIL images."
    return tensor_to_images(decode_latents(model, latents))
