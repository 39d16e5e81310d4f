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
import contextlib
import json
import logging
import math
import re
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .sd_shaped import prefix_text_encoder_keys
from .shapes import IMAGE_SIZE, random_scene, render
from .tiny_model import ARCHITECTURES, DEFAULT_ARCHITECTURE, TOKENIZER_SOURCE, build_components

PIXEL_RANGE = 2.0  # pixels are trained in [-1, 1]: PSNR's peak is that range, 2 (peak squared 4)
L1_WEIGHT = 0.5  # the VAE's reconstruction loss: MSE + L1_WEIGHT * L1 (L1 keeps edges sharper)
LOSS_SMOOTHING = 0.98  # the logged UNet loss is an exponential average with this decay
LOG_EVERY = 100  # steps between log lines
# stage 4's defaults (the bundled model's recipe): steps, coarse-noise share, caption word dropout
TUNE_STEPS, NOISE_DISCOUNT, CAPTION_DROPOUT = 0, 0.0, 0.0

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


def learning_rate(step, total, base, warmup=100, schedule: str = "cosine"):
    """The learning rate at `step`: warm-up, then a cosine decay to 0 at `total` ("cosine"), or held at `base`
    ("constant": an open-ended run, stopped by its CPU budget, whose EMA weights are the model)."""
    if schedule == "constant":
        return base * min(1.0, (step + 1) / warmup)
    return cosine_lr(step, total, base, warmup)


def pyramid_noise(shape, generator, discount: float = 0.0) -> torch.Tensor:
    """Gaussian noise (B, C, h, w) with extra noise at coarser scales, rescaled to unit variance.

    discount 0 is plain white noise. Otherwise white noise at h x w plus white noise drawn at
    h/2, h/4, ... down to 1 x 1, upsampled bilinearly and weighted discount, discount**2, ...:
    at a given timestep a region's mean colour is hidden as well as its texture, so the model
    learns to take colours from the caption and outlines from the picture. Only training
    draws it; sampling and editing noise stays white.
    """
    noise = torch.randn(shape, generator=generator)
    if discount <= 0:
        return noise
    b, c, h, w = shape
    level, size = 1, min(h, w) // 2
    while size >= 1:
        coarse = torch.randn((b, c, size, size), generator=generator)  # (B, C, s, s)
        noise = noise + discount**level * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        level, size = level + 1, size // 2
    return noise / noise.std(dim=(1, 2, 3), keepdim=True)  # each sample back to unit variance


def caption_variant(scene, rng: np.random.Generator, p_drop: float = 0.0) -> str:
    """The scene's caption with words left out, as real captions leave things unsaid: each
    object's colour word and the background phrase are each dropped with probability `p_drop`
    ("a striped square", "a red circle"; a zebra without its colour is "a striped horse").
    Pattern words stay, so a caption without one still means a plain object."""
    if p_drop <= 0 or not scene.things:
        return scene.caption
    phrases = []
    for t in scene.things:
        if rng.random() >= p_drop:
            phrases.append(t.phrase)
            continue
        name = " ".join(([] if t.pattern == "plain" else [t.pattern]) + [t.shape])
        phrases.append(("an " if name[0] in "aeiou" else "a ") + name)
    caption = " and ".join(phrases)
    return caption if rng.random() < p_drop else f"{caption} on {scene.background}"


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


def tokenize(tokenizer, captions) -> torch.Tensor:
    "Captions -> token ids (N, tokenizer.model_max_length), padded as the pipelines pad them."
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def save_checkpoint(path, step, modules, opt, averaged, gen, smooth_loss, cpu_seconds: float = 0.0):
    "Everything training needs to go on from `step`, written whole (a temporary file, then renamed)."
    path = Path(path)
    state = dict(step=step, modules=[m.state_dict() for m in modules], opt=opt.state_dict(), gen=gen.get_state(),
                 smooth_loss=smooth_loss, ema=None if averaged is None else (averaged.shadow, averaged.updates),
                 cpu_seconds=cpu_seconds)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path, modules, opt, averaged, gen) -> tuple[int, float | None, float]:
    "Restore what `save_checkpoint` wrote; returns (the step to go on from, the logged loss, the CPU seconds spent so far)."
    state = torch.load(path, weights_only=False)
    for m, sd in zip(modules, state["modules"]):
        m.load_state_dict(sd)
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    if averaged is not None and state["ema"] is not None:
        shadow, averaged.updates = state["ema"]
        for s, v in zip(averaged.shadow, shadow):
            s.copy_(v)
    return state["step"], state["smooth_loss"], state.get("cpu_seconds", 0.0)


