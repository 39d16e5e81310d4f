"""Command line: `python -m diffedit_helpers edit IMAGE --source ... --target ... --out DIR`
(`--mask FILE` edits inside that mask, `--mask-only` stops after step 1),
`python -m diffedit_helpers batch JOBS.jsonl --out DIR` (many edits, see `batch`), and
`python -m diffedit_helpers demo` (a shapes-world horse -> zebra with the bundled model).

Errors are one line on stderr and a non-zero exit, never a traceback; Ctrl-C prints
`interrupted` and exits 130. Existing files are never overwritten unless --overwrite is given,
inputs never, and every output is written whole or not at all (`outputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from .config import (ConfigError, DiffEditConfig, DiffEditWarning, add_config_arguments, check_for_image, config_from_args,
                     given_settings, with_option)
from .outputs import check_destinations, check_not_input, check_out_folder, clean_stale, save_all, save_new

OUTPUT_FILES = ("mask.png", "edited.png", "overview.png")
MASK_ONLY_FILES = ("mask.png", "difference_map.png")  # --mask-only
# the demo's settings, also those of the README picture (tools/make_readme_picture.py): guidance 12 and the
# first seed whose zebra passes the success check (world.metrics.edit_success; seeds 0-16 fail it)
DEMO_GUIDANCE, DEMO_SEED = 12.0, 17
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes
INTERRUPTED = 130  # the shell's status for a program stopped by Ctrl-C (128 + SIGINT)


def _add_edit_options(p: argparse.ArgumentParser, overwrite: bool = True):
    p.add_argument("--model", default="bundled", help="'bundled', a local diffusers SD folder, or a hub id (default: bundled)")
    add_config_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator (default 0; batch: of a job that gives none)")
    p.add_argument("--fit", choices=("error", "resize", "crop"), default="error",
                   help="what to do when a side is not a multiple of the VAE scale factor (default: error)")
    p.add_argument("--size", type=int, default=None,
                   help="shrink a larger picture so that its longer side is at most this many pixels (implies --fit resize)")
    p.add_argument("--device", default="auto", help="torch device: cpu, cuda, cuda:1, ... (default auto: the GPU when "
                                                   "this torch can run on it, else the CPU; batch: the one Accelerate gives each process)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="weights' precision (default auto: float16 on a GPU, float32 on the CPU and for the bundled model)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_inputs(image, source: str, target: str, out_paths: list[Path], config=None, mask=None,
                 kernels=("blur", "feather")):
    """The prompts, the image file and the settings measured in pixels (those of `kernels`: the
    options given; a default that does not fit a tiny image is left to the model's own size check),
    checked before a model is loaded; an input (the image, a mask file) is never an output (by path or by inode)."""
    from .images import to_rgb
    from .text import check_prompt

    check_prompt("--source", source, allow_empty=True)
    check_prompt("--target", target)
    for p in out_paths:
        check_not_input(p, [f for f in (image, mask) if f is not None])
    picture = to_rgb(image, "image")
    if config is not None:
        check_for_image(config, *picture.size, kernels=kernels)
    return picture


def check_seed(seed: int) -> int:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"--seed must be an integer in [0, 2**64 - 1], got {seed}")
    return seed


def check_outputs(out, overwrite: bool, names=OUTPUT_FILES) -> list[Path]:
    """The output paths in `out`; refuse (before any model work) if `out` is unusable, if one is a folder,
    or if one exists and overwrite is off. What a killed earlier run left half-saved is removed first."""
    out = check_out_folder(out)
    paths = [out / f for f in names]
    clean_stale(out, names)  # what a killed save left: its temporary files, and a set it had only partly placed
    check_destinations(paths)
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already holds {', '.join(existing)}; choose a new folder or pass --overwrite")
    return paths


def fresh_folder(base) -> Path:
    "base, or base-2, base-3, ...: the first that does not exist yet."
    base = check_out_folder(base)
    if not base.exists():
        return base
    i = 2
    while (base.parent / f"{base.name}-{i}").exists():
        i += 1
    return base.parent / f"{base.name}-{i}"


def run_edit(image, source, target, out, args) -> Path:
    import torch

    from PIL import Image

    from .edit import diffedit, difference_map
    from .inputs import fit_inputs
    from .mask import make_mask, user_mask
    from .models import load_model, resolve_device, resolve_dtype
    from .plotting import overview

    config = config_from_args(args)  # the options checked now; laid over the model's own defaults once it is loaded
    mask, mask_only = getattr(args, "mask", None), getattr(args, "mask_only", False)
    if mask is not None and mask_only:
        raise ValueError("--mask and --mask-only exclude each other: --mask skips the step --mask-only runs")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, args.model)
    check_seed(args.seed)
    paths = check_outputs(out, args.overwrite, MASK_ONLY_FILES if mask_only else OUTPUT_FILES)
    given = [k for k in ("blur", "feather") if k in given_settings(args)]
    picture = check_inputs(image, source, target, paths, config, mask, kernels=given)
    if mask is not None:  # readable and at the image's size, before the model loads
        user_mask(mask, (picture.height, picture.width), "--mask")
    inputs = [f for f in (image, mask) if f is not None]
    fit = "resize" if args.size is not None and args.fit == "error" else args.fit
    model = load_model(args.model, device=device, dtype=dtype)
    config = config_from_args(args, DiffEditConfig.for_model(model), quiet=True)  # Stable Diffusion's mask rule on an SD model
    gen = torch.Generator().manual_seed(args.seed)  # drawn on the CPU: the same noise on any device
    out = paths[0].parent
    if mask_only:  # step 1 alone: the map and the mask the edit would use
        diff_map = difference_map(model, picture, source, target, config, generator=gen, fit=fit, max_side=args.size)
        found = make_mask(diff_map, config.threshold, config.blur, config.fill_holes)
        pictures = [Image.fromarray(found.astype("uint8") * 255), Image.fromarray((diff_map * 255).round().astype("uint8"))]
        out.mkdir(parents=True, exist_ok=True)
        save_all(zip(pictures, paths), args.overwrite, inputs=inputs)
        return out
    picture, mask = fit_inputs(model, picture, mask, fit=fit, max_side=args.size)
    result = diffedit(model, picture, source, target, config, generator=gen, progress=not args.quiet, mask=mask)
    out.mkdir(parents=True, exist_ok=True)
    save_all(zip([result.mask_image, result.image, overview(result)], paths), args.overwrite, inputs=inputs)
    return out


def run_demo(args) -> Path:
    "The demo scene written as input.png into a new folder (or --out with --overwrite), then edited."
    from .world.shapes import horse_scene, make_edit, render

    scene = horse_scene()
    edit = make_edit(scene, "pattern")
    out = fresh_folder(args.out) if not args.overwrite else check_out_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    input_path = out / "input.png"
    picture = render(scene)[0]
    if not is_picture(input_path, picture):  # a demo scene already there is reused; anything else is the user's
        try:
            save_new(picture, input_path)
        except FileExistsError:
            raise FileExistsError(f"--out {str(out)!r} already holds an input.png that is not the demo scene; "
                                  f"choose another folder") from None
    print(f"scene: {edit.source_prompt!r} -> {edit.target_prompt!r} (guidance {args.guidance:g}, seed {args.seed})")
    return run_edit(input_path, edit.source_prompt, edit.target_prompt, out, args)


def is_picture(path: Path, picture) -> bool:
    "True if `path` is a readable image file with exactly `picture`'s pixels."
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size == picture.size and np.array_equal(np.asarray(im.convert("RGB")), np.asarray(picture))
    except (OSError, ValueError):
        return False


def print_warning(message, category, filename, lineno, file=None, line=None):
    "How the CLI shows a warning: the package's as one `warning: ...` line, at once; the libraries' not at all."
    if issubclass(category, DiffEditWarning):
        print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def said_warnings():
    "While a command runs, every warning is shown (`print_warning`); the program's own settings, put back when it returns."
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = print_warning
        yield


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffedit_helpers", description="DiffEdit: edit the part of an image two prompts disagree on.")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("edit", help="edit an image file")
    e.add_argument("image", help="input image file")
    e.add_argument("--source", required=True, help="prompt describing the image now")
    e.add_argument("--target", required=True, help="prompt describing the image wanted")
    e.add_argument("--out", required=True, help="folder for mask.png, edited.png, overview.png")
    e.add_argument("--mask", default=None, metavar="FILE",
                   help="edit inside this mask (grey image at the image's size, white = edit) instead of computing one")
    e.add_argument("--mask-only", action="store_true",
                   help="stop after step 1: write mask.png and difference_map.png only")
    _add_edit_options(e)
    b = sub.add_parser("batch", help="run the edits of a JSON-lines file (under `accelerate launch`: split across processes)")
    b.add_argument("jobs", help="JSON-lines file, one job a line: image, source, target, optional settings, seed, id, mask")
    b.add_argument("--out", required=True, help="folder for <id>/edited.png, <id>/mask.png and manifest.jsonl")
    b.add_argument("--retry-failed", action="store_true", help="run again the jobs the manifest records as failed")
    _add_edit_options(b, overwrite=False)
    d = sub.add_parser("demo", help="edit a shapes-world horse into a zebra with the bundled model "
                                    f"(defaults here: --guidance {DEMO_GUIDANCE:g} --seed {DEMO_SEED}, as in the README picture)")
    d.add_argument("--out", default="outputs/demo", help="folder (a new one next to it if it exists; default outputs/demo)")
    _add_edit_options(d)
    d.set_defaults(guidance=DEMO_GUIDANCE, seed=DEMO_SEED)
    args = parser.parse_args(argv)
    if args.command == "batch":
        from .batch import main as batch_main

        with said_warnings():
            return batch_main(args)
    try:
        with said_warnings():
            if args.command == "edit":
                out = run_edit(args.image, args.source, args.target, args.out, args)
            else:
                out = run_demo(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, TypeError, FileExistsError, OSError, RuntimeError) as err:
        if isinstance(err, ConfigError):
            err = with_option(err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = MASK_ONLY_FILES if getattr(args, "mask_only", False) else OUTPUT_FILES
    print(f"wrote {', '.join(names)} to {out}/")
    return 0
