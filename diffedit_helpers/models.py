"""Loading the four components DiffEdit needs: VAE, tokenizer, text encoder, UNet (+ scheduler).

`load_model("bundled")` gives the tiny model that ships inside this package (trained on the
shapes world); `load_model("/path/to/sd-folder")` any local Stable Diffusion 1.x/2.x folder in
diffusers format; `load_model("stable-diffusion-v1-5/stable-diffusion-v1-5", "cuda", torch.float16)`
a hub id (downloaded once, then read from the local cache, also offline);
`DiffEditModel.from_pipe(pipe)` the components of a loaded diffusers `StableDiffusionPipeline`.
Stable Diffusion XL folders (a second text encoder and tokenizer, `text_encoder_2/` and
`tokenizer_2/`, and a UNet with `addition_embed_type == "text_time"`) load the same ways, and
`from_pipe` takes a `StableDiffusionXLPipeline`; `text.encode_prompts` builds their conditioning.
Everything a model needs is checked when it loads, not halfway through an edit: missing or
unexpected weights, an inpainting UNet, a text encoder whose width the UNet cannot attend to,
half an SDXL model.
Taught in notebook 00_quickstart (and used by every notebook through `load_auto`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DiffEditWarning

BUNDLED_PATH = Path(__file__).parent / "bundled"
COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
WEIGHTED = ("vae", "text_encoder", "unet")
XL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # what an SDXL folder has beside COMPONENTS
XL_WEIGHTED = ("text_encoder_2",)
XL_FORCE_ZEROS = True  # diffusers' StableDiffusionXLPipeline default for force_zeros_for_empty_prompt
WEIGHT_FILES = ("*.safetensors", "*.bin")
DEFAULT_SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
HALF_VARIANT = "fp16"  # the weights variant Stable Diffusion repositories publish for float16
SD_SIZE_PARAMETERS = 100_000_000  # a UNet this large is Stable Diffusion-sized: minutes per edit on a CPU
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MIN_VOCABULARY = 1000  # CLIP's has 49,408 tokens; a tokenizer folder missing its vocabulary loads with a handful
_LOAD_LOCK = threading.Lock()  # the libraries' log levels are process-wide: one load changes them at a time


class ModelLoadError(RuntimeError):
    "A model could not be loaded; the message says why in one line."


@dataclass
class DiffEditModel:
    "The components of a latent text-to-image model, and where they live."

    vae: "object"
    tokenizer: "object"
    text_encoder: "object"
    unet: "object"
    scheduler_config: dict
    name: str = "bundled"
    tokenizer_2: "object" = None  # SDXL: the second tokenizer and text encoder (with projection), else None
    text_encoder_2: "object" = None
    force_zeros_for_empty_prompt: bool = False  # SDXL: the unconditional (blank) prompt's embedding is zeros

    @property
    def is_xl(self) -> bool:
        "An SDXL model: two text encoders, pooled embeddings and time ids (`text.encode_prompts_xl`)."
        return self.text_encoder_2 is not None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        "Pixels per latent cell: 2 ** (number of VAE down blocks - 1), read from the config."
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def max_prompt_tokens(self) -> int:
        pairs = [(self.tokenizer, self.text_encoder)] + ([(self.tokenizer_2, self.text_encoder_2)] if self.is_xl else [])
        return min(min(tok.model_max_length, enc.config.max_position_embeddings) for tok, enc in pairs)

    @property
    def text_encoders(self) -> tuple:
        "The text encoders: one, or SDXL's two."
        return (self.text_encoder, self.text_encoder_2) if self.is_xl else (self.text_encoder,)

    def to(self, device=None, dtype=None) -> "DiffEditModel":
        for m in (self.vae, *self.text_encoders, self.unet):
            m.to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pipe(cls, pipe) -> "DiffEditModel":
        """The components of a loaded diffusers pipeline (a `StableDiffusionPipeline` or
        `StableDiffusionXLPipeline`, or any pipeline with vae, tokenizer, text_encoder, unet and
        scheduler, and for SDXL tokenizer_2 and text_encoder_2), shared, not copied."""
        missing = [c for c in COMPONENTS if getattr(pipe, c, None) is None]
        if missing:
            raise ModelLoadError(f"{type(pipe).__name__} has no {', '.join(missing)}: DiffEdit needs a Stable Diffusion "
                                 f"1.x/2.x or XL pipeline (vae, text_encoder, tokenizer, unet, scheduler)")
        name = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
        text_encoder_2, tokenizer_2 = getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None)
        check_architecture(str(name or type(pipe).__name__), pipe.vae.config, pipe.unet.config, pipe.text_encoder.config,
                           has_second_encoder=text_encoder_2 is not None,
                           text_config_2=getattr(text_encoder_2, "config", None), has_second_tokenizer=tokenizer_2 is not None)
        xl = text_encoder_2 is not None
        force_zeros = bool(getattr(getattr(pipe, "config", None), "force_zeros_for_empty_prompt", XL_FORCE_ZEROS)) and xl
        model = cls(pipe.vae, pipe.tokenizer, pipe.text_encoder, pipe.unet, dict(pipe.scheduler.config),
                    name=str(name or type(pipe).__name__), tokenizer_2=tokenizer_2 if xl else None,
                    text_encoder_2=text_encoder_2, force_zeros_for_empty_prompt=force_zeros)
        check_tokenizer(model)
        return model


def check_tokenizer(model):
    """Refuse a tokenizer that cannot tell words apart (an empty or partial tokenizer/ folder
    loads with a few tokens, and then every prompt encodes the same): no model work. SDXL's
    tokenizer_2 is checked too."""
    for folder, tok in (("tokenizer", model.tokenizer), ("tokenizer_2", getattr(model, "tokenizer_2", None))):
        if tok is None:
            continue
        size = len(tok)
        if size < MIN_VOCABULARY:
            why = f"knows only {size} tokens (at least {MIN_VOCABULARY:,} expected; CLIP's has 49,408)"
        elif tok("cat").input_ids == tok("dog").input_ids:
            why = "encodes the different words 'cat' and 'dog' alike"
        else:
            continue
        raise ModelLoadError(f"model {model.name!r}: its {folder} {why}, so every prompt would encode the same; "
                             f"its {folder}/ folder is incomplete (vocab.json, merges.txt): fetch it again")


def as_model(model) -> DiffEditModel:
    "A DiffEditModel as it is, or one built from a diffusers pipeline (`DiffEditModel.from_pipe`)."
    if isinstance(model, DiffEditModel):
        return model
    if all(hasattr(model, c) for c in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")):
        return DiffEditModel.from_pipe(model)
    raise TypeError(f"model must be a DiffEditModel (load_model) or a diffusers StableDiffusion(XL)Pipeline, "
                    f"got {type(model).__name__}")


# ----------------------------------------------------------------------------- devices and dtypes
def cuda_usable() -> bool:
    """CUDA is available and this torch has kernels for the GPU (a Kaggle P100, sm_60, reports
    CUDA available under a torch built for sm_75 and newer, then fails on its first kernel)."""
    if not torch.cuda.is_available():
        return False
    arches = torch.cuda.get_arch_list()
    if not arches:  # unknown build: trust is_available
        return True
    major, minor = torch.cuda.get_device_capability()
    cap = major * 10 + minor
    built = {int(a.split("_")[1]) for a in arches if a.startswith("sm_") and a.split("_")[1].isdigit()}
    ptx = {int(a.split("_")[1]) for a in arches if a.startswith("compute_") and a.split("_")[1].isdigit()}
    return cap in built or any(p <= cap for p in ptx)


def available_devices() -> list[str]:
    "The device types this torch can run on here."
    found = ["cpu"]
    if cuda_usable():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.append("xpu")
    return found


def resolve_device(device="cpu") -> torch.device:
    """`device` as a torch.device this machine can use. "auto" is the GPU when this torch can run
    on it, else the CPU; None is the CPU. Anything else unusable here is a ValueError naming
    the devices that are available."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if cuda_usable() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', or 'auto'; got {device!r} "
                         f"(available here: {', '.join(available_devices())})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu' (the default)")
    if device.type == "cuda" and not cuda_usable():
        major, minor = torch.cuda.get_device_capability()
        raise ValueError(f"device={str(device)!r}: this torch has no kernels for this GPU (compute capability "
                         f"{major}.{minor}; built for {', '.join(torch.cuda.get_arch_list())}); use device='cpu'")
    if device.type not in available_devices():
        raise ValueError(f"device={str(device)!r} is not available with this torch; available here: "
                         f"{', '.join(available_devices())}")
    return device


