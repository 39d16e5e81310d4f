"""Stable Diffusion-shaped models with random weights: the SD path, exercised without a download.

Stable Diffusion 1.5's, 2.1's and XL's architectures are written out below (the config.json files
of their unet, vae and text_encoder folders, and SDXL's text_encoder_2). `save_sd_folder` builds
them with random weights and saves a folder in diffusers format, exactly as `load_model` reads a
downloaded one:

    save_sd_folder("runs/sd15-small", version="1.5", small=True)   # seconds to build, seconds per edit
    save_sd_folder("runs/sdxl-small", version="xl")                # two text encoders, a text_time UNet
    model = load_model("runs/sd15-small")

`small=True` keeps everything that makes a model "Stable Diffusion" to the code (4 latent
channels, a VAE scale factor of 8, 4 UNet levels with cross-attention where SD has it, a
77-token CLIP tokenizer, epsilon or v-prediction; for XL two text encoders whose penultimate
states are concatenated, a pooled projection and six time ids) with channel counts small enough
for a CPU. The tokenizer is CLIP's real one (the bundled model's), and XL's tokenizer_2 the same files. Random weights make meaningless
pictures; shapes, dtypes, scale factors and timings are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..text import TIME_IDS
from .tiny_model import TOKENIZER_SOURCE

# Stable Diffusion 1.5 (unet/config.json, vae/config.json, text_encoder/config.json)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, center_input_sample=False,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
# Stable Diffusion 2.1 (768 px, v-prediction): what differs from 1.5
SD21_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True, upcast_attention=True)
SD21_VAE = dict(SD15_VAE, sample_size=768)
SD21_TEXT = dict(SD15_TEXT, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512)
# the scheduler both ship (PNDM, read by DDIMScheduler.from_config with the same betas)
SD_SCHEDULER = dict(
    _class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    timestep_spacing="leading", trained_betas=None,
)
# Stable Diffusion XL 1.0 base (1024 px): a 3-level UNet conditioned on both text encoders' states side by
# side (768 + 1280), plus text_encoder_2's pooled projection and six time ids ("text_time")
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5,
    act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
    center_input_sample=False,
)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = dict(SD15_TEXT)  # CLIP ViT-L, as SD 1.5
SDXL_TEXT_2 = dict(SD15_TEXT, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   hidden_act="gelu", projection_dim=1280)  # OpenCLIP ViT-bigG, with its text projection
SDXL_SCHEDULER = dict(SD_SCHEDULER, _class_name="EulerDiscreteScheduler", interpolation_type="linear",
                      sample_max_value=1.0, use_karras_sigmas=False)
VERSIONS = {"1.5": (SD15_UNET, SD15_VAE, SD15_TEXT, "epsilon"), "2.1": (SD21_UNET, SD21_VAE, SD21_TEXT, "v_prediction"),
            "xl": (SDXL_UNET, SDXL_VAE, SDXL_TEXT, "epsilon")}


# the small VAE and text encoder every small version shares
SMALL_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
SMALL_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)


def shrink(unet: dict, vae: dict, text: dict) -> tuple[dict, dict, dict]:
    """The same architectures with channel counts and depths a CPU runs in seconds: four UNet
    levels, cross-attention at the middle two (SD also attends at the first, full-resolution
    level, where attention over 64 x 64 latents would cost a CPU seconds per call)."""
    heads = unet.get("attention_head_dim")
    unet = dict(unet, block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(2, 2, 4, 4) if isinstance(heads, tuple) else 8)
    return unet, dict(vae, **SMALL_VAE), dict(text, **SMALL_TEXT)


def shrink_xl(unet: dict, vae: dict, text: dict, text_2: dict) -> tuple[dict, dict, dict, dict]:
    """SDXL's architectures with small channel counts: three UNet levels, cross-attention at the
    last two (as SDXL), two text encoders of different widths (their states are concatenated),
    and the added embedding's input sized from the time ids and the pooled projection, as in SDXL."""
    vae, text = dict(vae, **SMALL_VAE), dict(text, **SMALL_TEXT)
    text_2 = dict(text_2, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    time_dim = 8
    unet = dict(unet, block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 1),
                attention_head_dim=(2, 4, 4), cross_attention_dim=text["hidden_size"] + text_2["hidden_size"],
                addition_time_embed_dim=time_dim,
                projection_class_embeddings_input_dim=len(TIME_IDS) * time_dim + text_2["projection_dim"])
    return unet, vae, text, text_2


