"""Speed of the drop-in: `DiffEditPipeline` against the deprecated `StableDiffusionDiffEditPipeline` it
replaces, side by side in one process, on the same components, inputs and seeded generator, with
diffusers' defaults (10 maps per mask, 50 steps, inpaint_strength 0.8, guidance 7.5).

    OMP_NUM_THREADS=1 python benchmarks/drop_in.py          # about 3 minutes on one thread

Two models: the bundled one (64x64 pictures) and a Stable Diffusion 1.5-shaped folder with random
weights (small channel counts, 128x128 pictures: SD's 8x VAE and 4-level UNet). Two measurements
each: `generate_mask` alone, and the full three-call edit (generate_mask, invert, __call__).
Repeats are interleaved (theirs, ours, theirs, ...), medians reported; the ratio is theirs / ours
(above 1: ours faster). Each pair's mask is checked equal before timing. Writes
benchmarks/results/drop_in.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from peer import load_peer
from PIL import Image

from diffedit_helpers import BUNDLED_PATH, DiffEditPipeline
from diffedit_helpers.world.sd_shaped import save_sd_folder
from diffedit_helpers.world.shapes import horse_scene, make_edit, render

RESULTS = Path(__file__).parent / "results"
TARGET = 1.8  # generate_mask: at least this many times faster
MASK = dict(num_maps_per_mask=10, num_inference_steps=50)  # diffusers' defaults


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each measurement (default 3)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def ours_like(theirs) -> DiffEditPipeline:
    "Our pipeline on the deprecated pipeline's own components (the same objects)."
    pipe = DiffEditPipeline.from_pipe(theirs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mask_call(pipe, image, source, target):
    return pipe.generate_mask(image=image, source_prompt=source, target_prompt=target,
                              generator=torch.Generator().manual_seed(0), **MASK)


def full_edit(pipe, image, source, target):
    "The documented three calls with diffusers' defaults."
    mask = mask_call(pipe, image, source, target)
    latents = pipe.invert(prompt=source, image=image, generator=torch.Generator().manual_seed(0)).latents
    return pipe(prompt=target, mask_image=mask, image_latents=latents, generator=torch.Generator().manual_seed(0)).images[0]


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated pipeline's notices
        fn(*args)
    return time.perf_counter() - t0


def compare(theirs, ours, image, source, target, repeats: int) -> dict:
    "Medians of interleaved repeats: {measurement: (theirs s, ours s)}; the masks checked equal first."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = np.array_equal(mask_call(theirs, image, source, target), mask_call(ours, image, source, target))
    out = {"mask equal": same}
    for name, fn in (("generate_mask", mask_call), ("three-call edit", full_edit)):
        times = {"theirs": [], "ours": []}
        for _ in range(repeats):
            for who, pipe in (("theirs", theirs), ("ours", ours)):
                times[who].append(timed(fn, pipe, image, source, target))
        out[name] = (statistics.median(times["theirs"]), statistics.median(times["ours"]))
    return out


def table(rows: dict, repeats: int) -> str:
    lines = [
        "# DiffEditPipeline against the deprecated StableDiffusionDiffEditPipeline",
        "",
        f"Written by `benchmarks/drop_in.py`: one process, one CPU thread (OMP_NUM_THREADS=1), torch {torch.__version__}, "
        f"{platform.machine()}; the same components, inputs and seeded generator; diffusers' defaults (10 maps per mask, "
        f"50 steps, inpaint_strength 0.8, guidance 7.5); medians of {repeats} interleaved repeats. "
        f"Ratio: theirs / ours (target for generate_mask: >= {TARGET:g}x).",
        "",
        "| model | measurement | deprecated (s) | ours (s) | ratio | same mask |",
        "|---|---|---:|---:|---:|---|",
    ]
    for model, r in rows.items():
        for name in ("generate_mask", "three-call edit"):
            theirs, ours = r[name]
            lines.append(f"| {model} | {name} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x | {'yes' if r['mask equal'] else 'NO'} |")
    lines += ["", "Why: the mask runs 2n UNet samples for n maps where the deprecated pipeline runs 4n (guidance cancels "
              "from the difference of two guided predictions sharing one unconditional prediction), and encodes the "
              "image once instead of once per map. The edit's inversion and denoising run the same UNet samples as "
              "the deprecated pipeline's, so the three-call ratio is smaller.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    edit = make_edit(horse_scene(), "pattern")
    picture = render(edit.source)[0]  # 64 x 64
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"bundled (64x64)": (str(BUNDLED_PATH), picture),
                   "SD 1.5-shaped, random weights (128x128)": (str(save_sd_folder(Path(tmp) / "sd15")),
                                                               picture.resize((128, 128), Image.BICUBIC))}
        for name, (folder, image) in folders.items():
            theirs = load_peer(folder)
            rows[name] = compare(theirs, ours_like(theirs), image, edit.source_prompt, edit.target_prompt, args.repeats)
            print(name, rows[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drop_in.md").write_text(table(rows, args.repeats))
    print(table(rows, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
