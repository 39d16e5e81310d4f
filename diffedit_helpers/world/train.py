"""Train the bundled tiny model on the shapes world, and save it in diffusers format.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m diffedit_helpers.world.train --out diffedit_helpers/bundled

(two threads on an otherwise idle 2-core machine; on a busy one use OMP_NUM_THREADS=1.)
`--init-from FOLDER` trains a saved model further: its VAE and latent scaling are kept, and its
UNet and text encoder are the starting weights of stage 3.

Three stages, all on the CPU:
  1. the VAE (AutoencoderKL, scale factor 4) on rendered scenes, then its latent scaling
     factor from the latents' standard deviation;
  2. every training scene encoded once to latents (cheap UNet steps afterwards);
  3. the UNet and the CLIP text encoder together, to predict noise from (noisy latents,
     caption), with 10% empty captions so classifier-free guidance works, the loss weighted
     by Min-SNR-gamma (nearly clean samples count less), and the exponential moving
     average of the weights saved at the end.
The architecture is Stable Diffusion's (AutoencoderKL, UNet2DConditionModel, CLIPTextModel,
CLIP's BPE tokenizer, a DDIM scheduler), only smaller. Scenes with seeds below
`--scenes` are training data; seeds from `HELD_OUT_SEED` on are never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .sd_shaped import prefix_text_encoder_keys
from .shapes import IMAGE_SIZE, random_scene, render
from .tiny_model import TOKENIZER_SOURCE, build_components

PIXEL_RANGE = 2.0  # pixels are trained in [-1, 1]: PSNR's peak is that range, 2 (peak squared 4)
L1_WEIGHT = 0.5  # the VAE's reconstruction loss: MSE + L1_WEIGHT * L1 (L1 keeps edges sharper)
LOSS_SMOOTHING = 0.98  # the logged UNet loss is an exponential average with this decay
LOG_EVERY = 100  # steps between log lines

logger = logging.getLogger(__name__)


class ElapsedFormatter(logging.Formatter):
    "Log lines stamped with the seconds since training started: [  12.3s] message."

    def __init__(self):
        super().__init__()
        self.start = time.time()

    def format(self, record):
        return f"[{record.created - self.start:7.1f}s] {record.getMessage()}"


# ----------------------------------------------------------------------------- data
def make_scenes(n, start=0):
    "Render scenes `start .. start + n - 1`: uint8 images (n, H, W, 3) and their captions."
    images, captions = [], []
    for seed in range(start, start + n):
        scene = random_scene(seed)
        images.append(np.asarray(render(scene)[0]))
        captions.append(scene.caption)
    return np.stack(images), captions


def to_pixels(batch_uint8):
    "(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."
    return torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


def cosine_lr(step, total, base, warmup=100):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- stages
def random_crops(batch_uint8, crop, gen):
    "The same-size random crop of each image: the VAE is convolutional, so crops train it 4x cheaper."
    h, w = batch_uint8.shape[1:3]
    y, x = (int(torch.randint(0, n - crop + 1, (1,), generator=gen)) for n in (h, w))
    return batch_uint8[:, y : y + crop, x : x + crop]


def train_vae(vae, images, steps, batch_size, lr, gen, kl_weight=1e-6, crop=32):
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr)
        idx = torch.randint(len(images), (batch_size,), generator=gen).numpy()
        x = to_pixels(random_crops(images[idx], crop, gen))  # (B, 3, crop, crop)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + L1_WEIGHT * F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % LOG_EVERY == 0 or step == steps - 1:
            psnr = 10 * math.log10(PIXEL_RANGE**2 / F.mse_loss(recon, x).item())
            logger.info(f"vae step {step:5d}/{steps} loss {loss.item():.4f} psnr {psnr:.1f} dB")
    vae.eval()


@torch.no_grad()
def encode_all(vae, images, batch_size=256):
    "Posterior means of every image: (N, C, h, w), unscaled."
    out = [vae.encode(to_pixels(images[i : i + batch_size])).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def min_snr_weights(abar: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample loss weights (B,) from the noise levels abar (B,): Min-SNR-gamma weighting.

    The signal-to-noise ratio is abar / (1 - abar). Nearly clean samples (SNR above gamma)
    are easy and would dominate the gradient; their weight is capped at gamma / SNR, so
    training time goes to the noisy levels where objects, colours and layout are decided.
    For v-prediction the target already scales with the noise, hence SNR + 1.
    """
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)