_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype, device: torch.device, name: str = "") -> torch.dtype:
    """`dtype` as a floating torch dtype. None is float32; "auto" is float16 on a GPU (for every
    model but the tiny bundled one) and float32 elsewhere. float16 needs a GPU."""
    if dtype is None:
        dtype = torch.float32
    elif dtype == "auto":
        dtype = torch.float16 if device.type != "cpu" and name != "bundled" else torch.float32
    elif isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be 'auto', {', '.join(repr(k) for k in _DTYPE_NAMES)} or a torch dtype, got {dtype!r}")
        dtype = _DTYPE_NAMES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32, or torch.float16 on CUDA), got {dtype!r}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype=torch.float16 needs a CUDA device; use float32 on the CPU")
    return dtype


# ----------------------------------------------------------------------------- where the model is
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id: it exists, starts with '.', '/' or '~', has more or
    fewer than one '/', or its first part is an existing folder."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        return True
    return Path(name.split("/")[0]).is_dir()


def _check_folder(path: Path, components=COMPONENTS, weighted=WEIGHTED):
    "The folder holds `components` as subfolders, and weights in each of `weighted`."
    if not path.exists():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file, not a diffusers model folder")
    missing = [c for c in components if not (path / c).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{str(path)!r} is not a diffusers Stable Diffusion folder: missing subfolder(s) {', '.join(missing)}"
        )
    no_weights = [c for c in weighted if not any(next((path / c).glob(p), None) for p in WEIGHT_FILES)]
    if no_weights:
        raise ModelLoadError(f"{str(path)!r} has no weights (.safetensors or .bin) in {', '.join(c + '/' for c in no_weights)}")


