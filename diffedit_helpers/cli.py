"""Command line: `python -m diffedit_helpers edit IMAGE --source ... --target ... --out DIR`
and `python -m diffedit_helpers demo` (a shapes-world horse -> zebra with the bundled model).

Errors are one line on stderr and a non-zero exit, never a traceback. Existing files are
never overwritten unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import add_config_arguments, config_from_args

OUTPUT_FILES = ("mask.png", "edited.png", "overview.png")
# the demo's settings, also those of the README picture (tools/make_readme_picture.py): guidance 12 and the
# first seed whose zebra passes the success check (world.metrics.edit_success; seeds 0-12 fail it)
DEMO_GUIDANCE, DEMO_SEED = 12.0, 13


def _add_edit_options(p: argparse.ArgumentParser):
    p.add_argument("--model", default="bundled", help="'bundled', a local diffusers SD folder, or a hub id (default: bundled)")
    add_config_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator (default 0)")
    p.add_argument("--fit", choices=("error", "resize", "crop"), default="error",
                   help="what to do when a side is not a multiple of the VAE scale factor (default: error)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_inputs(image, source: str, target: str, out_paths: list[Path]):
    "The prompts and the image file, checked before a model is loaded; the input is never an output."
    from .images import to_rgb
    from .text import check_prompt

    check_prompt("--source", source)
    check_prompt("--target", target)
    for p in out_paths:
        if p.exists() and p.resolve() == Path(image).resolve():
            raise ValueError(f"--out {str(p.parent)!r} would overwrite the input image {str(image)!r}; choose another folder")
    return to_rgb(image, "image")


def check_outputs(out: Path, overwrite: bool) -> list[Path]:
    "The output paths in `out`; refuse (before any model work) if one exists and overwrite is off."
    paths = [out / f for f in OUTPUT_FILES]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file, not a folder")
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already holds {', '.join(existing)}; choose a new folder or pass --overwrite")
    return paths


def fresh_folder(base: Path) -> Path:
    "base, or base-2, base-3, ...: the first that does not exist yet."
    if not base.exists():
        return base
    i = 2
    while (base.parent / f"{base.name}-{i}").exists():
        i += 1
    return base.parent / f"{base.name}-{i}"


def run_edit(image, source, target, out: Path, args) -> Path:
    import torch

    from .edit import diffedit
    from .models import load_model
    from .plotting import overview

    config = config_from_args(args)
    paths = check_outputs(out, args.overwrite)
    picture = check_inputs(image, source, target, paths)
    model = load_model(args.model, device=args.device)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    result = diffedit(model, picture, source, target, config, generator=gen, fit=args.fit, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(result.mask.astype("uint8") * 255).save(paths[0])
    result.image.save(paths[1])
    overview(result).save(paths[2])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffedit_helpers", description="DiffEdit: edit the part of an image two prompts disagree on.")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("edit", help="edit an image file")
    e.add_argument("image", help="input image file")
    e.add_argument("--source", required=True, help="prompt describing the image now")
    e.add_argument("--target", required=True, help="prompt describing the image wanted")
    e.add_argument("--out", required=True, help="folder for mask.png, edited.png, overview.png")
    _add_edit_options(e)
    d = sub.add_parser("demo", help="edit a shapes-world horse into a zebra with the bundled model "
                                    f"(defaults here: --guidance {DEMO_GUIDANCE:g} --seed {DEMO_SEED}, as in the README picture)")
    d.add_argument("--out", default="outputs/demo", help="folder (a new one next to it if it exists; default outputs/demo)")
    _add_edit_options(d)
    d.set_defaults(guidance=DEMO_GUIDANCE, seed=DEMO_SEED)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.command == "edit":
                out = run_edit(args.image, args.source, args.target, Path(args.out), args)
            else:
                from .world.shapes import horse_scene, make_edit, render

                scene = horse_scene()
                edit = make_edit(scene, "pattern")
                out = fresh_folder(Path(args.out)) if not args.overwrite else Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                input_path = out / "input.png"
                render(scene)[0].save(input_path)
                print(f"scene: {edit.source_prompt!r} -> {edit.target_prompt!r} (encoding {args.encoding}, guidance {args.guidance}, seed {args.seed})")
                run_edit(input_path, edit.source_prompt, edit.target_prompt, out, args)
        for w in caught:
            if issubclass(w.category, UserWarning) and w.filename.find("diffedit_helpers") >= 0:
                print(f"warning: {w.message}", file=sys.stderr)
    except (ValueError, TypeError, FileExistsError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(OUTPUT_FILES)} to {out}/")
    return 0