class ParamEMA:
    "An exponential moving average of a list of modules' parameters (decay warms up from 0)."

    def __init__(self, modules, decay: float = 0.999):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_params(self):
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def train_unet(unet, text_encoder, tokenizer, latents, captions, scheduler, steps, batch_size, lr, gen, p_uncond=0.1,
               snr_gamma: float = 5.0, ema_decay: float = 0.999, warmup: int = 100):
    """Train the UNet and text encoder together; at the end both hold the EMA of their weights.

    snr_gamma: Min-SNR-gamma loss weighting (0 turns it off); ema_decay: 0 keeps the raw weights.
    """
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty_ids, ids = ids[-1], ids[:-1]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    alphas = scheduler.alphas_cumprod
    unet.train(), text_encoder.train()
    averaged = ParamEMA([unet, text_encoder], ema_decay) if ema_decay > 0 else None
    smooth_loss = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup)
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]  # (B, C, h, w), already scaled
        tok = ids[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        tok[drop] = empty_ids
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text_encoder(tok).last_hidden_state  # (B, 77, D)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = noise if scheduler.config.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if snr_gamma > 0:
            per_sample = per_sample * min_snr_weights(alphas[t], snr_gamma, scheduler.config.prediction_type)
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if averaged is not None:
            averaged.update()
        smooth_loss = loss.item() if smooth_loss is None else LOSS_SMOOTHING * smooth_loss + (1 - LOSS_SMOOTHING) * loss.item()
        if step % LOG_EVERY == 0 or step == steps - 1:
            logger.info(f"unet step {step:5d}/{steps} loss {smooth_loss:.4f}")
    if averaged is not None:
        averaged.copy_to_params()
    unet.eval(), text_encoder.eval()


TRAINING_FILE = "training.json"  # what the model was trained on, read by diffedit_helpers.preflight


def training_record(captions, image_size: int = IMAGE_SIZE) -> dict:
    "What a model trained on these captions knows: its image size and the words of its captions."
    words = sorted({w for c in captions for w in re.findall(r"[^\W_]+", c.lower())})
    return {"image_size": [image_size, image_size], "about": "shapes-world scenes (captions like 'a red striped circle on grass')",
            "words": words}


def save_folder(out, comps, scaling_factor, dtype=torch.float16, captions=None, image_size: int = IMAGE_SIZE):
    """Save in diffusers format (safetensors), weights stored in `dtype` to keep the package small;
    with the training `captions`, also training.json (`training_record`)."""
    import diffusers

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    comps["vae"].register_to_config(scaling_factor=float(scaling_factor))
    for name in ("vae", "unet", "text_encoder"):
        comps[name].to(dtype).save_pretrained(tmp / name, safe_serialization=True)
        comps[name].to(torch.float32)
    prefix_text_encoder_keys(tmp / "text_encoder")
    tok_dir = tmp / "tokenizer"
    tok_dir.mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "SOURCE.md"):
        if (TOKENIZER_SOURCE / f).exists():
            shutil.copy(TOKENIZER_SOURCE / f, tok_dir / f)
    comps["scheduler"].save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if captions is not None:
        (tmp / TRAINING_FILE).write_text(json.dumps(training_record(captions, image_size), indent=1) + "\n")
    for name in ("vae", "unet", "text_encoder"):  # keep tokenizer sources if out is the bundle itself
        if (out / name).exists():
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        dest = out / child.name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        shutil.move(str(child), str(dest))
    tmp.rmdir()


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the tiny shapes-world model (CPU).")
    p.add_argument("--out", required=True, help="output folder (diffusers format)")
    p.add_argument("--scenes", type=int, default=16000)
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--unet-steps", type=int, default=5800)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR-gamma loss weighting; 0 turns it off")
    p.add_argument("--ema-decay", type=float, default=0.999, help="save the EMA of the weights; 0 saves the raw ones")
    p.add_argument("--seed", type=int, default=0)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--vae-from", default=None, help="reuse the VAE of this folder (skip stage 1)")
    start.add_argument("--init-from", default=None,
                   help="continue training this folder's model: its VAE and latent scaling are kept (stage 1 skipped), "
                        "its UNet and text encoder are the starting weights of stage 3")
    p.add_argument("--warmup", type=int, default=100, help="UNet steps of linear learning-rate warm-up")
    args = p.parse_args(argv)
    if Path(args.out).resolve() != Path(TOKENIZER_SOURCE).parent.resolve() and Path(args.out).exists() and any(Path(args.out).iterdir()):
        p.error(f"--out {args.out!r} exists and is not empty; choose a new folder")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ElapsedFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train(args)
    finally:
        logger.removeHandler(handler)


def load_trained(folder, comps):
    "Replace the VAE, UNet and text encoder of `comps` by a saved model's (float32); returns its latent scaling factor."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    comps["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    comps["unet"] = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    comps["text_encoder"] = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    return comps["vae"].config.scaling_factor


def train(args):
    "The three stages with the parsed options; the model is saved to args.out."
    gen = torch.Generator().manual_seed(args.seed)
    comps = build_components(seed=args.seed)
    images, captions = make_scenes(args.scenes)
    logger.info(f"rendered {len(images)} scenes")
    scaling = None
    if args.init_from:
        scaling = load_trained(args.init_from, comps)
        logger.info(f"continuing from {args.init_from} (latent scaling factor {scaling:.4f})")
    elif args.vae_from:
        from diffusers import AutoencoderKL

        comps["vae"] = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae", torch_dtype=torch.float32)
    else:
        train_vae(comps["vae"], images, args.vae_steps, args.vae_batch, args.lr, gen)
    raw = encode_all(comps["vae"], images)
    scaling = scaling or 1.0 / raw.std().item()
    latents = raw * scaling
    logger.info(f"encoded latents {tuple(latents.shape)}, std {raw.std().item():.3f} -> scaling factor {scaling:.4f}")
    train_unet(comps["unet"], comps["text_encoder"], comps["tokenizer"], latents, captions, comps["scheduler"],
               args.unet_steps, args.unet_batch, args.lr, gen, snr_gamma=args.snr_gamma, ema_decay=args.ema_decay,
               warmup=args.warmup)
    save_folder(args.out, comps, scaling, captions=captions, image_size=images.shape[1])
    logger.info(f"saved to {args.out}")


if __name__ == "__main__":
    main()