def _local_variant(folder: Path) -> str | None:
    """The weights variant a component folder holds when it has no plain weights file
    (`diffusion_pytorch_model.fp16.safetensors` alone: "fp16"), else None."""
    files = [f.name for p in WEIGHT_FILES for f in folder.glob(p)]
    plain = [f for f in files if f.count(".") == 1]
    if plain or not files:
        return None
    return files[0].split(".")[-2]


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{what} {str(path)!r} is not readable JSON ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- what is supported
def _get(cfg, key, default=None):
    "A config value, from a dict or a config object."
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def check_architecture(name: str, vae_config, unet_config, text_config, has_second_encoder: bool = False,
                       text_config_2=None, has_second_tokenizer: bool = False):
    """Refuse, with one line, what DiffEdit here cannot run: half an SDXL model (a second text
    encoder without its tokenizer or a "text_time" UNet, or such a UNet without them), inpainting
    UNets (extra input channels), text encoders whose width the UNet cannot attend to, and an SDXL
    UNet whose added embedding does not fit the time ids and text_encoder_2's projection.
    Configs are dicts or config objects; text_config_2 is SDXL's text_encoder_2 config (None: none)."""
    supported = ("supported: Stable Diffusion 1.x/2.x text-to-image models (one CLIP text encoder, a 4-channel latent "
                 "UNet) and SDXL base models (two CLIP text encoders and tokenizers, a 'text_time' UNet)")
    text_time = _get(unet_config, "addition_embed_type") == "text_time"
    if has_second_encoder or text_config_2 is not None or text_time:
        lacks = [what for what, has in (("no text_encoder_2/ (a second text encoder with its config)", text_config_2 is not None),
                                        ("no tokenizer_2/", has_second_tokenizer),
                                        ("a UNet without addition_embed_type 'text_time'", text_time)) if not has]
        if lacks:
            raise ModelLoadError(f"{name!r} is an SDXL-style model (two text encoders, time embeddings), but it has "
                                 f"{', '.join(lacks)}; {supported}")
    latent, unet_in = _get(vae_config, "latent_channels"), _get(unet_config, "in_channels")
    if unet_in != latent:
        kind = "an inpainting UNet" if unet_in == 2 * latent + 1 else "a UNet"
        raise ModelLoadError(f"{name!r} has {kind} with {unet_in} input channels, but its VAE makes {latent}-channel "
                             f"latents; {supported}")
    attends = _get(unet_config, "cross_attention_dim")
    if isinstance(attends, (list, tuple)):
        attends = attends[0]
    if text_config_2 is None:
        width = _get(text_config, "hidden_size")
        if width != attends:
            raise ModelLoadError(f"{name!r}: the text encoder is {width} wide but the UNet attends to {attends}-wide "
                                 f"embeddings; {supported}")
        return
    check_xl_widths(name, unet_config, text_config, text_config_2, attends, supported)


