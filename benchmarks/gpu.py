"""GPU speed at Stable Diffusion 1.5's size: ours against diffusers' DiffEdit pipeline, 512x512, fp16.

    python benchmarks/gpu.py                       # on a CUDA machine, under 5 minutes
    python benchmarks/gpu.py --device cpu --tiny   # smoke test of the same code path, seconds

No weights are downloaded: the UNet, VAE and CLIP text encoder are built with SD 1.5's
architecture (configs written out below) and random weights; the tokenizer is the bundled CLIP
tokenizer. Random weights make meaningless pictures but cost exactly the same time. Without
CUDA (and without --device cpu) the script says so in one line and exits with status 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from peer import UNetRecorder, peer_edit, peer_from_components
from PIL import Image

from diffedit_helpers import DiffEditConfig, diffedit
from diffedit_helpers.models import BUNDLED_PATH, DiffEditModel
from diffedit_helpers.world.sd_shaped import SD15_TEXT, SD15_UNET, SD15_VAE
from diffedit_helpers.world.shapes import horse_scene, render
from diffedit_helpers.world.tiny_model import scheduler_config, text_config, unet_config, vae_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="the bundled model's tiny architecture at 64x64 instead of SD 1.5 at 512x512")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 512, or 64 with --tiny)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per method after one warm-up (default 3)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    return p.parse_args(argv)


def build(tiny: bool, device, dtype) -> DiffEditModel:
    "Random-weight components with SD 1.5's architecture (or the tiny one), built on `device` in `dtype`."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlog
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dlog.set_verbosity_error()
    torch.manual_seed(0)
    text = text_config() if tiny else SD15_TEXT
    with torch.device(device):  # initialise in place: SD's 860 M UNet parameters never touch the CPU
        unet = UNet2DConditionModel(**(unet_config(cross_attention_dim=text["hidden_size"]) if tiny else SD15_UNET))
        vae = AutoencoderKL(**(vae_config() if tiny else SD15_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    tokenizer = CLIPTokenizer.from_pretrained(str(BUNDLED_PATH / "tokenizer"), model_max_length=text["max_position_embeddings"])
    for m in (unet, vae, text_encoder):
        m.to(dtype=dtype).requires_grad_(False).eval()
    return DiffEditModel(vae, tokenizer, text_encoder, unet, scheduler_config(), name="sd15-random" if not tiny else "tiny-random")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here, nothing to time (use --device cpu --tiny for a smoke test)")
        return 0
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size = args.size or (64 if args.tiny else 512)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    model = build(args.tiny, device, dtype)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    pipe = peer_from_components(model.vae, model.text_encoder, model.tokenizer, model.unet, model.scheduler_config)
    print(f"built {model.name} on {device} in {dtype} in {time.perf_counter() - t0:.0f} s; "
          f"UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.0f} M parameters", flush=True)

    image = render(horse_scene())[0].resize((size, size), Image.NEAREST)
    src, tgt = "a brown horse on grass", "a zebra on grass"
    config = DiffEditConfig(steps=args.steps).validate()
    rec = UNetRecorder(model.unet, sync=sync)

    def ours(encoding):
        with rec:
            diffedit(model, image, src, tgt, config.replace(encoding=encoding), torch.Generator().manual_seed(0), progress=False,
                     on_stage=rec.on_stage)

    def theirs():
        with rec:
            peer_edit(pipe, image, src, tgt, config, torch.Generator().manual_seed(0), recorder=rec)

    methods = {"ours (noise)": lambda: ours("noise"), "ours (inversion)": lambda: ours("inversion"), "diffusers": theirs}
    times = {m: [] for m in methods}
    calls, memory = {}, {}
    for r in range(args.repeats + 1):  # repeat 0 warms up
        for m, fn in methods.items():
            rec.reset()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r > 0:
                times[m].append(time.perf_counter() - t)
            calls[m] = sum(rec.calls.values())
            if device.type == "cuda":
                memory[m] = torch.cuda.max_memory_allocated() / 2**30
    full = 1 + config.steps - config.start_index  # the mask call, then every denoising step
    if calls["ours (noise)"] < full:
        print(f"warning: ours made {calls['ours (noise)']} UNet calls, fewer than {full}: its mask was empty "
              "and it returned the input early, so its time is not comparable")
    peer = statistics.median(times["diffusers"])
    for m in methods:
        med = statistics.median(times[m])
        mem = f", peak {memory[m]:.1f} GiB allocated" if m in memory else ""
        print(f"{m:17s} {med:7.2f} s / edit ({peer / med:.2f}x diffusers' speed), {calls[m]} UNet calls{mem}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{size}x{size}, {args.steps} steps, {dtype}, {name}; medians of {args.repeats}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