def train_unet(unet, text_encoder, tokenizer, latents, captions, scheduler, steps, batch_size, lr, gen, p_uncond=0.1,
               snr_gamma: float = 5.0, ema_decay: float = 0.999, warmup: int = 100, scenes=None,
               caption_dropout: float = 0.0, noise_discount: float = 0.0, checkpoint=None, checkpoint_every: int = 200,
               cpu_budget: float | None = None, snapshot=None, snapshot_every: float = 1800.0):
    """Train the UNet and text encoder together; at the end both hold the EMA of their weights.

    snr_gamma: Min-SNR-gamma loss weighting (0 turns it off); ema_decay: 0 keeps the raw weights.
    scenes, caption_dropout: with the training scenes, each step captions them by `caption_variant`
        (words left out with that probability) instead of the exact `captions`.
    noise_discount: the coarse-scale share of the training noise (`pyramid_noise`; 0 = white).
    checkpoint: a file written every `checkpoint_every` steps; if it exists, training goes on from it.
    cpu_budget: an open-ended run: seconds of this process's CPU time (summed over resumed runs) after which it
        stops, with the learning rate held after warm-up instead of `steps` of cosine decay.
    snapshot: called as snapshot(step, logged_loss, cpu_seconds) every `snapshot_every` CPU seconds and at the
        end, with the EMA weights in the modules (a model to probe while training goes on).
    """
    ids = tokenize(tokenizer, captions + [""])
    empty_ids, ids = ids[-1], ids[:-1]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    alphas = scheduler.alphas_cumprod
    unet.train(), text_encoder.train()
    averaged = ParamEMA([unet, text_encoder], ema_decay) if ema_decay > 0 else None
    step, smooth_loss, cpu = 0, None, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        step, smooth_loss, cpu = load_checkpoint(checkpoint, [unet, text_encoder], opt, averaged, gen)
        logger.info(f"resuming from {checkpoint} at step {step}")
    schedule = "cosine" if cpu_budget is None else "constant"
    next_snapshot = (cpu // snapshot_every + 1) * snapshot_every
    while step < steps if cpu_budget is None else cpu < cpu_budget:
        started = time.process_time()
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, steps, lr, warmup, schedule)
        # 1. a batch of latents and their captions (some left empty, for classifier-free guidance)
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]  # (B, C, h, w), already scaled
        if scenes is not None and caption_dropout > 0:
            rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))
            tok = tokenize(tokenizer, [caption_variant(scenes[i], rng, caption_dropout) for i in idx.tolist()])
        else:
            tok = ids[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        tok[drop] = empty_ids
        # 2. noise them to random timesteps
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = pyramid_noise(x0.shape, gen, noise_discount)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # 3. predict the noise (or v) and step on the weighted loss
        cond = text_encoder(tok).last_hidden_state  # (B, L, D)
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
        step, cpu = step + 1, cpu + time.process_time() - started
        last = step == steps if cpu_budget is None else cpu >= cpu_budget
        if (step - 1) % LOG_EVERY == 0 or last:
            logger.info(f"unet step {step - 1:5d}/{steps if cpu_budget is None else '-'} loss {smooth_loss:.4f} "
                        f"cpu {cpu / 3600:.2f} h")
        if checkpoint is not None and (step % checkpoint_every == 0 or last or (snapshot and cpu >= next_snapshot)):
            save_checkpoint(checkpoint, step, [unet, text_encoder], opt, averaged, gen, smooth_loss, cpu)
        if snapshot is not None and (cpu >= next_snapshot or last):
            with ema_weights(averaged, [unet, text_encoder]):
                snapshot(step, smooth_loss, cpu)
            next_snapshot = (cpu // snapshot_every + 1) * snapshot_every
    if averaged is not None:
        averaged.copy_to_params()
    unet.eval(), text_encoder.eval()


@contextlib.contextmanager
def ema_weights(averaged, modules):
    "The EMA weights in `modules` (in eval mode) inside the block; the trained weights and train mode after it."
    if averaged is None:
        yield
        return
    trained = [p.detach().clone() for p in averaged.params]
    averaged.copy_to_params()
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(averaged.params, trained):
                p.copy_(v)
        for m in modules:
            m.train()


TRAINING_FILE = "training.json"  # what the model was trained on, read by diffedit_helpers.preflight


def training_record(captions, image_size: int = IMAGE_SIZE) -> dict:
    "What a model trained on these captions knows: its image size and the words of its captions."
    words = sorted({w for c in captions for w in re.findall(r"[^\W_]+", c.lower())})
    return {"image_size": [image_size, image_size], "about": "shapes-world scenes (captions like 'a red striped circle on grass')",
            "words": words}


def save_folder(out, comps, scaling_factor, dtype=torch.float16, captions=None, image_size: int = IMAGE_SIZE,
                recipe: dict | None = None):
    """Save in diffusers format (safetensors), weights stored in `dtype` to keep the package small;
    with the training `captions`, also training.json (`training_record`, with the `recipe` if given)."""
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
        record = training_record(captions, image_size)
        if recipe is not None:
            record["recipe"] = recipe
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=1) + "\n")
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
    p.add_argument("--tune-steps", type=int, default=TUNE_STEPS,
                   help=f"stage 4: UNet steps after stage 3 with the noise and captions below (default {TUNE_STEPS})")
    p.add_argument("--tune-lr", type=float, default=3e-4, help="stage 4's peak learning rate (default 3e-4)")
    p.add_argument("--noise-discount", type=float, default=NOISE_DISCOUNT,
                   help=f"stage 4's coarse-scale share of the training noise, in [0, 1) (0: white; default {NOISE_DISCOUNT})")
    p.add_argument("--caption-dropout", type=float, default=CAPTION_DROPOUT,
                   help=f"stage 4: probability of leaving out each colour word and the background phrase (default {CAPTION_DROPOUT})")
    p.add_argument("--checkpoint-every", type=int, default=200, help="UNet steps between checkpoints (default 200)")
    p.add_argument("--arch", choices=ARCHITECTURES, default=DEFAULT_ARCHITECTURE,
                   help=f"the latent grid of a 64 px scene: {DEFAULT_ARCHITECTURE} (the bundled model's) or 32x32 (tiny_model)")
    p.add_argument("--checkpoints", default=None,
                   help="the checkpoint folder (default: beside --out, removed once the model is saved); a folder you name "
                        "is kept, with the long run's snapshots in it")
    p.add_argument("--cpu-hours", type=float, default=None,
                   help="an open-ended stage 3 instead of --unet-steps: the learning rate held after warm-up, stopped after "
                        "this many hours of this process's CPU time, summed over resumed runs")
    p.add_argument("--snapshot-minutes", type=float, default=30.0,
                   help="with --cpu-hours: CPU minutes between snapshots of the EMA weights (CHECKPOINTS/snapshots/step-N, "
                        "a model folder to probe; default 30)")
    args = p.parse_args(argv)
    if args.checkpoint_every < 1:
        p.error(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    for name in ("noise_discount", "caption_dropout"):
        if not 0 <= getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    for name in ("unet_steps", "tune_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("cpu_hours", "snapshot_minutes"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')} must be a number > 0, got {value}")
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


def checkpoint_folder(out) -> Path:
    "Where a run to `out` keeps its checkpoints (beside it, removed once the model is saved)."
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def recipe(args) -> dict:
    "The training options that made the model, as training.json records them."
    keys = ("arch", "scenes", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "cpu_hours", "lr", "snr_gamma", "ema_decay",
            "seed", "warmup", "tune_steps", "tune_lr", "noise_discount", "caption_dropout", "init_from", "vae_from")
    return {k: getattr(args, k) for k in keys}


SNAPSHOTS = "snapshots.jsonl"  # one line per snapshot of an open-ended run, in its checkpoint folder


def save_snapshot(ckpt: Path, comps, scaling, captions, run_recipe: dict, step: int, loss: float, cpu_seconds: float):
    "The model as it stands (EMA weights) to CKPT/snapshots/step-NNNNNN, and a line in CKPT/snapshots.jsonl."
    folder = ckpt / "snapshots" / f"step-{step:06d}"
    if folder.exists():
        return
    hours = round(cpu_seconds / 3600, 4)
    save_folder(folder, comps, scaling, captions=captions, recipe=dict(run_recipe, step=step, cpu_hours=hours, loss=loss))
    with open(ckpt / SNAPSHOTS, "a") as f:
        f.write(json.dumps(dict(step=step, cpu_hours=hours, loss=round(loss, 5), folder=str(folder))) + "\n")
    logger.info(f"snapshot {folder} (step {step}, {hours:.2f} CPU h)")


def train(args):
    """The stages with the parsed options; the model is saved to args.out. Each stage has its own
    seeded generator and checkpoints in `checkpoint_folder(args.out)`: a run stopped at any point
    and started again with the same options goes on where it stopped."""
    from diffusers import AutoencoderKL

    ckpt = Path(args.checkpoints).expanduser() if args.checkpoints else checkpoint_folder(args.out)
    ckpt.mkdir(parents=True, exist_ok=True)
    comps = build_components(seed=args.seed, arch=args.arch)
    images, captions = make_scenes(args.scenes)
    logger.info(f"rendered {len(images)} scenes")
    scaling = None
    # 1. the VAE: trained (and kept in the checkpoint folder), or another model's
    if args.init_from:
        scaling = load_trained(args.init_from, comps)
        logger.info(f"continuing from {args.init_from} (latent scaling factor {scaling:.4f})")
    elif args.vae_from:
        comps["vae"] = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae", torch_dtype=torch.float32)
    elif (ckpt / "vae").exists():
        comps["vae"] = AutoencoderKL.from_pretrained(ckpt / "vae", torch_dtype=torch.float32)
        logger.info(f"VAE from {ckpt / 'vae'}")
    else:
        train_vae(comps["vae"], images, args.vae_steps, args.vae_batch, args.lr, torch.Generator().manual_seed(args.seed))
        comps["vae"].save_pretrained(ckpt / "vae")
    # 2. every scene to latents once
    raw = encode_all(comps["vae"], images)
    scaling = scaling or 1.0 / raw.std().item()
    latents = raw * scaling
    logger.info(f"encoded latents {tuple(latents.shape)}, std {raw.std().item():.3f} -> scaling factor {scaling:.4f}")
    unet_args = (comps["unet"], comps["text_encoder"], comps["tokenizer"], latents, captions, comps["scheduler"])
    common = dict(snr_gamma=args.snr_gamma, ema_decay=args.ema_decay, warmup=args.warmup)
    # 3. UNet and text encoder on exact captions and white noise: a number of steps, or open-ended with snapshots
    if args.cpu_hours:
        snapshot = partial(save_snapshot, ckpt, comps, scaling, captions, recipe(args))
        train_unet(*unet_args, 0, args.unet_batch, args.lr, torch.Generator().manual_seed(args.seed + 1),
                   checkpoint=ckpt / "stage3.pt", checkpoint_every=args.checkpoint_every, cpu_budget=args.cpu_hours * 3600,
                   snapshot=snapshot, snapshot_every=args.snapshot_minutes * 60, **common)
    elif args.unet_steps:
        train_unet(*unet_args, args.unet_steps, args.unet_batch, args.lr, torch.Generator().manual_seed(args.seed + 1),
                   checkpoint=ckpt / "stage3.pt", checkpoint_every=args.checkpoint_every, **common)
    # 4. then on captions that leave words out and noise with coarse scales
    if args.tune_steps:
        scenes = [random_scene(seed) for seed in range(args.scenes)]
        train_unet(*unet_args, args.tune_steps, args.unet_batch, args.tune_lr, torch.Generator().manual_seed(args.seed + 2),
                   scenes=scenes, caption_dropout=args.caption_dropout, noise_discount=args.noise_discount,
                   checkpoint=ckpt / "stage4.pt", checkpoint_every=args.checkpoint_every, **common)
    save_folder(args.out, comps, scaling, captions=captions, image_size=images.shape[1], recipe=recipe(args))
    if not args.checkpoints:
        shutil.rmtree(ckpt)
    logger.info(f"saved to {args.out}")


if __name__ == "__main__":
    main()