def check_xl_widths(name: str, unet_config, text_config, text_config_2, attends: int, supported: str):
    """SDXL: the UNet attends to both encoders' states side by side (D1 + D2 wide), and its added
    embedding reads the time ids (addition_time_embed_dim each) and text_encoder_2's projection."""
    from .text import TIME_IDS

    widths = _get(text_config, "hidden_size"), _get(text_config_2, "hidden_size")
    if sum(widths) != attends:
        raise ModelLoadError(f"{name!r}: the text encoders are {widths[0]} + {widths[1]} = {sum(widths)} wide but the "
                             f"UNet attends to {attends}-wide embeddings; {supported}")
    time_dim, pooled = _get(unet_config, "addition_time_embed_dim"), _get(text_config_2, "projection_dim")
    added = _get(unet_config, "projection_class_embeddings_input_dim")
    if time_dim is None or pooled is None or len(TIME_IDS) * time_dim + pooled != added:
        raise ModelLoadError(f"{name!r}: the UNet's added embedding reads {added} values, but {len(TIME_IDS)} time ids of "
                             f"{time_dim} and text_encoder_2's {pooled}-wide projection make "
                             f"{len(TIME_IDS) * (time_dim or 0) + (pooled or 0)} (a refiner, or mixed components); "
                             f"{supported}")


