"""Held-out quality: how well DiffEdit finds and makes shapes-world edits it was never trained on.

    python -m diffedit_helpers.evaluate --scenes 50              # table by edit kind
    python -m diffedit_helpers.evaluate --scenes 50 --sweep      # mean IoU over thresholds x blurs

The scenes come from seeds `HELD_OUT_SEED` on (the training script never uses them), so the
true region of every edit is known exactly. Three measures per edit:
  - mask IoU: the mask DiffEdit found against the true region (the object before and after);
  - background PSNR: edited against input, over the pixels outside the true region;
  - success: a deterministic check of the edited pixels against the world's known colours
    and shapes (did the object take the target colour, the target shape, the target pattern,
    did it disappear). Every check passes on the target scene's own render and fails on the
    unedited input (tests/test_evaluate.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from .config import DiffEditConfig
from .edit import diffedit, difference_map
from .mask import make_mask
from .shapes import BACKGROUND_COLOURS, COLOURS, EDIT_KINDS, Edit, Thing, make_edit, paint, pattern_colour, random_scene, render, shape_mask
from .train import HELD_OUT_SEED

EVAL_KINDS = ("colour", "shape", "pattern")  # the kinds the mask IoU target is stated over
PSNR_CAP = 60.0  # dB reported when the background is untouched (zero error)
BACKGROUND_LABEL = "background"


# ----------------------------------------------------------------------------- the edits
def held_out_edits(n_scenes: int = 50, kinds=EVAL_KINDS, start: int = HELD_OUT_SEED, cycle: bool = False) -> list[Edit]:
    """Edits of object 0 of the first `n_scenes` scenes with an object, seeds `start`, `start + 1`, ...

    Every scene gets every kind in `kinds` (n_scenes * len(kinds) edits), or with
    cycle=True one kind per scene in turn (n_scenes edits). Deterministic.
    """
    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 1:
        raise ValueError(f"n_scenes must be an integer >= 1, got {n_scenes!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty selection of {EDIT_KINDS}, got {kinds!r}")
    edits, seed, used = [], start, 0
    while used < n_scenes:
        scene = random_scene(seed)
        if scene.things:
            chosen = (kinds[used % len(kinds)],) if cycle else kinds
            edits += [make_edit(scene, kind, seed=seed, index=0) for kind in chosen]
            used += 1
        seed += 1
    return edits


# ----------------------------------------------------------------------------- metrics
def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    "Intersection over union of two boolean masks of the same shape; two empty masks give 1.0."
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {pred.shape} and {true.shape}")
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def background_psnr(edited, source, true_mask: np.ndarray) -> float:
    """PSNR in dB (peak 255) of `edited` against `source` over the pixels outside `true_mask`.

    edited, source: PIL images or (H, W, 3) arrays of the same size; true_mask: (H, W) bool.
    An untouched background gives PSNR_CAP rather than infinity, so means stay finite.
    """
    a, b = np.asarray(edited, dtype=np.float64), np.asarray(source, dtype=np.float64)
    outside = ~np.asarray(true_mask, dtype=bool)
    if a.shape != b.shape or a.shape[:2] != outside.shape:
        raise ValueError(f"edited {a.shape}, source {b.shape} and true_mask {outside.shape} must match in size")
    if not outside.any():
        raise ValueError("true_mask covers the whole image: there is no background to compare")
    mse = float(((a - b) ** 2)[outside].mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def _segment(px: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Project colours px (..., 3) on the segments a -> b, (K, 3) each: the position t in [0, 1]
    along each segment and the distance to it, both (..., K)."""
    d = b - a  # (K, 3)
    t = np.clip(((px[..., None, :] - a) * d).sum(-1) / (d * d).sum(-1), 0, 1)  # (..., K)
    return t, np.linalg.norm(px[..., None, :] - (a + t[..., None] * d), axis=-1)


