"""Noise and the UNet: the DDIM schedule, noising an image to a level, and asking the UNet
what noise it sees. Every later step (the mask, inversion, the edit) is built from these.

With T training steps and `steps` inference steps, DDIM visits every (T // steps)-th
timestep from the noisiest down ("leading" spacing, plus the config's offset): for SD's
settings and 50 steps, 981, 961, ..., 1. Noising clean latents x0 to timestep t is
    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise,
abar_t the cumulative product of (1 - beta) up to t. The UNet predicts that noise (or, for
v-prediction models, a velocity that `to_epsilon` turns back into noise). Solving the same line
for x0 gives the clean latents a noise prediction implies (`predicted_x0`), the quantity every
DDIM step and the DiffEdit map are built on.
Taught in notebook 03_noising; the UNet calls in 04_noise_to_mask; DDIM steps in 06_masked_denoising.
"""

from __future__ import annotations

import torch

from .text import unet_conditioning


def make_scheduler(model, steps: int):
    "A DDIM scheduler with the model's config, its timesteps set for `steps` steps."
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps, device=model.device)
    return sched


def timestep_at(scheduler, strength: float) -> int:
    """The scheduler timestep a fraction `strength` of the way into the noise: 0.5 is the
    middle of the DDIM schedule, 1.0 its noisiest step."""
    n = len(scheduler.timesteps)
    idx = min(n - 1, max(0, int(round(n * (1 - strength)))))
    return int(scheduler.timesteps[idx])


def strength_start(steps: int, strength: float) -> int:
    """Index of the first of `steps` timesteps when a fraction `strength` of them is run (diffusers'
    rule for img2img, inpainting and DiffEdit: int(steps * strength) steps, the last ones)."""
    return steps - min(int(steps * strength), steps)


def add_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
    "Noise clean latents (B, C, h, w) to `timestep` (int or (B,) tensor): the forward process."
    t = torch.as_tensor(timestep, device=latents.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(latents.shape[0])
    return scheduler.add_noise(latents, noise, t)


def alpha_bar(scheduler, timestep) -> torch.Tensor:
    "abar_t as a float32 scalar tensor; timestep -1 (before the first step) is 1 (clean)."
    t = int(timestep)
    return scheduler.alphas_cumprod[t].float() if t >= 0 else torch.tensor(1.0)


def predicted_x0(scheduler, x_t: torch.Tensor, eps: torch.Tensor, timestep) -> torch.Tensor:
    """The clean latents a noise prediction implies: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
    the forward process solved for x0. x_t, eps: (B, C, h, w) at `timestep`; returns (B, C, h, w)
    float32. With the true noise it gives x0 back; a DDIM step re-noises it to the next level."""
    abar = alpha_bar(scheduler, timestep).to(x_t.device)
    return (x_t.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()


@torch.no_grad()
def predict_noise(model, latents: torch.Tensor, timestep, embeddings) -> torch.Tensor:
    """One UNet call: latents (B, C, h, w) at `timestep`, text embeddings (B, L, D) (SDXL:
    `XLEmbeddings`, with the pooled embedding and time ids) -> the model output (B, C, h, w):
    noise for epsilon models, velocity for v-prediction."""
    t = torch.as_tensor(timestep, device=latents.device)
    return model.unet(latents, t, **unet_conditioning(embeddings)).sample


def guided_noise(model, latents, timestep, cond, uncond, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: u + g (c - u), both predictions in one batched call.
    guidance <= 1 switches it off (the conditional prediction alone, no unconditional pass)."""
    if guidance <= 1:
        return predict_noise(model, latents, timestep, cond)
    both = predict_noise(model, torch.cat([latents, latents]), timestep, torch.cat([uncond, cond]))  # (2B, C, h, w)
    u, c = both.chunk(2)
    return u + guidance * (c - u)


def draw_noise(shape, generator, device, dtype) -> torch.Tensor:
    "Gaussian noise drawn from `generator` on its own device, then moved: the same seed gives the same noise on any device."
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)


STREAMS = ("mask", "edit")  # the two independent noise streams of one edit, in the order their seeds are drawn


def generator_streams(generator) -> tuple:
    """One generator -> (mask_generator, edit_generator), two independent streams on its device.

    Two seeds are drawn from `generator` and each seeds a fresh generator: the mask's noise draws
    come from the first, the edit's starting noise from the second. How much the mask draws
    (n_noise) then leaves the edit's noise as it was, so a sweep of one knob moves only that knob.
    The same generator state gives the same pair. None gives (None, None): both from torch's global RNG."""
    if generator is None:
        return None, None
    seeds = torch.randint(0, 2**62, (len(STREAMS),), generator=generator, device=generator.device).tolist()
    return tuple(torch.Generator(generator.device).manual_seed(int(s)) for s in seeds)


def to_epsilon(output, latents, abar, prediction_type: str = "epsilon") -> torch.Tensor:
    """The model output as a noise prediction, whatever the prediction type.
    v-prediction: eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return abar.sqrt() * output + (1 - abar).sqrt() * latents
    if prediction_type == "sample":
        return (latents - abar.sqrt() * output) / (1 - abar).sqrt()
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")