def _check_loading_info(name: str, component: str, info: dict):
    "Missing or unexpected weights are an error: random weights would edit nonsense silently."
    for kind in ("missing_keys", "unexpected_keys"):
        keys = sorted(info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
            raise ModelLoadError(f"{name!r}: the {component} weights have {kind.replace('_', ' ')}: {shown}")


# ----------------------------------------------------------------------------- loading
def load_model(name_or_path: str | os.PathLike = "bundled", device=None, dtype=None, *, variant: str | None = None,
               revision: str | None = None, token=None, local_files_only: bool | None = None) -> DiffEditModel:
    """Load VAE, tokenizer, text encoder and UNet (SDXL: and tokenizer_2, text_encoder_2), in eval
    mode, on `device` in `dtype`.

    name_or_path: "bundled" (the tiny shapes-world model), a local diffusers-format SD 1.x/2.x or
        SDXL folder, or a hub id (downloaded once into the Hugging Face cache; with HF_HUB_OFFLINE=1 or
        local_files_only=True only the cache is read).
    device: defaults to the CPU; "auto" picks the GPU when this torch can run on it.
    dtype: defaults to float32; "auto" is float16 on a GPU; float16 needs CUDA.
    variant: the weights variant to read ("fp16"). By default a hub id loaded in float16 asks
        for the "fp16" variant (half the download) and falls back to the full weights when the
        repository has none; a local folder with only variant files uses them.
    revision, token: passed to the hub (a branch, tag or commit; an access token).
    """
    name = str(name_or_path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, name)
    path = BUNDLED_PATH if name == "bundled" else Path(name).expanduser()
    if name == "bundled" or looks_like_path(name):
        _check_folder(path)
        source, hub = str(path), {}
        xl = _check_local_architecture(name, path)
        weighted = WEIGHTED + (XL_WEIGHTED if xl else ())
        variants = {c: variant or _local_variant(path / c) for c in weighted}
        force_zeros = xl and _local_force_zeros(path)
    else:
        offline = bool(local_files_only) or _offline()
        source, hub = name, dict(revision=revision, token=token, local_files_only=offline)
        wanted = variant or (HALF_VARIANT if dtype == torch.float16 else None)
        variants = {c: wanted for c in WEIGHTED + XL_WEIGHTED}
    try:
        with _quiet_loading():
            if not hub:
                components = _load_components(name, source, dtype, variants, hub, xl)
            else:
                components, force_zeros = _load_from_hub(name, source, dtype, variants, hub)
        scheduler_config = _read_scheduler_config(source, hub)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line instead of a library traceback
        raise _load_error(name, e, hub) from e
    for tok, enc in ((components["tokenizer"], components["text_encoder"]),
                     (components.get("tokenizer_2"), components.get("text_encoder_2"))):
        if tok is not None and tok.model_max_length > 10_000:  # tokenizers saved without a limit
            tok.model_max_length = enc.config.max_position_embeddings
    model = DiffEditModel(name=name, scheduler_config=scheduler_config, force_zeros_for_empty_prompt=force_zeros,
                          **components)
    check_tokenizer(model)
    for m in (model.vae, *model.text_encoders, model.unet):
        m.requires_grad_(False).eval()
    if device != model.device:
        model.to(device=device)
    _warn_if_slow(model)
    return model


def _check_local_architecture(name: str, path: Path) -> bool:
    """A local folder's configs against `check_architecture`, before any weights load; True for an
    SDXL folder (then also checked for its text_encoder_2 weights)."""
    arch = [_read_json(path / c / "config.json", f"{c} config") for c in ("vae", "unet", "text_encoder")]
    second = path / "text_encoder_2"
    text_2 = _read_json(second / "config.json", "text_encoder_2 config") if (second / "config.json").is_file() else None
    check_architecture(name, *arch, has_second_encoder=second.is_dir(), text_config_2=text_2,
                       has_second_tokenizer=(path / "tokenizer_2").is_dir())
    if text_2 is not None:
        _check_folder(path, COMPONENTS + XL_COMPONENTS, WEIGHTED + XL_WEIGHTED)
    return text_2 is not None


def _local_force_zeros(path: Path) -> bool:
    "SDXL's force_zeros_for_empty_prompt from the folder's model_index.json (diffusers' default without one)."
    index = path / "model_index.json"
    config = _read_json(index, "pipeline config") if index.is_file() else {}
    return bool(config.get("force_zeros_for_empty_prompt", XL_FORCE_ZEROS))


def _load_error(name: str, e: Exception, hub: dict) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if hub and _offline():
        return ModelLoadError(
            f"{name!r} is not a local folder and looks like a hub id, but HF_HUB_OFFLINE is set and it is not in the "
            f"local Hugging Face cache: download it where there is network, then pass its local folder"
        )
    if hub and hub.get("local_files_only"):
        return ModelLoadError(f"{name!r} is not a local folder, and read as a hub id it is not in the local Hugging Face "
                              f"cache (local_files_only): {type(e).__name__}: {first}")
    if hub:
        return ModelLoadError(f"{name!r} is not a local folder, and read as a hub id it could not be loaded: "
                              f"{type(e).__name__}: {first}")
    return ModelLoadError(f"could not load model {name!r}: {type(e).__name__}: {first}")


def _load_from_hub(name, source, dtype, variants, hub):
    """Hub ids: the configs first (refusals before any download of weights), then the weights.
    Returns the components and SDXL's force_zeros_for_empty_prompt (False for other models)."""
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig

    vae_cfg = AutoencoderKL.load_config(source, subfolder="vae", **hub)
    unet_cfg = UNet2DConditionModel.load_config(source, subfolder="unet", **hub)
    text_cfg = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", **hub)
    try:
        index = dict(DiffusionPipeline.load_config(source, **hub))
    except (OSError, ValueError):  # a repository without model_index.json: its components say what it is
        index = {}
    xl = index.get("text_encoder_2", [None])[0] is not None or unet_cfg.get("addition_embed_type") == "text_time"
    text_cfg_2 = None
    if xl:
        try:
            text_cfg_2 = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder_2", **hub)
        except OSError:  # half an SDXL repository: check_architecture says what it lacks
            pass
    check_architecture(name, vae_cfg, unet_cfg, text_cfg, has_second_encoder=xl, text_config_2=text_cfg_2,
                       has_second_tokenizer=index.get("tokenizer_2", [None])[0] is not None or (not index and xl))
    force_zeros = xl and bool(index.get("force_zeros_for_empty_prompt", XL_FORCE_ZEROS))
    if not any(variants.values()):
        return _load_components(name, source, dtype, variants, hub, xl), force_zeros
    try:
        return _load_components(name, source, dtype, variants, hub, xl), force_zeros
    except (OSError, ValueError) as e:
        wanted = next(v for v in variants.values() if v)
        if "variant" not in str(e).lower() and f".{wanted}." not in str(e):
            raise
        warnings.warn(f"{name!r} has no {variants['unet']!r} weights variant; loading its full-precision weights "
                      f"(a larger download) and converting them to {dtype}", DiffEditWarning, stacklevel=4)
        return _load_components(name, source, dtype, {c: None for c in variants}, hub, xl), force_zeros


def _load_components(name, source, dtype, variants, hub, xl: bool = False) -> dict:
    """vae, unet, text_encoder, tokenizer (and for SDXL text_encoder_2, a CLIPTextModelWithProjection,
    and tokenizer_2), each checked for missing or unexpected weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vae, info = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, variant=variants["vae"],
                                              output_loading_info=True, **hub)
    _check_loading_info(name, "vae", info)
    unet, info = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, variant=variants["unet"],
                                                      output_loading_info=True, **hub)
    _check_loading_info(name, "unet", info)
    text_encoder, info = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype,
                                                       variant=variants["text_encoder"], output_loading_info=True, **hub)
    _check_loading_info(name, "text_encoder", info)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **hub)
    components = dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)
    if xl:
        text_encoder_2, info = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", dtype=dtype, variant=variants["text_encoder_2"], output_loading_info=True, **hub)
        _check_loading_info(name, "text_encoder_2", info)
        components.update(text_encoder_2=text_encoder_2,
                          tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **hub))
    return components


@contextlib.contextmanager
def _quiet_loading():
    """The libraries' loading chatter (progress bars, advice) down to errors for this load only:
    their own log levels, changed and restored under a lock. Python's warnings are left alone."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    with _LOAD_LOCK:
        levels = dlog.get_verbosity(), tlog.get_verbosity()
        bars = tlog.is_progress_bar_enabled()
        dlog.set_verbosity_error(), tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        try:
            yield
        finally:
            dlog.set_verbosity(levels[0]), tlog.set_verbosity(levels[1])
            if bars:
                tlog.enable_progress_bar()


def _read_scheduler_config(source: str, hub: dict) -> dict:
    if not hub:
        cfg_path = Path(source) / "scheduler" / "scheduler_config.json"
        if not cfg_path.exists():
            raise ModelLoadError(f"{source!r} has no scheduler/scheduler_config.json")
        config = _read_json(cfg_path, "scheduler config")
    else:
        from diffusers import DDIMScheduler

        config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **hub))
    for key in ("num_train_timesteps", "beta_start", "beta_end"):
        if key in config and not isinstance(config[key], (int, float)):
            raise ModelLoadError(f"{source!r}: scheduler config {key} must be a number, got {config[key]!r}")
    return config


