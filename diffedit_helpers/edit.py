"""Steps 2 and 3 of DiffEdit, and `diffedit`, which runs all three: encode the image to a
noise level (noised, or DDIM-inverted), then denoise it towards the target prompt inside the
mask while the outside follows the original image. Step 1, the mask, is `mask`.

    diffedit(model, image, "a brown horse on grass", "a zebra on grass", config, generator)

At every denoising step, after the scheduler moves the latents from level t to the next,
lower level t', the latents outside the mask are replaced by the original image's latents
at that same level t' (and by the clean latents after the last step), so the background
ends exactly where it started.

`diffedit` names its stages (STAGES) for profilers, as `torch.profiler.record_function`
ranges "diffedit/<stage>", and for an optional `on_stage(stage, event)` hook ("start" or
"end"), which is how the benchmarks time them. With a mask the caller brings (`mask=`), the
"mask" stage still runs, but does no model work: it only takes that mask.

`diffedit` speaks the lesson's vocabulary (a DiffEditConfig's fields); diffusers' argument names
are `pipeline.DiffEditPipeline`'s, and a picture that must be resized or cropped first goes through
`inputs.fit_inputs`. Its result has diffusers' `.images` list and a `mask_image` inpainting pipelines accept.
Taught in notebooks 06_masked_denoising and 07_limits_and_extensions (inversion, compositing).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .config import DiffEditConfig, DiffEditWarning
from .latents import decode_to_images, encode_image
from .mask import blur_mask, check_finite, latent_mask, make_mask, mask_maps, raw_difference, user_mask
from .models import as_model
from .noising import add_noise, alpha_bar, draw_noise, generator_streams, guided_noise, make_scheduler, to_epsilon
from .preflight import check_callables, check_edit_inputs, check_generator, check_model, checked_config, prepare_inputs
from .text import encode_prompts

# the stages of one edit, in order (encoding: inversion or noising to the start level)
STAGES = ("encode", "text", "mask", "encoding", "denoising", "decode", "composite")


@dataclass
class DiffEditResult:
    "What one edit produced; arrays are at image resolution."

    image: Image.Image  # the edited image
    mask: np.ndarray  # (H, W) bool: where the image was allowed to change
    difference_map: np.ndarray  # (H, W) float32 in [0, 1]: the map the mask is thresholded from
    input_image: Image.Image
    source_prompt: str
    target_prompt: str
    config: DiffEditConfig = field(default_factory=DiffEditConfig)
    raw_map: np.ndarray | None = None  # (H, W) float32 in [0, 1]: the same before refinement (None: the caller's mask)

    @property
    def mask_image(self) -> Image.Image:
        """The mask as a PIL "L" image, 255 inside and 0 outside (diffusers' inpainting pipelines take it as it is)."""
        return Image.fromarray(self.mask.astype(np.uint8) * 255)  # (H, W) uint8: mode "L"

    @property
    def images(self) -> list:
        "[the edited image], as diffusers' pipelines return it."
        return [self.image]


class DiffEditResults(list):
    "The results of a batch, one per image, in order; `.images` holds every edited image (diffusers' shape)."

    @property
    def images(self) -> list:
        return [r.images[0] for r in self]


@torch.no_grad()
def ddim_invert(model, latents, embeddings, scheduler, start_index: int = 0, uncond=None, guidance: float = 1.0,
                progress: bool = False) -> list[torch.Tensor]:
    """Deterministic DDIM inversion: run the sampler backwards from the clean latents.

    latents: (B, C, h, w) clean. Returns `trajectory` with trajectory[k] the latents at the
    level of scheduler.timesteps[k] for k >= start_index (earlier entries are None), and
    trajectory[-1] the clean latents; trajectory[start_index] is where the edit starts.
    """
    from tqdm.auto import tqdm

    ts = scheduler.timesteps
    n = len(ts)
    traj: list = [None] * n + [latents]
    x = latents
    a_cur = scheduler.final_alpha_cumprod.float()  # the level the sampler ends on
    # 1. walk the levels upwards: ts[n-1] (least noisy) ... ts[start_index]
    for k in tqdm(range(n - 1, start_index - 1, -1), desc="DDIM inversion", disable=not progress, leave=False):
        t = int(ts[k])
        a_next = alpha_bar(scheduler, t)
        out = guided_noise(model, x, t, embeddings, uncond, guidance)
        eps = to_epsilon(out.float(), x.float(), a_next, model.prediction_type)
        # 2. the clean image the model sees, then the same noise at the next level up
        x0 = (x.float() - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
        x = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(latents.dtype)
        traj[k] = x
        a_cur = a_next
    return traj


@torch.no_grad()
def masked_denoise(model, latents, backgrounds, mask, cond, uncond, scheduler, start_index: int = 0,
                   guidance: float = 7.5, callback=None, progress: bool = False, step_end=None,
                   step_kwargs: dict | None = None) -> torch.Tensor:
    """Denoise `latents` (B, C, h, w) from scheduler.timesteps[start_index] to clean, editing
    only inside `mask` (1, 1, h, w) in {0, 1}.

    backgrounds[k] holds the original latents at the level of timesteps[k] and
    backgrounds[-1] the clean latents: after the step from timesteps[k] the outside of the
    mask is set to backgrounds[k + 1], the level the latents have just reached.
    step_end(step, timestep, latents) -> latents, if given, is called after each step and what it
    returns replaces the latents (diffusers' callback_on_step_end); then callback(step, timestep,
    latents) is called. A step_end whose `interrupted` is true stops the loop (diffusers' pipe._interrupt).
    step_kwargs go to every scheduler.step (e.g. DDIM's eta and generator); any scheduler that steps
    from timesteps[k] to timesteps[k + 1] works (its scale_model_input is applied).
    """
    from tqdm.auto import tqdm

    ts = scheduler.timesteps
    x = latents
    for k in tqdm(range(start_index, len(ts)), desc="DiffEdit", disable=not progress, leave=False):
        if getattr(step_end, "interrupted", False):  # diffusers' pipe._interrupt: stop, keep the latents reached
            break
        t = ts[k]
        # 1. predict the noise towards the target prompt (classifier-free guidance)
        eps = guided_noise(model, scheduler.scale_model_input(x, t), t, cond, uncond, guidance)
        # 2. one DDIM step down to the next level
        x = scheduler.step(eps, t, x, **(step_kwargs or {})).prev_sample
        # 3. outside the mask, the original at that same next level (clean after the last step)
        x = mask * x + (1 - mask) * backgrounds[k + 1]
        if step_end is not None:
            x = step_end(k - start_index, t, x)
        if callback is not None:
            callback(k - start_index, int(t), x)
    return x


def noised_backgrounds(scheduler, latents, noise, start_index: int) -> list:
    "Original latents noised with one fixed `noise` to every level from start_index on; clean last."
    ts = scheduler.timesteps
    levels = [None] * start_index + [add_noise(scheduler, latents, noise, t) for t in ts[start_index:]]
    return levels + [latents]


def feather_alpha(mask: np.ndarray, feather: int = 5, inside: bool = False) -> np.ndarray:
    """The composite's blend weight, (H, W) float32 in [0, 1]: 1 on the mask, falling to 0
    within `feather` pixels outside it (a Gaussian blur of the mask, never below the mask).
    inside=True feathers within the mask instead (the blur, never above the mask): 0 everywhere
    outside it, so a mask the caller brings is kept to the pixel."""
    m = np.asarray(mask, dtype=np.float32)
    return np.minimum(m, blur_mask(m, feather)) if inside else np.maximum(m, blur_mask(m, feather))


def composite(image: Image.Image, edited: Image.Image, mask: np.ndarray, feather: int = 5,
              inside: bool = False) -> Image.Image:
    """Paste the edit into the input through the feathered mask (`feather_alpha`, feathered
    within the mask when `inside`): where the weight is 0 the pixels are the input's, exactly."""
    alpha = feather_alpha(mask, feather, inside)[..., None]  # (H, W, 1)
    src = np.asarray(image, dtype=np.float32)
    out = src + alpha * (np.asarray(edited, dtype=np.float32) - src)
    out = np.where(alpha > 0, out, src)
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


@contextlib.contextmanager
def stage(name: str, on_stage=None):
    """One named stage of the pipeline: a `torch.profiler.record_function("diffedit/<name>")`
    range, and on_stage(name, "start") / on_stage(name, "end") around it when a hook is given."""
    with torch.profiler.record_function(f"diffedit/{name}"):
        if on_stage is None:
            yield
            return
        on_stage(name, "start")
        try:
            yield
        finally:
            on_stage(name, "end")


def diffedit(model, image, source_prompt, target_prompt, config: DiffEditConfig | None = None,
             generator: torch.Generator | None = None, *, mask=None, callback=None, on_stage=None, progress: bool = True):
    """Edit `image` from `source_prompt` to `target_prompt` where the two disagree.

    model: a DiffEditModel (`load_model`) or a loaded diffusers StableDiffusionPipeline (or
        StableDiffusionXLPipeline).
    image: a path, an http(s) URL, a PIL image, an array or a torch tensor (or a list of them:
        a batch, each with its own mask; prompts and masks may then be lists too). Sides must be
        multiples of the VAE scale factor: `inputs.fit_inputs` resizes or crops a picture (and its
        mask) first.
    source_prompt: may be empty (""): the map is then taken against the unconditional prediction.
    config: the edit's settings (`DiffEditConfig`; None: the model's defaults, `DiffEditConfig.for_model`).
    generator: a torch.Generator for the noise; the same seed gives the same result. It seeds two
        independent streams (`noising.generator_streams`), one for the mask's noise draws and one
        for the edit's, so n_noise or mask_strength never change the edit's noise. In a batch,
        every image starts from the generator's state, so it gets the result it would get alone.
    mask: the caller's own mask instead of step 1: a bool array (H, W) at the image's size, a
        float array in [0, 1] (binarised at 0.5: values >= 0.5 are inside), a PIL "L" image, or a
        path to one (`mask.user_mask`); checked before any model work. The "mask" stage then runs
        no model; the edit keeps to the mask exactly: with composite on, the feather lies inside it
        and every pixel outside it is the input's.
    callback(step, timestep, latents): called after every denoising step (previews).
    on_stage(stage, event): called with event "start" and "end" around each of STAGES.
    progress: show progress bars.
    diffusers' argument names (num_inference_steps, guidance_scale, output_type, ...) are
    `DiffEditPipeline`'s; here the settings are the config's fields.
    Returns a DiffEditResult (DiffEditResults, a list of them, for a list of images).
    """
    model = as_model(model)
    config = checked_config(config, model)
    check_generator(generator)
    check_model(model, config.steps)
    check_callables(callback=callback, on_stage=on_stage)
    batch = isinstance(image, (list, tuple))
    images = list(image) if batch else [image]
    n = len(images)
    if n == 0:
        raise ValueError("image: an empty list holds no image to edit; pass an image, or a list of one or more")
    srcs, tgts = (per_image(p, n, batch, "source_prompt and target_prompt", "prompt") for p in (source_prompt, target_prompt))
    masks = per_image(mask, n, batch, "mask")
    prepared = []  # every check first, for the whole batch
    for im, s, t, m in zip(images, srcs, tgts, masks):
        im, _ = check_edit_inputs(model, im, s, t, config, "error", has_mask=m is not None)
        if m is not None:
            m = user_mask(m, (im.height, im.width))
            if not m.any():
                warnings.warn("mask is empty (nothing inside it): the image is returned unchanged", DiffEditWarning,
                              stacklevel=2)
        prepared.append((im, m))
    state = generator.get_state() if generator is not None else None
    results = DiffEditResults()
    for (im, m), s, t in zip(prepared, srcs, tgts):
        if state is not None:
            generator.set_state(state)
        results.append(_diffedit_one(model, im, s, t, config, generator, callback, progress, on_stage, m))
    return results if batch else results[0]


def per_image(value, n: int, batch: bool, name: str, what: str = "entry") -> list:
    "One value per image: a list of n for a batch (anything else is shared by all n)."
    if batch and isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} lists must have one {what} per image ({n})")
        return list(value)
    return [value] * n


@torch.no_grad()
def difference_map(model, image, source_prompt, target_prompt, config: DiffEditConfig | None = None,
                   generator: torch.Generator | None = None, fit: str = "error", on_stage=None,
                   max_side: int | None = None) -> np.ndarray:
    """Step 1 alone: the (H, W) float32 map in [0, 1] that `diffedit` thresholds into its mask
    (with the same generator state, the same map: both draw from its mask stream). Checks its
    inputs as `diffedit` does."""
    model, image, config, mask_generator, (x0, src, tgt) = _step_one_inputs(
        model, image, source_prompt, target_prompt, config, generator, fit, max_side, on_stage)
    with stage("mask", on_stage):
        return mask_maps(model, image, x0, src, tgt, make_scheduler(model, config.steps), config, mask_generator)[1]


@torch.no_grad()
def latent_difference(model, image, source_prompt, target_prompt, config: DiffEditConfig | None = None,
                      generator: torch.Generator | None = None, fit: str = "error", max_side: int | None = None) -> torch.Tensor:
    """Step 1 on the latent grid, before any scaling: the (h, w) float32 mean |eps_target - eps_source|
    from the same mask stream as `diffedit` and `difference_map`. Scale it with `mask.scale_map`
    (min-max or the clamp), bring it to the image with `upsample_map`. Checks its inputs as `diffedit` does."""
    model, _, config, mask_generator, (x0, src, tgt) = _step_one_inputs(
        model, image, source_prompt, target_prompt, config, generator, fit, max_side)
    return raw_difference(model, x0, src, tgt, make_scheduler(model, config.steps), config, mask_generator)


def _step_one_inputs(model, image, source_prompt, target_prompt, config, generator, fit, max_side, on_stage=None):
    """What step 1 alone needs, checked as `diffedit` checks it: (model, RGB image, config, the
    generator's mask stream, (latents, source embedding, target embedding))."""
    model = as_model(model)
    image, config = prepare_inputs(model, image, source_prompt, target_prompt, config, fit, max_side)
    check_generator(generator)
    mask_generator, _ = generator_streams(generator)
    x0, src, tgt, _ = encode_inputs(model, image, source_prompt, target_prompt, on_stage)
    return model, image, config, mask_generator, (x0, src, tgt)


@torch.no_grad()
def encode_inputs(model, image, source_prompt, target_prompt, on_stage=None, negative_prompt=None):
    """The image latents (1, C, h, w) and the source, target and empty-prompt embeddings
    (1, L, D) each, encoded as one three-prompt batch (the same batch for every entry point,
    so their maps agree bit for bit). A non-empty `negative_prompt` is encoded on its own and
    takes the empty prompt's place (the unconditional branch of guidance). SDXL's embeddings
    (`text.XLEmbeddings`) carry time ids for the image's own size."""
    size = (image.height, image.width)
    with stage("encode", on_stage):
        x0 = encode_image(model, image)
    with stage("text", on_stage):
        emb = encode_prompts(model, [source_prompt, target_prompt, ""], names=["source_prompt", "target_prompt", ""],
                             size=size)
        unc = encode_prompts(model, [negative_prompt], names=["negative_prompt"], size=size) if negative_prompt else emb[2:3]
    return x0, emb[0:1], emb[1:2], unc


def empty_mask_reason(diff_map: np.ndarray, config) -> str:
    "Why a non-zero difference map gave an empty mask: no value (after the blur) is above the threshold."
    peak = float(blur_mask(diff_map, config.blur).max())
    after = f" after blur={config.blur}" if config.blur else ""
    lower = "lower the threshold" + (" or the blur" if config.blur else "")
    return (f"the mask is empty: no point of the difference map is above threshold={config.threshold:g} (its highest is "
            f"{peak:.3g}{after}); the image is returned unchanged: {lower}")


@torch.no_grad()
def _diffedit_one(model, image, source_prompt, target_prompt, config, generator, callback, progress, on_stage,
                  given_mask=None):
    # 1. image -> latents (1, C, h, w); prompts -> embeddings (1, L, D) each: source, target, unconditional
    x0, src, tgt, unc = encode_inputs(model, image, source_prompt, target_prompt, on_stage, config.negative_prompt)
    scheduler = make_scheduler(model, config.steps)
    mask_generator, edit_generator = generator_streams(generator)  # the mask's draws never move the edit's
    # 2. the mask: averaged noise-prediction differences, normalised, at image resolution; or the caller's
    with stage("mask", on_stage):
        if given_mask is None:
            raw_map, diff_map = mask_maps(model, image, x0, src, tgt, scheduler, config, mask_generator)
            mask = make_mask(diff_map, config.threshold, config.blur, config.fill_holes)
        else:  # no model work: the map is the caller's mask itself, 0 or 1
            raw_map, diff_map, mask = None, given_mask.astype(np.float32), given_mask
    result = dict(mask=mask, difference_map=diff_map, raw_map=raw_map, input_image=image, source_prompt=source_prompt,
                  target_prompt=target_prompt, config=config)
    if not mask.any():  # nothing to change (e.g. identical prompts): the input, untouched
        if given_mask is None and diff_map.any():  # the prompts differ, but the settings left nothing: say which
            warnings.warn(empty_mask_reason(diff_map, config), DiffEditWarning, stacklevel=3)
        return DiffEditResult(image=image.copy(), **result)
    m = latent_mask(mask, x0.shape[-2:], x0.device, x0.dtype)  # (1, 1, h, w)
    # 3. encode the image to the start level: noised, or DDIM-inverted with the source prompt
    k0 = config.start_index
    with stage("encoding", on_stage):
        if config.encoding == "inversion":
            backgrounds = ddim_invert(model, x0, src, scheduler, k0, progress=progress)
        else:
            noise = draw_noise(x0.shape, edit_generator, x0.device, x0.dtype)
            backgrounds = noised_backgrounds(scheduler, x0, noise, k0)
    # 4. masked denoising towards the target prompt
    with stage("denoising", on_stage):
        latents = masked_denoise(model, backgrounds[k0], backgrounds, m, tgt, unc, scheduler, k0, config.guidance,
                                 callback, progress)
    check_finite(latents, "the edited latents", model, f"guidance={config.guidance:g}")
    # 5. back to pixels, pasted into the input through the feathered mask
    with stage("decode", on_stage):
        edited = decode_to_images(model, latents)[0]
    if config.composite:
        with stage("composite", on_stage):
            edited = composite(image, edited, mask, config.feather, inside=given_mask is not None)
    return DiffEditResult(image=edited, **result)
