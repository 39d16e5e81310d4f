"""`DiffEditPipeline`: DiffEdit behind diffusers' door, a drop-in for diffusers' deprecated
`StableDiffusionDiffEditPipeline` (no fixes after diffusers 0.33.1), built on this package's steps.

    from diffedit_helpers import DiffEditPipeline      # was: from diffusers import StableDiffusionDiffEditPipeline
    pipe = DiffEditPipeline.from_pretrained(folder, inverse_scheduler=DDIMInverseScheduler.from_pretrained(
        folder, subfolder="scheduler"))
    mask = pipe.generate_mask(image=image, source_prompt=src, target_prompt=tgt, generator=g)    # (1, h, w)
    inv_latents = pipe.invert(prompt=src, image=image, generator=g).latents                     # (1, K, C, h, w)
    image = pipe(prompt=tgt, mask_image=mask, image_latents=inv_latents, generator=g).images[0]

The three calls keep diffusers' argument names, defaults, output types and shapes; this class
speaks diffusers' vocabulary (num_inference_steps, guidance_scale, inpaint_strength, output_type)
and translates it into the lesson's steps once, here: `mask.prompt_difference` and `mask.ratio_mask`
for the mask, `latents.encode_samples` for the VAE, `noising.guided_noise` and the inverse
scheduler's step for the inversion, `edit.masked_denoise` for the edit. Loading, `from_pipe`,
`to`, `save_pretrained`, progress bars and CPU offload are diffusers' own (a `DiffusionPipeline`).
`DiffEditXLPipeline` is the same three calls for Stable Diffusion XL (two text encoders).

On the same components, inputs and seeded generator it returns the same mask, the same inverted
latents, and with a full mask the same image. Where it differs, on purpose:
  - the blend: after each step the background is pasted at the level just reached (the clean image
    latents after the last step), where the deprecated pipeline pastes it one level behind, so its
    background never comes back clean; ours stays closer to the input;
  - strengths: `__call__` may run a smaller `inpaint_strength` than `invert` was given (it starts
    lower on the inverted levels) instead of failing with a shape error (diffusers #5465);
  - `generate_mask(output_type="pil")` returns a list of "L" images (255 inside) instead of raising
    a TypeError; `mask_image` may also be a mask at the image's size (carried to the latent grid);
  - the mask costs 2n UNet samples for n maps where the deprecated pipeline runs 4n: guidance
    cancels from the difference of two guided predictions sharing one unconditional prediction
    (with different source and target negative prompts it does not, and 4n are run);
  - each image of a batch is thresholded against its own mean (the deprecated pipeline uses the
    whole batch's); each image is VAE-encoded once per call, not once per map;
  - not supported, refused with an error: cross_attention_kwargs, clip_skip, `latents` in
    `__call__` (the deprecated pipeline ignores it), inversion regularisation (num_reg_steps > 0),
    lists of generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils import BaseOutput

from .edit import masked_denoise
from .latents import decode_latents as decode_pixels
from .latents import encode_samples
from .mask import _binarise, latent_mask, mask_levels, prompt_difference, ratio_mask
from .models import DiffEditModel
from .noising import add_noise, draw_noise, guided_noise, strength_start
from .preflight import check_generator
from .text import check_prompt_list, encode_prompts

MASK_OUTPUT_TYPES = ("np", "pil", "pt")
IMAGE_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class DiffEditInversionOutput(BaseOutput):
    """What `invert` returns (diffusers' DiffEditInversionPipelineOutput): latents (B, K, C, h, w), the
    image at the K levels an edit of that strength visits, noisiest first; images, when
    decode_latents, the B * K decoded levels (a list of PIL images, or an (B * K, H, W, 3) array), else None."""

    latents: torch.Tensor
    images: list | np.ndarray | None


@dataclass
class PipelineModel(DiffEditModel):
    "The lesson's model view of a pipeline's components, on the pipeline's execution device (CPU offload moves the modules)."

    execution_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.execution_device if self.execution_device is not None else self.unet.device


# ----------------------------------------------------------------------------- checks
def check_fraction(name: str, value, low_open: bool = False) -> float:
    "A number in [0, 1] ((0, 1] when `low_open`), named in the error."
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_runs_a_step(strength: float, steps: int):
    "int(steps * inpaint_strength) steps run (diffusers' rule): at least one must."
    if int(steps * strength) < 1:
        raise ValueError(f"inpaint_strength={strength:g} runs no step of num_inference_steps={steps}: "
                         f"use at least {1 / steps:g}, or more steps")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_unsupported(**given):
    "Arguments of the deprecated pipeline this one does not run: refused unless left at their defaults."
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name} is not supported by DiffEditPipeline (leave it None)")


def check_output_type(value, accepted: tuple) -> str:
    if value not in accepted:
        raise ValueError(f"output_type must be one of {accepted}, got {value!r}")
    return value


def check_one_generator(generator):
    "`preflight.check_generator`, and diffusers' lists of generators refused by name."
    if isinstance(generator, list):
        raise ValueError("generator must be one torch.Generator or None; lists of generators are not supported")
    check_generator(generator)


# ----------------------------------------------------------------------------- masks in and out
def latent_masks(mask_image, batch: int, latent_size: tuple[int, int], scale_factor: int) -> torch.Tensor:
    """`mask_image` as (batch, 1, h, w) float32 in {0, 1}, binarised at 0.5 (diffusers' rule).

    Accepted: an array or tensor (h, w), (B, h, w) or (B, 1, h, w) of bools, 0/1 integers or floats in
    [0, 1]; a PIL image or a list of them ("L", 255 inside); a list of arrays. At the latent size
    (h, w) it is used as it is; at the image's size (h * f, w * f) a cell is inside if any of its
    pixels is (`mask.latent_mask`). One mask is shared by the whole batch."""
    items = mask_image if isinstance(mask_image, list) else [mask_image]
    planes = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            item = mask_levels(item, "mask_image")
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        planes += list(arr) if arr.ndim == 3 else [arr]
    if any(p.ndim != 2 for p in planes):
        raise ValueError("mask_image must be (h, w), (B, h, w) or (B, 1, h, w), or a list of (h, w) masks")
    if len(planes) not in (1, batch):
        raise ValueError(f"mask_image holds {len(planes)} masks; give one, or one per image ({batch})")
    h, w = latent_size
    out = []
    for p in planes:
        m = _binarise(p, "mask_image")
        if m.shape == (h * scale_factor, w * scale_factor):
            m = latent_mask(m, (h, w))[0, 0].numpy() > 0.5
        elif m.shape != (h, w):
            raise ValueError(f"mask_image is {m.shape[1]}x{m.shape[0]}, but it must be at the latent size {w}x{h} "
                             f"(generate_mask's) or at the image's size {w * scale_factor}x{h * scale_factor}")
        out.append(torch.from_numpy(m.astype(np.float32)))
    masks = torch.stack(out)[:, None]  # (1 or B, 1, h, w)
    return masks.expand(batch, -1, -1, -1)


def prompt_count(prompt, prompt_embeds) -> int:
    "How many prompts a call has (B), before any is encoded: a list's length, else 1, or the embeddings' batch."
    if prompt is None and prompt_embeds is None:
        raise ValueError("give either prompt or prompt_embeds (exactly one)")
    if prompt is None:
        return len(prompt_embeds)
    return len(prompt) if isinstance(prompt, (list, tuple)) else 1


def mask_output(masks: np.ndarray, output_type: str):
    "(B, h, w) float32 masks in {0, 1} as output_type: \"np\" int64 (B, h, w), \"pt\" a tensor of it, \"pil\" B \"L\" images (255 inside)."
    if output_type == "pil":
        return [PIL.Image.fromarray(m.astype(np.uint8) * 255) for m in masks]
    arr = masks.astype(np.int64)
    return torch.from_numpy(arr) if output_type == "pt" else arr


# ----------------------------------------------------------------------------- the pipeline
class DiffEditPipeline(DiffusionPipeline):
    """DiffEdit with diffusers' API: a drop-in for `StableDiffusionDiffEditPipeline` (Stable Diffusion
    1.x and 2.x, epsilon or v-prediction), the same components and the same three calls:
    `generate_mask`, `invert`, `__call__`.

    Equal to the deprecated pipeline where it is right (on the same components, inputs and seeded
    generator): the same mask, the same inverted latents, with a full mask the same image.
    Deliberate differences:
      - the blend pastes the background at the level the latents have just reached, and the clean
        latents after the last step (the deprecated pipeline pastes one level behind, so its
        background never comes back clean). The clean latents are the image `invert` encoded, when
        `image_latents` are the latents this pipeline's last `invert` returned; otherwise the
        least noisy level given stands in for them;
      - `__call__`'s inpaint_strength may be smaller than `invert`'s (diffusers #5465): the edit
        starts lower on the inverted levels; a larger one is refused with an error naming it;
      - generate_mask(output_type="pil") works (a list of "L" images, 255 inside), and `mask_image`
        may be at the image's size as well as the latent grid's;
      - the mask runs 2n UNet samples for n maps, not 4n (guidance cancels from the difference when
        source and target share their negative prompt; else 4n); each image is VAE-encoded once;
        each image of a batch is thresholded against its own mean;
      - refused with an error: cross_attention_kwargs, clip_skip, `latents` in `__call__`,
        num_reg_steps > 0, lists of generators.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "inverse_scheduler"]
    _exclude_from_cpu_offload = ["safety_checker"]

    # the diffusers models are annotated: from_pipe carries a model over only when its class matches
    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler,
                 safety_checker=None, feature_extractor=None, inverse_scheduler: DDIMInverseScheduler | None = None,
                 requires_safety_checker: bool = True):
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker needs a feature_extractor; pass both, or safety_checker=None")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              inverse_scheduler=inverse_scheduler)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._inverted = None  # (the latents the last `invert` returned, the clean latents they came from)

    # --------------------------------------------------------------------- shared steps
    def lesson_model(self) -> PipelineModel:
        "The components as the lesson's model (shared, not copied), on the execution device."
        model = PipelineModel.from_pipe(self)
        model.execution_device = self._execution_device
        return model

    def prompt_embeddings(self, model, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, name: str,
                          repeat: int = 1, size=None):
        """(cond, uncond) embeddings, (B * repeat, L, D) each, each prompt's rows together: from the
        prompts (an empty negative prompt by default) or the embeddings given. On SDXL (`text.XLEmbeddings`)
        the time ids say the image is `size` = (H, W); SDXL takes prompts only."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(f"give either {name} or {name}_embeds (exactly one)")
        if model.is_xl and (prompt_embeds is not None or negative_prompt_embeds is not None):
            raise ValueError(f"{name}_embeds are not supported on SDXL (its conditioning has pooled embeddings and time "
                             f"ids too): give {name}")
        if prompt is not None:
            prompts = check_prompt_list(prompt, name)
            cond = encode_prompts(model, prompts, names=[name] * len(prompts), size=size)
        else:
            cond = prompt_embeds.to(device=model.device, dtype=model.dtype)
        b = len(cond)
        if negative_prompt_embeds is not None:
            uncond = negative_prompt_embeds.to(device=model.device, dtype=model.dtype)
        else:
            negs = [""] * b if negative_prompt is None else check_prompt_list(negative_prompt, f"negative prompt of {name}")
            if len(negs) == 1 and b > 1:
                negs = negs * b
            if len(negs) != b:
                raise ValueError(f"the negative prompts of {name} must be one, or one per prompt ({b})")
            uncond = encode_prompts(model, negs, names=["negative_prompt"] * b, size=size)
        rows = torch.arange(b, device=model.device).repeat_interleave(repeat)
        return cond[rows], uncond[rows]

    def pixels_of(self, image) -> torch.Tensor:
        "The image(s) as (1 or B, 3, H, W) in [-1, 1], sides made multiples of the VAE factor (diffusers' VaeImageProcessor)."
        if image is None:
            raise ValueError("image must be given (a PIL image, an array or a tensor)")
        return self.image_processor.preprocess(image)

    def image_latents_of(self, model, pixels, batch: int, n: int, generator) -> torch.Tensor:
        """Pixels (1 or B, 3, H, W) -> n VAE posterior draws per prompt: (batch * n, C, h, w), prompt b's in rows
        b * n ... One image serves every prompt with the same n draws (as the deprecated pipeline repeats them)."""
        if len(pixels) not in (1, batch):
            raise ValueError(f"image holds {len(pixels)} images; give one, or one per prompt ({batch})")
        draws = encode_samples(model, pixels, n, generator)  # (len(pixels) * n, C, h, w)
        # one image for B prompts: its draws repeated (only then copied: the copy changes their memory layout)
        return draws if batch == len(pixels) else draws.repeat(batch, 1, 1, 1)

    def progress(self) -> bool:
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)

    # --------------------------------------------------------------------- 1. the mask
    @torch.no_grad()
    def generate_mask(self, image=None, target_prompt=None, target_negative_prompt=None, target_prompt_embeds=None,
                      target_negative_prompt_embeds=None, source_prompt=None, source_negative_prompt=None,
                      source_prompt_embeds=None, source_negative_prompt_embeds=None, num_maps_per_mask: int = 10,
                      mask_encode_strength: float = 0.5, mask_thresholding_ratio: float = 3.0,
                      num_inference_steps: int = 50, guidance_scale: float = 7.5, generator=None,
                      output_type: str = "np", cross_attention_kwargs=None):
        """Step 1: where the source and target prompts disagree, on the latent grid.

        The image is noised to `mask_encode_strength` with `num_maps_per_mask` independent draws; the
        UNet's predictions under the two prompts differ most where the image must change. Their mean
        absolute difference is clamped at mask_thresholding_ratio x its mean, divided by it and kept
        where above 0.5 (`mask.ratio_mask`). Returns (B, h, w) int64 in {0, 1} ("np"), a tensor of it
        ("pt"), or B "L" images of (w, h), 255 inside ("pil"); h, w = H / f, W / f.
        """
        # 1. check the arguments, before any model work
        check_positive_int("num_maps_per_mask", num_maps_per_mask)
        check_positive_int("num_inference_steps", num_inference_steps)
        check_fraction("mask_encode_strength", mask_encode_strength, low_open=True)
        if not isinstance(mask_thresholding_ratio, (int, float)) or isinstance(mask_thresholding_ratio, bool) \
                or not 0 < mask_thresholding_ratio < float("inf"):
            raise ValueError(f"mask_thresholding_ratio must be a number > 0, got {mask_thresholding_ratio!r}")
        check_output_type(output_type, MASK_OUTPUT_TYPES)
        check_unsupported(cross_attention_kwargs=cross_attention_kwargs)
        check_one_generator(generator)
        model, n = self.lesson_model(), num_maps_per_mask
        pixels = self.pixels_of(image)
        # 2. prompts -> (B * n, L, D) each
        size = tuple(pixels.shape[-2:])
        tgt, tgt_neg = self.prompt_embeddings(model, target_prompt, target_negative_prompt, target_prompt_embeds,
                                              target_negative_prompt_embeds, "target_prompt", n, size)
        src, src_neg = self.prompt_embeddings(model, source_prompt, source_negative_prompt, source_prompt_embeds,
                                              source_negative_prompt_embeds, "source_prompt", n, size)
        if len(src) == n and len(tgt) > n:  # one source prompt for every target prompt
            src, src_neg = (e[torch.arange(n, device=model.device).repeat(len(tgt) // n)] for e in (src, src_neg))
        if len(src) != len(tgt):
            raise ValueError(f"source_prompt and target_prompt must be as many, or one source prompt "
                             f"({len(src) // n} and {len(tgt) // n})")
        batch = len(tgt) // n
        # 3. n posterior draws per image, noised to the mask level: (B * n, C, h, w)
        self.scheduler.set_timesteps(num_inference_steps, device=model.device)
        t = self.scheduler.timesteps[strength_start(num_inference_steps, mask_encode_strength)]
        latents = self.image_latents_of(model, pixels, batch, n, generator)
        noise = draw_noise(latents.shape, generator, latents.device, latents.dtype)
        noisy = add_noise(self.scheduler, latents, noise, t)
        # 4. the prompts' difference, (B * n, C, h, w) -> one map per image (B, h, w)
        if guidance_scale > 1 and not torch.equal(src_neg, tgt_neg):  # guidance does not cancel: both guided
            diff = (guided_noise(model, noisy, t, tgt, tgt_neg, guidance_scale)
                    - guided_noise(model, noisy, t, src, src_neg, guidance_scale)).float()
        else:
            diff = prompt_difference(model, noisy, t, src, tgt)
        maps = diff.abs().reshape(batch, n, *diff.shape[1:]).mean(dim=(1, 2))  # (B, h, w)
        # 5. clamp, scale, threshold: (B, h, w) in {0, 1}
        masks = np.stack([ratio_mask(m.cpu(), mask_thresholding_ratio) for m in maps])
        self.maybe_free_model_hooks()
        return mask_output(masks, output_type)

    # --------------------------------------------------------------------- 2. the inversion
    @torch.no_grad()
    def invert(self, prompt=None, image=None, num_inference_steps: int = 50, inpaint_strength: float = 0.8,
               guidance_scale: float = 7.5, negative_prompt=None, generator=None, prompt_embeds=None,
               negative_prompt_embeds=None, decode_latents: bool = False, output_type: str = "pil",
               return_dict: bool = True, callback=None, callback_steps: int = 1, cross_attention_kwargs=None,
               lambda_auto_corr: float = 20.0, lambda_kl: float = 20.0, num_reg_steps: int = 0,
               num_auto_corr_rolls: int = 5):
        """Step 2: DDIM-invert the image under `prompt`, with the pipeline's inverse scheduler.

        Runs int(num_inference_steps * inpaint_strength) inverse steps from the image's latents (one
        VAE posterior draw) and returns every level reached: latents (B, K, C, h, w), noisiest first,
        so latents[:, 0] is where an edit of that strength starts. `DiffEditInversionOutput`, or
        (latents, images) with return_dict=False.
        """
        # 1. check the arguments, before any model work
        check_positive_int("num_inference_steps", num_inference_steps)
        check_fraction("inpaint_strength", inpaint_strength, low_open=True)
        check_runs_a_step(inpaint_strength, num_inference_steps)
        check_positive_int("callback_steps", callback_steps)
        check_output_type(output_type, ("pil", "np"))
        check_unsupported(cross_attention_kwargs=cross_attention_kwargs)
        if num_reg_steps != 0:
            raise ValueError(f"num_reg_steps must be 0: the inversion's noise regularisation is not supported, got {num_reg_steps!r}")
        check_one_generator(generator)
        model = self.lesson_model()
        pixels = self.pixels_of(image)
        # 2. the image's latents (B, C, h, w) and the prompts' embeddings (B, L, D)
        cond, uncond = self.prompt_embeddings(model, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                              "prompt", 1, tuple(pixels.shape[-2:]))
        x = self.image_latents_of(model, pixels, len(cond), 1, generator)
        clean = x
        # 3. up the levels with the inverse scheduler: the K least noisy timesteps, least noisy first
        inverse = self.inverse_or_default()
        inverse.set_timesteps(num_inference_steps, device=model.device)
        k = num_inference_steps - strength_start(num_inference_steps, inpaint_strength)
        levels = []
        for i, t in enumerate(self.progress_bar(inverse.timesteps[:k]) if self.progress() else inverse.timesteps[:k]):
            out = guided_noise(model, inverse.scale_model_input(x, t), t, cond, uncond, guidance_scale)
            x = inverse.step(out, t, x).prev_sample
            levels.append(x)
            if callback is not None and i % callback_steps == 0:
                callback(i, t, x)
        latents = torch.stack(levels[::-1], dim=1)  # (B, K, C, h, w), noisiest first
        self._inverted = (latents, clean)
        # 4. the levels as pictures, when asked
        images = None
        if decode_latents:
            pixels = decode_pixels(model, latents.flatten(0, 1))
            images = self.image_processor.postprocess(pixels, output_type=output_type)
        self.maybe_free_model_hooks()
        return DiffEditInversionOutput(latents=latents, images=images) if return_dict else (latents, images)

    def inverse_or_default(self):
        "The inverse scheduler; without one, DDIM's inverse built from the scheduler's config."
        if self.inverse_scheduler is None:
            return DDIMInverseScheduler.from_config(self.scheduler.config)
        return self.inverse_scheduler

    # --------------------------------------------------------------------- 3. the edit
    @torch.no_grad()
    def __call__(self, prompt=None, mask_image=None, image_latents=None, inpaint_strength: float = 0.8,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type: str = "pil", return_dict: bool = True, callback=None,
                 callback_steps: int = 1, cross_attention_kwargs=None, clip_skip=None, callback_on_step_end=None):
        """Step 3: denoise from the inverted latents towards `prompt`, inside `mask_image` only.

        image_latents: `invert`'s latents (B, K, C, h, w) (or (B * K, C, h, w)). The edit runs the last
        int(num_inference_steps * inpaint_strength) steps, which must be at most K. Returns
        StableDiffusionPipelineOutput(images, nsfw_content_detected), or that tuple with
        return_dict=False; images as output_type ("pil", "np" (N, H, W, 3), "pt", "latent").
        callback_on_step_end(pipe, step, timestep, {"latents": ...}) -> dict, diffusers' newer hook (not
        in the deprecated pipeline): a "latents" entry in what it returns replaces them, and
        `pipe._interrupt = True` stops the denoising early (`DiffusersStepEnd`).
        """
        # 1. check the arguments, before any model work
        check_positive_int("num_inference_steps", num_inference_steps)
        check_positive_int("num_images_per_prompt", num_images_per_prompt)
        check_positive_int("callback_steps", callback_steps)
        check_fraction("inpaint_strength", inpaint_strength, low_open=True)
        check_runs_a_step(inpaint_strength, num_inference_steps)
        check_output_type(output_type, IMAGE_OUTPUT_TYPES)
        check_unsupported(cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip, latents=latents)
        check_one_generator(generator)
        if mask_image is None:
            raise ValueError("mask_image must be given: compute it with generate_mask()")
        if image_latents is None:
            raise ValueError("image_latents must be given: compute them with invert()")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"callback_on_step_end must be a function or None, got {type(callback_on_step_end).__name__}")
        model = self.lesson_model()
        # 2. the levels: backgrounds[k] at the level of timesteps[k], the clean latents last; checked before model work
        r, batch = num_images_per_prompt, prompt_count(prompt, prompt_embeds)
        self.scheduler.set_timesteps(num_inference_steps, device=model.device)
        k0 = strength_start(num_inference_steps, inpaint_strength)
        backgrounds = self.background_levels(image_latents, batch, num_inference_steps, k0)
        backgrounds = [b if b is None else b.to(model.device, model.dtype).repeat_interleave(r, dim=0) for b in backgrounds]
        # 3. the mask (B * r, 1, h, w)
        h, w = backgrounds[-1].shape[-2:]
        mask = latent_masks(mask_image, batch, (h, w), self.vae_scale_factor)
        mask = mask.repeat_interleave(r, dim=0).to(model.device, model.dtype)
        # 4. the prompts (B * r, L, D)
        size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        cond, uncond = self.prompt_embeddings(model, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                              "prompt", r, size)
        # 5. masked denoising towards the prompt
        step = None if callback is None else (lambda i, t, x: callback(i, t, x) if i % callback_steps == 0 else None)
        step_kwargs = {"eta": eta, "generator": generator} if eta else None
        step_end = None if callback_on_step_end is None else DiffusersStepEnd(self, callback_on_step_end)
        x = masked_denoise(model, backgrounds[k0], backgrounds, mask, cond, uncond, self.scheduler, k0,
                           guidance_scale, step, self.progress(), step_end, step_kwargs)
        # 6. back to pixels
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return StableDiffusionPipelineOutput(images=x, nsfw_content_detected=None) if return_dict else (x, None)
        pixels = decode_pixels(model, x)  # (N, 3, H, W) in [-1, 1]
        pixels, nsfw = self.run_safety_checker(pixels)
        keep = None if nsfw is None else [not flagged for flagged in nsfw]
        images = self.image_processor.postprocess(pixels, output_type=output_type, do_denormalize=keep)
        self.maybe_free_model_hooks()
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw) if return_dict else (images, nsfw)

    def background_levels(self, image_latents, batch: int, steps: int, k0: int) -> list:
        """`invert`'s K levels placed on the scheduler's steps: [k] at the level of timesteps[k] for
        k >= steps - K (None before), then the clean latents (the image `invert` encoded, when these
        are its latents; else the least noisy level given)."""
        levels = torch.cat(list(image_latents)) if isinstance(image_latents, list) else image_latents
        if not isinstance(levels, torch.Tensor) or levels.ndim not in (4, 5):
            raise ValueError("image_latents must be invert()'s latents: a tensor (B, K, C, h, w)")
        if levels.ndim == 4:
            levels = levels.reshape(batch, -1, *levels.shape[1:])  # (B, K, C, h, w)
        if levels.shape[0] != batch or levels.shape[2] != self.unet.config.in_channels:
            raise ValueError(f"image_latents must be (B, K, C, h, w) with B = {batch} prompts and "
                             f"C = {self.unet.config.in_channels}, got {tuple(levels.shape)}")
        k = levels.shape[1]
        if k > steps:
            raise ValueError(f"image_latents hold {k} levels, more than num_inference_steps={steps}: invert and the "
                             f"edit must use the same num_inference_steps")
        if k0 < steps - k:
            raise ValueError(f"inpaint_strength asks for {steps - k0} of {steps} steps, but image_latents hold {k} "
                             f"levels: use an inpaint_strength of at most {k / steps:g}, or invert with a larger one")
        inverted, clean = self._inverted if self._inverted is not None else (None, None)
        if clean is None or inverted.shape != levels.shape or not torch.equal(inverted.to(levels.device), levels):
            clean = levels[:, -1]
        return [None] * (steps - k) + list(levels.unbind(dim=1)) + [clean]

    def run_safety_checker(self, pixels):
        "(pixels, nsfw flags): without a safety checker, the pixels as they are and None."
        if getattr(self, "safety_checker", None) is None:  # (SDXL has none)
            return pixels, None
        pil = self.image_processor.postprocess(pixels, output_type="pil")
        features = self.feature_extractor(pil, return_tensors="pt").to(pixels.device)
        checked, nsfw = self.safety_checker(images=pixels, clip_input=features.pixel_values.to(pixels.dtype))
        return checked, nsfw


class DiffEditXLPipeline(DiffEditPipeline):
    """DiffEdit for Stable Diffusion XL with the same three calls and arguments as `DiffEditPipeline`
    (the first DiffEdit for SDXL): `generate_mask`, `invert`, `__call__`. The components are
    `StableDiffusionXLPipeline`'s (two text encoders and tokenizers; no safety checker) plus the
    inverse scheduler, so `DiffEditXLPipeline.from_pretrained(sdxl_folder, scheduler=DDIMScheduler...,
    inverse_scheduler=DDIMInverseScheduler...)` and `from_pipe(sdxl_pipe)` load it. The UNet is
    conditioned as diffusers' SDXL pipelines condition it (`text.encode_prompts_xl`): both encoders'
    penultimate states, the pooled projection, and time ids for the image's own size; with
    `force_zeros_for_empty_prompt` (SDXL's default) the empty negative prompt is zeros. Prompts only
    (prompt_embeds are refused). The differences from the deprecated SD pipeline are `DiffEditPipeline`'s.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["inverse_scheduler"]
    _exclude_from_cpu_offload = []

    def __init__(self, vae: AutoencoderKL, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                 unet: UNet2DConditionModel, scheduler, inverse_scheduler: DDIMInverseScheduler | None = None,
                 force_zeros_for_empty_prompt: bool = True):
        DiffusionPipeline.__init__(self)
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, inverse_scheduler=inverse_scheduler)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._inverted = None


