"""What the benchmarks share: diffusers' DiffEdit pipeline (the peer we measure against, never a
dependency of the package) run with our settings, and a UNet wrapper that counts and times calls.

The peer runs its three documented calls: generate_mask, invert, then the pipeline itself, at
the same steps, noise draws, mask noise level, start step and guidance as a DiffEditConfig.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from diffedit_helpers.attention import processors_kept
from diffedit_helpers.mask import ratio_mask as peer_mask_at  # the peer's thresholding rule, taught in notebook 09

PEER_RATIO = 3.0  # diffusers' mask_thresholding_ratio default: clamp at 3x the mean, keep > 0.5 (> 1.5x the mean)


def quiet_logs():
    "diffusers' and transformers' logs down to errors and their progress bars off (the peers' deprecation notes, loading bars)."
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def load_peer(folder, dtype=torch.float32, device="cpu"):
    "diffusers' StableDiffusionDiffEditPipeline from a local SD folder, no safety checker, progress bars off."
    quiet_logs()  # before the import: importing the pipelines logs
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionDiffEditPipeline.from_pretrained(
            str(folder), torch_dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            scheduler=DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler"),
            inverse_scheduler=DDIMInverseScheduler.from_pretrained(str(folder), subfolder="scheduler"),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def peer_from_components(vae, text_encoder, tokenizer, unet, scheduler_config):
    "The same pipeline built from components already in memory (the GPU benchmark's random ones)."
    quiet_logs()  # before the import: importing the pipelines logs
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionDiffEditPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=DDIMScheduler.from_config(scheduler_config), safety_checker=None, feature_extractor=None,
            inverse_scheduler=DDIMInverseScheduler.from_config(scheduler_config), requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint_strength(config) -> float:
    "The fraction of the steps the peer runs, so that it runs exactly the steps ours runs."
    return (config.steps - config.start_index) / config.steps


@dataclass
class PeerResult:
    image: "object"  # PIL image
    latent_mask: np.ndarray  # (h, w) in {0, 1}, the pipeline's own mask
    mask: np.ndarray  # (H, W) bool: the latent mask on the pixels (each latent cell covers f x f pixels)
    seconds: dict = field(default_factory=dict)  # per stage: mask, encoding (inversion), denoising


def peer_edit(pipe, image, source_prompt, target_prompt, config, generator, ratio: float = PEER_RATIO,
              recorder=None) -> PeerResult:
    """One edit by the peer: generate_mask -> invert -> __call__, each stage timed (and its UNet
    calls labelled by stage when a UNetRecorder is given)."""
    strength = inpaint_strength(config)
    stage = (lambda name: setattr(recorder, "stage", name)) if recorder is not None else (lambda name: None)
    stage("mask")
    t0 = time.perf_counter()
    mask = pipe.generate_mask(image=image, source_prompt=source_prompt, target_prompt=target_prompt,
                              num_maps_per_mask=config.n_noise, mask_encode_strength=config.mask_strength,
                              mask_thresholding_ratio=ratio, num_inference_steps=config.steps,
                              guidance_scale=config.guidance, generator=generator, output_type="np")  # (1, h, w)
    t1 = time.perf_counter()
    stage("encoding")
    latents = pipe.invert(prompt=source_prompt, image=image, num_inference_steps=config.steps, inpaint_strength=strength,
                          guidance_scale=config.guidance, generator=generator).latents
    t2 = time.perf_counter()
    stage("denoising")
    out = pipe(prompt=target_prompt, mask_image=mask, image_latents=latents, num_inference_steps=config.steps,
               inpaint_strength=strength, guidance_scale=config.guidance, generator=generator).images[0]
    t3 = time.perf_counter()
    stage("other")
    latent = np.asarray(mask[0])
    return PeerResult(out, latent, pixel_mask(latent, (image.height, image.width)),
                      dict(mask=t1 - t0, encoding=t2 - t1, denoising=t3 - t2))


def pixel_mask(latent_mask: np.ndarray, size) -> np.ndarray:
    "(h, w) latent mask -> (H, W) bool, every latent cell covering its block of pixels (nearest)."
    h, w = latent_mask.shape
    H, W = size
    rows = np.arange(H) * h // H
    cols = np.arange(W) * w // W
    return np.asarray(latent_mask)[rows][:, cols] > 0.5


def peer_map_from_mask_call(output: torch.Tensor, n_noise: int, guidance: float) -> np.ndarray:
    """The peer's own difference map, rebuilt from the one UNet output of `generate_mask`
    (batch 4n: [negative-source, source, negative-target, target] blocks of n, as the pipeline
    concatenates them): mean over draws and channels of |guided target - guided source|, (h, w).
    Its mask at mask_thresholding_ratio r is `peer_mask_at(map, r)`: `map > r / 2 * map.mean()`."""
    neg_src, src, unc, tgt = output.float().chunk(4)
    src = neg_src + guidance * (src - neg_src)
    tgt = unc + guidance * (tgt - unc)
    return (tgt - src).abs().reshape(n_noise, *tgt.shape[1:]).mean(dim=(0, 1)).cpu().numpy()


# ----------------------------------------------------------------------------- counting UNet calls
class UNetRecorder:
    """Wraps a UNet's forward (an instance attribute, removed on exit) to count calls and
    samples per stage and time them. Set `.stage` before each stage, or pass `rec.on_stage`
    to `diffedit(..., on_stage=...)`, which names its own stages (and then `.wall` holds the
    wall time of each); `keep` keeps the outputs of calls made while `.stage == keep`.

        with UNetRecorder(unet) as rec:
            diffedit(model, ..., on_stage=rec.on_stage)
        rec.calls["mask"], rec.samples["mask"], rec.seconds["mask"], rec.wall["mask"]
    """

    def __init__(self, unet, keep: str | None = None, sync=None):
        self.unet, self.keep, self.sync = unet, keep, sync or (lambda: None)
        self.stage = "other"
        self.calls, self.samples, self.seconds, self.kept, self.wall = {}, {}, {}, [], {}

    def reset(self):
        self.calls, self.samples, self.seconds, self.kept, self.wall = {}, {}, {}, [], {}

    def on_stage(self, stage: str, event: str):
        "The `on_stage` hook of `diffedit`: label the UNet calls of each stage and add up its wall time."
        if event == "start":
            self._outer, self.stage, self._t0 = self.stage, stage, time.perf_counter()
        else:
            self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - self._t0
            self.stage = self._outer

    def __enter__(self):
        original = self.unet.forward  # the bound method

        def counted(sample, *args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = original(sample, *args, **kwargs)
            self.sync()
            s = self.stage
            self.seconds[s] = self.seconds.get(s, 0.0) + time.perf_counter() - t0
            self.calls[s] = self.calls.get(s, 0) + 1
            self.samples[s] = self.samples.get(s, 0) + sample.shape[0]
            if self.keep is not None and s == self.keep:
                self.kept.append((out[0] if isinstance(out, tuple) else out.sample).detach())
            return out

        self.unet.forward = counted  # nn.Module.__call__ looks the instance attribute up first
        return self

    def __exit__(self, *exc):
        del self.unet.forward  # back to the class's forward
        return False

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


# ----------------------------------------------------------------------------- the second peer: LEDITS++
@dataclass(frozen=True)
class LeditsSettings:
    "LEDITS++'s own knobs (the rest follow our config: steps, guidance of the inversion)."
    edit_guidance_scale: float = 5.0
    edit_threshold: float = 0.9
    skip: float = 0.15

    def text(self) -> str:
        return f"edit_guidance_scale={self.edit_guidance_scale:g}, edit_threshold={self.edit_threshold:g}, skip={self.skip:g}"


def load_leditspp(folder, dtype=torch.float32, device="cpu"):
    """diffusers' LEditsPPPipelineStableDiffusion from a local SD folder, with the multistep
    DPM-Solver++ scheduler (algorithm "sde-dpmsolver++") that LEDITS++'s inversion needs."""
    quiet_logs()  # before the import: importing the pipelines logs
    from diffusers import LEditsPPPipelineStableDiffusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = LEditsPPPipelineStableDiffusion.from_pretrained(str(folder), torch_dtype=dtype, safety_checker=None,
                                                               feature_extractor=None, requires_safety_checker=False)
        pipe.scheduler = leditspp_scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def leditspp_scheduler(scheduler_config):
    "The multistep DPM-Solver++ (sde-dpmsolver++, second order) that LEDITS++'s inversion needs, from a scheduler config."
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="sde-dpmsolver++", solver_order=2)