def sd_configs(version: str = "1.5", small: bool = False) -> dict:
    """The unet, vae, text_encoder and scheduler configs of an SD version ('1.5', '2.1' or 'xl'), small
    or full size; for 'xl' also text_encoder_2."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {tuple(VERSIONS)}, got {version!r}")
    unet, vae, text, prediction = VERSIONS[version]
    if version == "xl":
        text_2 = SDXL_TEXT_2
        if small:
            unet, vae, text, text_2 = shrink_xl(unet, vae, text, text_2)
        return dict(unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2,
                    scheduler=dict(SDXL_SCHEDULER, prediction_type=prediction))
    if small:
        unet, vae, text = shrink(unet, vae, text)
    return dict(unet=unet, vae=vae, text_encoder=text, scheduler=dict(SD_SCHEDULER, prediction_type=prediction))


def build_sd_components(version: str = "1.5", small: bool = False, seed: int = 0, device="cpu"):
    """Random-weight vae, unet, text_encoder and the CLIP tokenizer of an SD-shaped model, on `device`
    (float32); for 'xl' also text_encoder_2 (with its projection) and tokenizer_2 (the same CLIP files)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = sd_configs(version, small)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: SD's 860 M UNet parameters never touch the CPU
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])) if "text_encoder_2" in cfg else None
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_SOURCE), model_max_length=cfg["text_encoder"]["max_position_embeddings"])
    comps = dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler_config=cfg["scheduler"])
    if text_encoder_2 is not None:
        comps.update(text_encoder_2=text_encoder_2, tokenizer_2=CLIPTokenizer.from_pretrained(
            str(TOKENIZER_SOURCE), model_max_length=cfg["text_encoder_2"]["max_position_embeddings"]))
    return comps


def prefix_text_encoder_keys(folder: Path, prefix: str = "text_model."):
    """Store the text encoder's weights under the `text_model.` prefix, as Stable Diffusion's own
    folders do: transformers 4.x finds no weights without it (newer versions save without it and
    read both), so every supported version loads the same weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        if all(k.startswith(prefix) for k in tensors):
            continue
        save_file({k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}, str(path), metadata=meta)


def save_sd_folder(out, version: str = "1.5", small: bool = True, seed: int = 0, variant: str | None = None) -> Path:
    """An SD-shaped model with random weights saved in diffusers format at `out` (which must not
    exist yet). variant="fp16" saves only float16 `*.fp16.safetensors` weights, as the hub's fp16
    variants hold them. version="xl" adds text_encoder_2/ and tokenizer_2/, and a model_index.json
    that names a StableDiffusionXLPipeline with SDXL's force_zeros_for_empty_prompt."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists; choose a new folder")
    comps = build_sd_components(version, small, seed)
    dtype = torch.float16 if variant == "fp16" else torch.float32
    xl = "text_encoder_2" in comps
    for name in ("vae", "unet", "text_encoder") + (("text_encoder_2",) if xl else ()):
        comps[name].to(dtype).save_pretrained(out / name, safe_serialization=True, variant=variant)
    prefix_text_encoder_keys(out / "text_encoder")  # (text_encoder_2's keys are saved prefixed, beside text_projection)
    for name in ("tokenizer", "tokenizer_2") if xl else ("tokenizer",):
        comps[name].save_pretrained(out / name)
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(comps["scheduler_config"], indent=2) + "\n")
    index = {"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    if xl:
        index = {"_class_name": "StableDiffusionXLPipeline", "vae": index["vae"], "unet": index["unet"],
                 "text_encoder": index["text_encoder"], "tokenizer": index["tokenizer"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], "image_encoder": [None, None],
                 "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m diffedit_helpers.world.sd_shaped", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="new folder to write")
    p.add_argument("--version", choices=tuple(VERSIONS), default="1.5")
    p.add_argument("--full-size", action="store_true", help="SD's real channel counts (3.4 GB in float32; SDXL 10 GB)")
    p.add_argument("--variant", choices=("fp16",), default=None, help="save float16 *.fp16.safetensors weights only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    save_sd_folder(args.out, args.version, small=not args.full_size, seed=args.seed, variant=args.variant)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