def colour_labels(image, background: str, along: float = 0.5) -> np.ndarray:
    """Per pixel, the name of the nearest known colour: a palette colour (`shapes.COLOURS`) or
    "background" (the scene background's own base colours). (H, W, 3) -> (H, W) str.

    A decoded image blurs an object's stripes or dots into its colour, so the distance to a
    palette colour c is measured to the segment between c and its pattern colour, with the
    way along the segment at `along` of its length: a red-white mix is still "red", a white
    pixel stays "white".
    """
    names = list(COLOURS)
    main = np.array([COLOURS[n] for n in names], np.float32)  # (K, 3)
    second = np.array([COLOURS[pattern_colour(n)] for n in names], np.float32)  # (K, 3)
    px = np.asarray(image, dtype=np.float32)[..., :3]  # (H, W, 3)
    t, off = _segment(px, main, second)  # (H, W, K) each
    cost = off + along * t * np.linalg.norm(second - main, axis=-1)  # (H, W, K)
    refs = np.array(BACKGROUND_COLOURS[background], np.float32)  # (R, 3)
    cost_bg = np.linalg.norm(px[..., None, :] - refs, axis=-1)  # (H, W, R)
    labels = np.array(names + [BACKGROUND_LABEL] * len(refs))
    return labels[np.concatenate([cost, cost_bg], axis=-1).argmin(-1)]


def main_colour_mask(thing: Thing, size: int) -> np.ndarray:
    "Where the object shows its own colour (its shape minus stripes or dots): (size, size) bool."
    own = np.all(paint(thing, size) == np.array(COLOURS[thing.colour], np.float32), axis=-1)
    return shape_mask(thing, size) & own


def _fraction(labels, where, name) -> float:
    return float((labels[where] == name).mean()) if where.any() else 0.0


def colour_success(edit: Edit, image, labels) -> bool:
    "Where the target object shows its colour, the most common label is the target colour."
    target = edit.target.things[edit.index]
    votes = Counter(labels[main_colour_mask(target, edit.target.size)].tolist())
    return bool(votes) and votes.most_common(1)[0][0] == target.colour


def shape_success(edit: Edit, image, labels) -> bool:
    """In the edit region, the pixels of the object's colour match the target shape (where it
    shows that colour) better than the source shape (IoU)."""
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    found = (labels == tgt.colour) & edit.true_mask()
    size = edit.source.size
    return mask_iou(found, main_colour_mask(tgt, size)) > mask_iou(found, main_colour_mask(src, size))


def pattern_share(image, thing: Thing, where: np.ndarray) -> np.ndarray:
    """Per pixel in `where`, how far its colour lies from `thing`'s colour towards its pattern
    colour, in [0, 1] (0: the object's colour, 1: the stripe/dot colour). Blurring keeps the
    mean, so the mean is the pattern's share of the area even when the stripes are soft."""
    px = np.asarray(image, dtype=np.float32)[..., :3][where]  # (N, 3)
    a = np.array([COLOURS[thing.colour]], np.float32)
    b = np.array([COLOURS[pattern_colour(thing.colour)]], np.float32)
    return _segment(px, a, b)[0][:, 0]  # (N,)


def pattern_success(edit: Edit, image, labels) -> bool:
    """Inside the object (less a 1-pixel rim), at least half of the pixels show the target's
    colour or its pattern colour and a quarter its colour (an object erased into background,
    or left in its old colour, fails), and their mean pattern share is nearer the target pattern's than the
    source pattern's (both painted in the target's colours). When the colour changes too (a
    horse <-> a zebra), the colour check must pass as well; a striped horse -> zebra edit
    keeps the stripes, so the colours alone decide it."""
    src, tgt = edit.source.things[edit.index], edit.target.things[edit.index]
    size = edit.source.size
    inside = shape_mask(tgt, size)  # a pattern edit keeps the shape
    inner = binary_erosion(inside)
    inside = inner if inner.sum() >= 10 else inside
    kept = inside & np.isin(labels, [tgt.colour, pattern_colour(tgt.colour)])
    if kept.sum() < 0.5 * inside.sum() or (inside & (labels == tgt.colour)).sum() < 0.25 * inside.sum():
        return False
    found = pattern_share(image, tgt, kept).mean()
    want_src, want_tgt = (pattern_share(paint(t, size), tgt, inside).mean() for t in (replace(src, colour=tgt.colour), tgt))
    if src.colour != tgt.colour and not colour_success(edit, image, labels):
        return False
    return bool(want_src == want_tgt or abs(found - want_tgt) < abs(found - want_src))