def leditspp_from_components(vae, text_encoder, tokenizer, unet, scheduler_config):
    "The same pipeline built from components already in memory (shared, not copied: a notebook's model, in its dtype)."
    quiet_logs()  # before the import: importing the pipelines logs
    from diffusers import LEditsPPPipelineStableDiffusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = LEditsPPPipelineStableDiffusion(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                               scheduler=leditspp_scheduler(scheduler_config), safety_checker=None,
                                               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def leditspp_masks(pipe) -> np.ndarray:
    """LEDITS++'s implicit masks from its last edit: for each editing prompt, the share of the steps in
    which each latent cell was edited (its cross-attention mask, intersected from step t <= 800 on with
    the top quantile of its noise-estimate difference). (prompts, h, w) float32 in [0, 1]."""
    masks = pipe.activation_mask  # (steps, prompts, 1, C, h, w): 1 where the step edited the cell
    return masks.float().mean(dim=0).flatten(1, -3).mean(dim=1).numpy()  # (prompts, h, w)


def leditspp_invert(pipe, image, source_prompt, config, settings: LeditsSettings, generator):
    """LEDITS++'s documented first call: invert `image` with the source prompt (our steps and guidance).
    It sets plain processors on every attention layer; a shared UNet gets its own back."""
    with processors_kept(pipe.unet):
        pipe.invert(image=image, source_prompt=source_prompt, source_guidance_scale=config.guidance,
                    num_inversion_steps=config.steps, skip=settings.skip, generator=generator)


def leditspp_edit(pipe, source_prompt, target_prompt, settings: LeditsSettings, generator):
    """Its second call, on the last inverted image: towards the target prompt, away from the
    source prompt (reverse direction), with its implicit masks (edit_threshold). A PIL image."""
    scale, threshold = settings.edit_guidance_scale, settings.edit_threshold
    with processors_kept(pipe.unet):  # it installs its own to store attention; a shared UNet gets its own back
        return pipe(editing_prompt=[target_prompt, source_prompt], reverse_editing_direction=[False, True],
                    edit_guidance_scale=[scale, scale], edit_threshold=[threshold, threshold], generator=generator).images[0]
