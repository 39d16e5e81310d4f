"""Held-out quality: how well DiffEdit finds and makes shapes-world edits it was never trained on.

    python -m diffedit_helpers.world.evaluate --scenes 50              # table by edit kind
    python -m diffedit_helpers.world.evaluate --scenes 50 --sweep      # mean IoU over thresholds x blurs

The scenes come from seeds `HELD_OUT_SEED` on (the training script never uses them), so the
true region of every edit is known exactly. Each edit is measured by `metrics`: mask IoU
against the true region, background PSNR outside it, and the success judge of its kind.
`edit_once` and `measure` are the one path from an edit to a row (render -> fresh generator
-> diffedit -> measures), shared with the benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ..config import DiffEditConfig, add_config_arguments, check_kernel, check_threshold, config_from_args
from ..edit import diffedit, difference_map
from ..mask import make_mask
from .metrics import background_psnr, edit_success, mask_iou
from .shapes import EDIT_KINDS, HELD_OUT_SEED, Edit, make_edit, random_scene, render

EVAL_KINDS = ("colour", "shape", "pattern")  # the kinds the mask IoU target is stated over


# ----------------------------------------------------------------------------- the edits
TUNE_SEED = HELD_OUT_SEED + 500_000  # settings are tuned on scenes from here on, never on held-out ones


def held_out_edits(n_scenes: int = 50, kinds=EVAL_KINDS, first_seed: int = HELD_OUT_SEED, cycle: bool = False) -> list[Edit]:
    """Edits of object 0 of the first `n_scenes` scenes with an object, seeds `first_seed`, `first_seed + 1`, ...

    Every scene gets every kind in `kinds` (n_scenes * len(kinds) edits), or with
    cycle=True one kind per scene in turn (n_scenes edits). Deterministic.
    """
    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 1:
        raise ValueError(f"n_scenes must be an integer >= 1, got {n_scenes!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty selection of {EDIT_KINDS}, got {kinds!r}")
    edits, seed, used = [], first_seed, 0
    while used < n_scenes:
        scene = random_scene(seed)
        if scene.things:
            chosen = (kinds[used % len(kinds)],) if cycle else kinds
            edits += [make_edit(scene, kind, seed=seed, index=0) for kind in chosen]
            used += 1
        seed += 1
    return edits


# ----------------------------------------------------------------------------- running DiffEdit
def edit_once(model, edit: Edit, config: DiffEditConfig, seed: int = 0, on_stage=None):
    """Render the edit's source scene and run `diffedit` on it with a fresh generator seeded with
    `seed`. Returns (input image, DiffEditResult, wall seconds of the diffedit call)."""
    image, _ = render(edit.source)
    t0 = time.perf_counter()
    result = diffedit(model, image, edit.source_prompt, edit.target_prompt, config,
                      generator=torch.Generator().manual_seed(seed), progress=False, on_stage=on_stage)
    return image, result, time.perf_counter() - t0


def measure(edit: Edit, image, edited, mask, seconds: float, /, **extra) -> dict:
    """One row of measures of an edited image (any method's): kind, prompts, iou (mask vs the
    true region), psnr (background, dB), success (bool), seconds; `extra` keys go first."""
    truth = edit.true_mask()
    return dict(**extra, kind=edit.kind, source_prompt=edit.source_prompt, target_prompt=edit.target_prompt,
                iou=mask_iou(mask, truth), psnr=background_psnr(edited, image, truth),
                success=edit_success(edited, edit), seconds=seconds)


def edit_row(model, edit: Edit, config: DiffEditConfig, seed: int = 0, /, **extra) -> tuple[dict, object]:
    "`edit_once` then `measure`: (row, DiffEditResult)."
    image, result, seconds = edit_once(model, edit, config, seed)
    return measure(edit, image, result.image, result.mask, seconds, **extra), result


def evaluate(model, edits, config: DiffEditConfig | None = None, seed: int = 0, progress: bool = False) -> list[dict]:
    """Run `diffedit` on every edit (a fresh torch.Generator seeded with `seed` each) and measure it.

    Returns one row per edit: kind, prompts, iou (mask vs true region), psnr (background,
    dB), success (bool), seconds (wall time of the diffedit call).
    """
    config = (config or DiffEditConfig()).validate()
    rows = []
    for i, edit in enumerate(edits):
        rows.append(edit_row(model, edit, config, seed)[0])
        if progress:
            print(f"  {i + 1}/{len(edits)} {edit.kind:8s} iou {rows[-1]['iou']:.2f}", file=sys.stderr, flush=True)
    return rows


def difference_maps(model, edits, config: DiffEditConfig | None = None, seed: int = 0) -> list[np.ndarray]:
    "The difference map of every edit (the mask stage only), each with a fresh generator seeded with `seed`."
    config = (config or DiffEditConfig()).validate()
    maps = []
    for edit in edits:
        image, _ = render(edit.source)
        maps.append(difference_map(model, image, edit.source_prompt, edit.target_prompt, config,
                                   torch.Generator().manual_seed(seed)))
    return maps


def sweep(maps, truths, thresholds, blurs, fill_holes: bool = True) -> np.ndarray:
    "Mean mask IoU for every (threshold, blur), re-masking cached maps: (len(thresholds), len(blurs))."
    out = np.zeros((len(thresholds), len(blurs)))
    for j, blur in enumerate(blurs):
        for i, thr in enumerate(thresholds):
            out[i, j] = np.mean([mask_iou(make_mask(m, thr, blur, fill_holes), t) for m, t in zip(maps, truths)])
    return out


# ----------------------------------------------------------------------------- tables
def summarise(rows: list[dict], kinds=None) -> dict:
    """Per kind and overall: n, mean iou, success rate, mean psnr, mean seconds.
    "overall" is over the EVAL_KINDS rows (colour, shape, pattern); "all" over every row."""
    kinds = kinds or sorted({r["kind"] for r in rows}, key=EDIT_KINDS.index)

    def stats(sel):
        if not sel:
            return dict(n=0, iou=float("nan"), success=float("nan"), psnr=float("nan"), seconds=float("nan"))
        return dict(n=len(sel), iou=float(np.mean([r["iou"] for r in sel])),
                    success=float(np.mean([r["success"] for r in sel])),
                    psnr=float(np.mean([r["psnr"] for r in sel])), seconds=float(np.mean([r["seconds"] for r in sel])))

    table = {k: stats([r for r in rows if r["kind"] == k]) for k in kinds}
    table["overall"] = stats([r for r in rows if r["kind"] in EVAL_KINDS])
    if any(r["kind"] not in EVAL_KINDS for r in rows):
        table["all"] = stats(rows)
    return table


def format_summary(table: dict) -> str:
    lines = [f"{'kind':10s} {'n':>4s} {'mask IoU':>9s} {'success':>8s} {'bg PSNR':>8s} {'s/edit':>7s}"]
    for name, s in table.items():
        lines.append(f"{name:10s} {s['n']:4d} {s['iou']:9.3f} {s['success']:8.1%} {s['psnr']:8.2f} {s['seconds']:7.2f}")
    return "\n".join(lines)


def format_targets(table: dict, iou_target: float = 0.75, colour_target: float = 0.90) -> str:
    "The issue's two targets, met or not."
    out = []
    if table.get("overall", {}).get("n"):
        iou = table["overall"]["iou"]
        out.append(f"mean mask IoU over {'/'.join(EVAL_KINDS)}: {iou:.3f} (target >= {iou_target}): {'met' if iou >= iou_target else 'MISSED'}")
    if table.get("colour", {}).get("n"):
        s = table["colour"]["success"]
        out.append(f"colour edits that took the target colour: {s:.1%} (target >= {colour_target:.0%}): "
                   f"{'met' if s >= colour_target else 'MISSED'}")
    return "\n".join(out)


def format_sweep(grid: np.ndarray, thresholds, blurs) -> str:
    lines = ["mean mask IoU, rows: threshold, columns: blur kernel (px)",
             f"{'thr':>5s} " + " ".join(f"{b:>6d}" for b in blurs)]
    for i, t in enumerate(thresholds):
        lines.append(f"{t:5.2f} " + " ".join(f"{v:6.3f}" for v in grid[i]))
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    lines.append(f"best: threshold {thresholds[i]:.2f}, blur {blurs[j]}: mean IoU {grid[i, j]:.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def _floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffedit_helpers.world.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes with an object (default 50)")
    p.add_argument("--kinds", default=",".join(EVAL_KINDS), help=f"comma-separated edit kinds from {EDIT_KINDS}")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED, help=f"first scene seed (default {HELD_OUT_SEED})")
    p.add_argument("--seed", type=int, default=0, help="seed of each edit's torch.Generator (default 0)")
    p.add_argument("--model", default="bundled", help="'bundled' or a local diffusers SD folder")
    add_config_arguments(p)
    p.add_argument("--sweep", action="store_true", help="mean IoU over --thresholds x --blurs (mask stage only)")
    p.add_argument("--thresholds", type=_floats, default=[round(0.1 + 0.05 * i, 2) for i in range(15)])
    p.add_argument("--blurs", type=_ints, default=[0, 3, 5, 7, 9, 13])
    p.add_argument("--progress", action="store_true", help="one line per edit on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        edits = held_out_edits(args.scenes, kinds, args.first_seed)
        config = config_from_args(args)
        for t in args.thresholds:
            check_threshold(t, "--thresholds")
        for b in args.blurs:
            check_kernel("--blurs", b)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ..models import load_model

    model = load_model(args.model)
    config = config_from_args(args, DiffEditConfig.for_model(model), quiet=True)
    print(f"{len(edits)} held-out edits of {args.scenes} scenes (seeds from {args.first_seed}), model {args.model!r}, "
          f"threshold {config.threshold}, blur {config.blur}, fill_holes {config.fill_holes}, encoding {config.encoding}")
    if args.sweep:
        t0 = time.perf_counter()
        maps = difference_maps(model, edits, config, args.seed)
        truths = [e.true_mask() for e in edits]
        grid = sweep(maps, truths, args.thresholds, args.blurs, config.fill_holes)
        print(format_sweep(grid, args.thresholds, args.blurs))
        for kind in kinds:
            sel = [i for i, e in enumerate(edits) if e.kind == kind]
            g = sweep([maps[i] for i in sel], [truths[i] for i in sel], args.thresholds, args.blurs, config.fill_holes)
            i, j = np.unravel_index(np.argmax(g), g.shape)
            print(f"  {kind:8s} best threshold {args.thresholds[i]:.2f}, blur {args.blurs[j]}: {g[i, j]:.3f}")
        print(f"({time.perf_counter() - t0:.0f} s, {len(edits)} difference maps, computed once)")
        return 0
    rows = evaluate(model, edits, config, args.seed, progress=args.progress)
    table = summarise(rows, kinds)
    print(format_summary(table))
    print(format_targets(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
