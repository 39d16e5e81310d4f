"""The DDIM noise schedule: which timesteps a run visits and how an image is noised to one.

With T training steps and `steps` inference steps, DDIM visits every (T // steps)-th
timestep from the noisiest down ("leading" spacing, plus the config's offset): for SD's
settings and 50 steps, 981, 961, ..., 1. Noising clean latents x0 to timestep t is
    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise,
abar_t the cumulative product of (1 - beta) up to t.
"""

from __future__ import annotations

import torch


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
