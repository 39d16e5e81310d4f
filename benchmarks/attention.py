"""Cross-attention maps against DiffEdit's difference map as masks, on held-out shapes-world edits.
Notebook 09_successors reads the result.

    OMP_NUM_THREADS=1 python benchmarks/attention.py --overwrite          # 25 scenes x 4 kinds, about a minute
    OMP_NUM_THREADS=1 python benchmarks/attention.py --scenes 3 --out /tmp/attention.json   # a quick look

For every edit (object 0 of a held-out scene, seeds from HELD_OUT_SEED on; every kind on every scene,
the same 100 edits as benchmarks/quality.py): DiffEdit's map (the default settings, seed 0; raw and
refined) and the cross-attention map of the object's own word (its shape, or "zebra") under the source
prompt (`diffedit_helpers.attention`, the same seed), raw and refined with the same guided filter. Each
is thresholded (holes filled) and scored by IoU against the true region (the object before and after).
DiffEdit's maps use the config's threshold; the attention maps' threshold is chosen on separate scenes
(--tune-scenes, seeds from HELD_OUT_SEED + 500,000, the kinds in turn): the best mean IoU there.
Writes benchmarks/results/attention.json (and attention.md, the same as a table).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffedit_helpers import DiffEditConfig, difference_map, load_model, make_mask
from diffedit_helpers.attention import DEFAULT_DOWNSCALES, DEFAULT_STRENGTHS, attention_maps
from diffedit_helpers.mask import refine_for
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.world.evaluate import EVAL_KINDS, TUNE_SEED, held_out_edits, sweep
from diffedit_helpers.world.metrics import mask_iou
from diffedit_helpers.world.shapes import EDIT_KINDS, HELD_OUT_SEED, render

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)
MAPS = ("DiffEdit", "DiffEdit, no refinement", "attention", "attention, refined")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=25, help="held-out scenes, every kind on each (default 25)")
    p.add_argument("--tune-scenes", type=int, default=20, help="scenes the attention threshold is chosen on (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of every map's torch.Generator (default 0)")
    p.add_argument("--model", default=str(BUNDLED_PATH), help="a local diffusers SD folder (default: the bundled model)")
    p.add_argument("--out", type=Path, default=RESULTS / "attention.json", help="the JSON to write (default results/attention.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p.parse_args(argv)


def edit_maps(model, edit, config, seed) -> tuple[dict, dict]:
    "The four maps of one edit, (H, W) in [0, 1] each, and the seconds each kind of map took."
    image, _ = render(edit.source)
    t0 = time.perf_counter()
    raw = difference_map(model, image, edit.source_prompt, edit.target_prompt, config.replace(refine=False),
                         torch.Generator().manual_seed(seed))
    t1 = time.perf_counter()
    word = edit.source.things[edit.index].noun
    attn = attention_maps(model, image, edit.source_prompt, generator=torch.Generator().manual_seed(seed)).word_map(word)
    t2 = time.perf_counter()
    maps = {"DiffEdit": refine_for(model, raw, image, config), "DiffEdit, no refinement": raw,
            "attention": attn, "attention, refined": refine_for(model, attn, image, config)}
    return maps, {"DiffEdit": t1 - t0, "attention": t2 - t1}


def all_maps(model, edits, config, seed, log=None) -> tuple[dict, dict]:
    "{map name: [one (H, W) map per edit]}, {kind of map: [seconds per edit]}."
    maps, seconds = {m: [] for m in MAPS}, {"DiffEdit": [], "attention": []}
    for i, edit in enumerate(edits):
        one, secs = edit_maps(model, edit, config, seed)
        for m in MAPS:
            maps[m].append(one[m])
        for k in seconds:
            seconds[k].append(secs[k])
        if log:
            log(f"  {i + 1}/{len(edits)} {edit.kind}")
    return maps, seconds


def choose_thresholds(model, config, n_scenes, seed) -> dict:
    "The attention maps' thresholds: the best mean IoU over THRESHOLDS on the tuning scenes (kinds in turn)."
    edits = held_out_edits(n_scenes, EDIT_KINDS, first_seed=TUNE_SEED, cycle=True)
    maps, _ = all_maps(model, edits, config, seed)
    truths = [e.true_mask() for e in edits]
    return {m: float(THRESHOLDS[int(np.argmax(sweep(maps[m], truths, THRESHOLDS, [0])[:, 0]))])
            for m in ("attention", "attention, refined")}


def iou_by_kind(edits, maps, thresholds, fill_holes) -> dict:
    "{kind or 'colour + shape + pattern': {map name: mean IoU, 'n': edits}}."
    groups = [(k, (k,)) for k in EDIT_KINDS if any(e.kind == k for e in edits)]
    if all(any(e.kind == k for e in edits) for k in EVAL_KINDS):
        groups.append((" + ".join(EVAL_KINDS), EVAL_KINDS))
    out = {}
    for name, kinds in groups:
        chosen = [i for i, e in enumerate(edits) if e.kind in kinds]
        out[name] = {"n": len(chosen)}
        for m in MAPS:
            out[name][m] = float(np.mean([mask_iou(make_mask(maps[m][i], thresholds[m], 0, fill_holes), edits[i].true_mask())
                                          for i in chosen]))
    return out


def markdown(result) -> str:
    lines = ["# Cross-attention against DiffEdit's map", "",
             f"{result['edits']} edits of {result['scenes']} held-out scenes, {result['model']} model; {result['how']}. "
             f"Thresholds: " + ", ".join(f"{m} {t:g}" for m, t in result["thresholds"].items()) + ". "
             f"Seconds per map (median): DiffEdit {result['seconds']['DiffEdit']:.3f}, attention {result['seconds']['attention']:.3f}.",
             "", "| edit kind | n | " + " | ".join(f"IoU {m}" for m in MAPS) + " |", "|---|---|" + "---|" * len(MAPS)]
    for kind, row in result["iou"].items():
        lines.append(f"| {kind} | {row['n']} | " + " | ".join(f"{row[m]:.3f}" for m in MAPS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: --out {str(args.out)!r} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.scenes < 1 or args.tune_scenes < 1:
        print("error: --scenes and --tune-scenes must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_model(args.model)
    config = DiffEditConfig.for_model(model)
    thresholds = {"DiffEdit": config.threshold, "DiffEdit, no refinement": config.threshold,
                  **choose_thresholds(model, config, args.tune_scenes, args.seed)}
    edits = held_out_edits(args.scenes, EDIT_KINDS)
    maps, seconds = all_maps(model, edits, config, args.seed, log=lambda s: print(s, file=sys.stderr, flush=True))
    result = dict(
        how=f"python benchmarks/attention.py --scenes {args.scenes} --tune-scenes {args.tune_scenes} (OMP_NUM_THREADS=1)",
        model="bundled" if Path(args.model) == BUNDLED_PATH else args.model, scenes=args.scenes, edits=len(edits),
        kinds=list(EDIT_KINDS), seed=args.seed, strengths=list(DEFAULT_STRENGTHS), downscales=list(DEFAULT_DOWNSCALES),
        tune_scenes=args.tune_scenes, thresholds=thresholds, fill_holes=config.fill_holes,
        iou=iou_by_kind(edits, maps, thresholds, config.fill_holes),
        seconds={k: float(np.median(v)) for k, v in seconds.items()},
        platform=f"torch {torch.__version__}, {platform.machine()}", minutes=round((time.perf_counter() - t0) / 60, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