class DiffusersStepEnd:
    """Our step_end(step, timestep, latents) -> latents from diffusers' callback_on_step_end(pipe,
    step, timestep, callback_kwargs) -> dict: callback_kwargs is {"latents": latents}, and a
    "latents" entry in the dict it returns replaces them (a tensor of the same shape, finite; moved
    to their device and dtype). `pipe._interrupt = True`, set by the callback, stops the denoising
    after that step as in diffusers (`interrupted`): the latents reached are decoded. Recipes that
    change guidance or the prompts mid-run (`pipe._guidance_scale`, "prompt_embeds" in the dict
    returned) are refused: DiffEdit's guidance is fixed for the whole edit."""

    def __init__(self, pipe, callback_on_step_end):
        self.pipe, self.callback = pipe, callback_on_step_end
        pipe._interrupt = False

    @property
    def interrupted(self) -> bool:
        return bool(getattr(self.pipe, "_interrupt", False))

    def __call__(self, step, timestep, latents):
        guidance = vars(self.pipe).get("_guidance_scale")
        out = self.callback(self.pipe, step, timestep, {"latents": latents})
        if not isinstance(out, dict):
            raise TypeError(f"callback_on_step_end must return a dict (diffusers' convention), got {type(out).__name__}")
        if vars(self.pipe).get("_guidance_scale") != guidance or set(out) - {"latents"}:
            changed = sorted(set(out) - {"latents"}) or ["pipe._guidance_scale"]
            raise ValueError(f"callback_on_step_end changed {', '.join(changed)}: changing guidance or the prompts during the "
                             f"edit is not supported (guidance is guidance_scale for the whole edit); return only "
                             f"{{'latents': ...}}, or set pipe._interrupt = True to stop early")
        new = out.get("latents", latents)
        if not isinstance(new, torch.Tensor):
            raise TypeError(f"callback_on_step_end must return latents as a torch.Tensor of shape {tuple(latents.shape)}, "
                            f"got {type(new).__name__}")
        if new.shape != latents.shape:
            raise ValueError(f"callback_on_step_end returned latents of shape {tuple(new.shape)}; "
                             f"they must keep the shape {tuple(latents.shape)}")
        if not torch.isfinite(new).all():
            raise ValueError(f"callback_on_step_end returned latents holding NaN or inf at step {step}")
        return new.to(device=latents.device, dtype=latents.dtype)
