"""Loading the four components DiffEdit needs: VAE, tokenizer, text encoder, UNet (+ scheduler).
Taught in notebook 00_quickstart (and used by every notebook through `load_auto`).

`load_model("bundled")` gives the tiny model that ships inside this package (trained on the
shapes world); `load_model("/path/to/sd-folder")` any local Stable Diffusion 1.x/2.x folder in
diffusers format; `load_model("runwayml/stable-diffusion-v1-5")` a hub id (online only).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

BUNDLED_PATH = Path(__file__).parent / "bundled"
COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
WEIGHTED = ("vae", "text_encoder", "unet")
WEIGHT_FILES = ("*.safetensors", "*.bin")
DEFAULT_SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


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
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def to(self, device=None, dtype=None) -> "DiffEditModel":
        for m in (self.vae, self.text_encoder, self.unet):
            m.to(device=device, dtype=dtype)
        return self


def _default_device_dtype(device, dtype):
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu' (the default)")
    if dtype is None:
        dtype = torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32, or torch.float16 on CUDA), got {dtype!r}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype=torch.float16 needs a CUDA device; use float32 on the CPU")
    return device, dtype


def _check_folder(path: Path):
    if not path.exists():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file, not a diffusers model folder")
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{str(path)!r} is not a diffusers Stable Diffusion folder: missing subfolder(s) {', '.join(missing)}"
        )
    no_weights = [c for c in WEIGHTED if not any(next((path / c).glob(p), None) for p in WEIGHT_FILES)]
    if no_weights:
        raise ModelLoadError(f"{str(path)!r} has no weights (.safetensors or .bin) in {', '.join(c + '/' for c in no_weights)}")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def load_model(name_or_path: str | os.PathLike = "bundled", device=None, dtype=None) -> DiffEditModel:
    """Load VAE, tokenizer, text encoder and UNet, in eval mode, on `device` in `dtype`.

    name_or_path: "bundled" (the tiny shapes-world model), a local diffusers-format SD folder,
        or a hub id (needs network; with HF_HUB_OFFLINE=1 it fails fast).
    device: defaults to the CPU. dtype: defaults to float32; float16 is an explicit choice
        and needs CUDA.
    """
    device, dtype = _default_device_dtype(device, dtype)
    name = str(name_or_path)
    path = BUNDLED_PATH if name == "bundled" else Path(name).expanduser()
    local = name == "bundled" or not _looks_like_hub_id(name)
    if local:
        _check_folder(path)
        source = str(path)
    else:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ModelLoadError(
                f"{name!r} is not a local folder and looks like a hub id, but HF_HUB_OFFLINE is set: "
                f"download it elsewhere and pass its local folder"
            )
        source = name
    try:
        with _quiet_loading():
            vae, unet, text_encoder, tokenizer = _load_components(source, dtype)
        scheduler_config = _read_scheduler_config(source, local)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line instead of a library traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load model {name!r}: {type(e).__name__}: {first}") from e
    if tokenizer.model_max_length > 10_000:  # tokenizers saved without a limit
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    model = DiffEditModel(vae, tokenizer, text_encoder, unet, scheduler_config, name=name)
    for m in (vae, text_encoder, unet):
        m.requires_grad_(False).eval()
    if device != model.device:
        model.to(device=device)
    return model


def _load_components(source, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    return vae, unet, text_encoder, tokenizer


@contextlib.contextmanager
def _quiet_loading():
    "Silence the libraries' loading chatter (progress bars, advice) for this call only."
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error(), tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(levels[0]), tlog.set_verbosity(levels[1])
        if bars:
            tlog.enable_progress_bar()


def _read_scheduler_config(source: str, local: bool) -> dict:
    if local:
        cfg_path = Path(source) / "scheduler" / "scheduler_config.json"
        if not cfg_path.exists():
            raise ModelLoadError(f"{source!r} has no scheduler/scheduler_config.json")
        return json.loads(cfg_path.read_text())
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.load_config(source, subfolder="scheduler"))


def auto_model_name() -> str:
    """The model a notebook uses when MODEL = "auto": $DIFFEDIT_MODEL if set, else Stable
    Diffusion 1.5 when CUDA is available, else the bundled model."""
    env = os.environ.get("DIFFEDIT_MODEL")
    if env:
        return env
    return DEFAULT_SD_ID if torch.cuda.is_available() else "bundled"


def auto_device_dtype(name: str) -> tuple[torch.device, torch.dtype]:
    """Where and how a notebook runs `name`: on the GPU when torch sees one, else the CPU; in
    float16 on the GPU (Stable Diffusion's usual choice), float32 on the CPU and for the bundled
    model (too small to gain from half precision)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = device.type != "cpu" and name != "bundled"
    return device, torch.float16 if half else torch.float32


def load_auto(name: str = "auto") -> DiffEditModel:
    '''Load `name`, resolving "auto" (`auto_model_name`), on the device and in the dtype `auto_device_dtype` picks.'''
    if name == "auto":
        name = auto_model_name()
    device, dtype = auto_device_dtype(name)
    return load_model(name, device=device, dtype=dtype)