def removal_success(edit: Edit, image, labels, keep_limit: float = 0.25) -> bool:
    "Fewer than `keep_limit` of the pixels that showed the object's colour still show it."
    thing = edit.source.things[edit.index]
    return _fraction(labels, main_colour_mask(thing, edit.source.size), thing.colour) < keep_limit


SUCCESS_CHECKS = {"colour": colour_success, "shape": shape_success, "pattern": pattern_success, "removal": removal_success}


def edit_success(edited, edit: Edit) -> bool:
    "Did `edited` (PIL image or (H, W, 3) array) make `edit`? The check for its kind, on nearest known colours."
    arr = np.asarray(edited)
    size = edit.source.size
    if arr.shape[:2] != (size, size):
        raise ValueError(f"edited must be {size}x{size} like the scene, got {arr.shape[:2]}")
    return SUCCESS_CHECKS[edit.kind](edit, arr, colour_labels(arr, edit.source.background))


# ----------------------------------------------------------------------------- running DiffEdit
def evaluate(model, edits, config: DiffEditConfig | None = None, seed: int = 0, progress: bool = False) -> list[dict]:
    """Run `diffedit` on every edit (a fresh torch.Generator seeded with `seed` each) and measure it.

    Returns one row per edit: kind, prompts, iou (mask vs true region), psnr (background,
    dB), success (bool), seconds (wall time of the diffedit call).
    """
    config = (config or DiffEditConfig()).validate()
    rows = []
    for i, edit in enumerate(edits):
        image, _ = render(edit.source)
        truth = edit.true_mask()
        t0 = time.perf_counter()
        result = diffedit(model, image, edit.source_prompt, edit.target_prompt, config,
                          generator=torch.Generator().manual_seed(seed), progress=False)
        seconds = time.perf_counter() - t0
        rows.append(dict(
            kind=edit.kind, source_prompt=edit.source_prompt, target_prompt=edit.target_prompt,
            iou=mask_iou(result.mask, truth), psnr=background_psnr(result.image, image, truth),
            success=edit_success(result.image, edit), seconds=seconds,
        ))
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
    d = DiffEditConfig()
    p = argparse.ArgumentParser(prog="python -m diffedit_helpers.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes with an object (default 50)")
    p.add_argument("--kinds", default=",".join(EVAL_KINDS), help=f"comma-separated edit kinds from {EDIT_KINDS}")
    p.add_argument("--start", type=int, default=HELD_OUT_SEED, help=f"first scene seed (default {HELD_OUT_SEED})")
    p.add_argument("--seed", type=int, default=0, help="seed of each edit's torch.Generator (default 0)")
    p.add_argument("--model", default="bundled", help="'bundled' or a local diffusers SD folder")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--blur", type=int, default=d.blur)
    p.add_argument("--no-fill-holes", action="store_true")
    p.add_argument("--n-noise", type=int, default=d.n_noise)
    p.add_argument("--mask-strength", type=float, default=d.mask_strength)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--start-fraction", type=float, default=d.edit_start, help="edit_start: fraction of the steps skipped")
    p.add_argument("--guidance", type=float, default=d.guidance)
    p.add_argument("--encoding", choices=("noise", "inversion"), default=d.encoding)
    p.add_argument("--sweep", action="store_true", help="mean IoU over --thresholds x --blurs (mask stage only)")
    p.add_argument("--thresholds", type=_floats, default=[round(0.1 + 0.05 * i, 2) for i in range(15)])
    p.add_argument("--blurs", type=_ints, default=[0, 3, 5, 7, 9, 13])
    p.add_argument("--progress", action="store_true", help="one line per edit on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        edits = held_out_edits(args.scenes, kinds, args.start)
        config = DiffEditConfig(n_noise=args.n_noise, mask_strength=args.mask_strength, threshold=args.threshold,
                                blur=args.blur, fill_holes=not args.no_fill_holes, guidance=args.guidance,
                                steps=args.steps, edit_start=args.start_fraction, encoding=args.encoding).validate()
        for t in args.thresholds:
            if not 0 <= t <= 1:
                raise ValueError(f"--thresholds must lie in [0, 1], got {t}")
        for b in args.blurs:
            DiffEditConfig(blur=b).validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .models import load_model

    model = load_model(args.model)
    print(f"{len(edits)} held-out edits of {args.scenes} scenes (seeds from {args.start}), model {args.model!r}, "
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