def _warn_if_slow(model: DiffEditModel):
    "A Stable Diffusion-size UNet on the CPU takes minutes per edit: say so before the first one."
    if model.device.type != "cpu":
        return
    n = sum(p.numel() for p in model.unet.parameters())
    if n >= SD_SIZE_PARAMETERS:
        warnings.warn(f"{model.name!r} has a Stable Diffusion-size UNet ({n / 1e6:.0f} M parameters) on the CPU: a "
                      f"default 512-px edit takes about 18 minutes here; on a GPU pass device='cuda' (CLI: --device cuda)",
                      DiffEditWarning, stacklevel=3)


def auto_model_name() -> str:
    """The model a notebook uses when MODEL = "auto": $DIFFEDIT_MODEL if set, else Stable
    Diffusion 1.5 when a usable GPU is present, else the bundled model."""
    env = os.environ.get("DIFFEDIT_MODEL")
    if env:
        return env
    return DEFAULT_SD_ID if cuda_usable() else "bundled"


def load_auto(name: str = "auto") -> DiffEditModel:
    '''Load `name` ("auto": `auto_model_name`) on the GPU when this torch can use one, else the CPU,
    in float16 on the GPU (float32 for the bundled model, and on the CPU).'''
    if name == "auto":
        name = auto_model_name()
    return load_model(name, device="auto", dtype="auto")
