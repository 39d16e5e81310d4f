"""DiffEdit, step by step: mask from noise-prediction differences, then masked denoising.

    from diffedit_helpers import load_model, diffedit, DiffEditConfig
    model = load_model("bundled")                       # or a local Stable Diffusion folder
    result = diffedit(model, "horse.png", "a brown horse on grass", "a zebra on grass",
                      generator=torch.Generator().manual_seed(0))
    result.image, result.mask, result.difference_map
"""

from .config import ConfigError, DiffEditConfig, DiffEditWarning
from .edit import (
    STAGES,
    DiffEditResult,
    composite,
    ddim_invert,
    diffedit,
    difference_map,
    feather_alpha,
    latent_difference,
    masked_denoise,
    noised_backgrounds,
)
from .images import ImageInputError, fit_size, to_rgb
from .inputs import fit_inputs
from .latents import decode_latents, decode_to_images, encode_image, image_to_tensor, tensor_to_images
from .mask import (
    blur_mask,
    clamp_map,
    fill_holes,
    latent_mask,
    make_mask,
    mask_maps,
    noise_difference,
    normalise_map,
    post_recipe_latent_mask,
    post_recipe_mask,
    refine_map,
    scale_map,
    threshold_mask,
    upsample_map,
)
from .models import BUNDLED_PATH, DiffEditModel, ModelLoadError, load_auto, load_model
from .noising import (
    add_noise,
    alpha_bar,
    generator_streams,
    guided_noise,
    make_scheduler,
    predict_noise,
    predicted_x0,
    timestep_at,
    to_epsilon,
)
from .text import encode_prompts, tokenize

PIPELINES = ("DiffEditPipeline", "DiffEditXLPipeline")  # diffusers-API pipelines (`pipeline`), imported on first use: diffusers loads slowly


def __getattr__(name):
    if name in PIPELINES:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# the mask explorer (ipywidgets) is imported where it is used: `from diffedit_helpers.widgets import mask_explorer`
__all__ = [
    "DiffEditConfig", "ConfigError", "DiffEditWarning", "DiffEditResult", "DiffEditModel", "ImageInputError", "ModelLoadError", "BUNDLED_PATH",
    "STAGES", "load_model", "load_auto", "diffedit", "encode_image", "decode_latents", "decode_to_images", "image_to_tensor",
    "tensor_to_images", "encode_prompts", "tokenize", "make_scheduler", "timestep_at", "add_noise", "predict_noise",
    "guided_noise", "noise_difference", "normalise_map", "upsample_map", "threshold_mask", "blur_mask", "fill_holes",
    "make_mask", "refine_map", "difference_map", "latent_mask", "masked_denoise", "ddim_invert", "noised_backgrounds",
    "composite", "feather_alpha", "mask_maps", "to_epsilon", "to_rgb", "fit_size", "predicted_x0", "alpha_bar",
    "post_recipe_mask", "post_recipe_latent_mask", "clamp_map", "scale_map", "generator_streams",
    "latent_difference", "DiffEditPipeline", "DiffEditXLPipeline", "fit_inputs",
]
