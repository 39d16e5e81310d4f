"""Which training change makes the bundled model edit better: each model on the same held-out edits.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --model bundled=diffedit_helpers/bundled --model new=runs/new
    OMP_NUM_THREADS=1 python benchmarks/ablation.py --model a=runs/a --scenes 5 --out /tmp/ablation   # a quick look

For every model (NAME=FOLDER, in the order given), with one DiffEditConfig for all of them:
  - edit success by the strict judges (`world.metrics.edit_success`) and mask IoU, on --scenes
    held-out scenes (seeds from --first-seed) times the four edit kinds, a fresh generator seeded
    0 per edit, with 95% Wilson intervals;
  - the null edit: the true object mask and the source caption as the target; the object must come
    back (judged as a colour edit to its own colour), on the same scenes;
  - horse -> zebra on the demo scene, generator seeds 0 .. --zebra-seeds - 1 (the first seeds, no
    search), judged by `world.metrics.whole_zebra` (four legs, a head, stripes across the body);
  - median seconds per edit.
Writes OUT.json (every number) and OUT.md (the table); one row per model, so rows written by
earlier runs are kept and a model run again replaces its row.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from quality import wilson_interval

from diffedit_helpers import DiffEditConfig, diffedit, load_model
from diffedit_helpers.config import add_config_arguments, config_from_args
from diffedit_helpers.world.evaluate import EVAL_KINDS, evaluate, held_out_edits
from diffedit_helpers.world.metrics import edit_success, whole_zebra
from diffedit_helpers.world.shapes import EDIT_KINDS, HELD_OUT_SEED, horse_scene, make_edit, render

RESULTS = Path(__file__).parent / "results"


def null_edits(edits):
    "Each scene's first edit turned into the null edit: the source caption as the target, judged as a colour edit."
    return [replace(e, kind="colour", target=e.source) for e in edits]


def run_null(model, edits, config: DiffEditConfig) -> list[bool]:
    "The null edit inside the true object mask: did the object come back?"
    out = []
    for e in edits:
        image = render(e.source)[0]
        r = diffedit(model, image, e.source_prompt, e.target_prompt, config, generator=torch.Generator().manual_seed(0),
                     progress=False, mask=e.true_mask())
        out.append(bool(edit_success(r.image, e)))
    return out


def run_zebras(model, config: DiffEditConfig, seeds: int) -> list[bool]:
    "The demo's horse -> zebra with generator seeds 0 .. seeds - 1, each judged by whole_zebra."
    edit = make_edit(horse_scene(), "pattern")
    image = render(edit.source)[0]
    return [bool(whole_zebra(diffedit(model, image, edit.source_prompt, edit.target_prompt, config,
                                      generator=torch.Generator().manual_seed(s), progress=False).image, edit))
            for s in range(seeds)]


def measure_model(path: str, config: DiffEditConfig, scenes: int, first_seed: int, zebra_seeds: int) -> dict:
    model = load_model(path)
    edits = held_out_edits(scenes, EDIT_KINDS, first_seed)
    t0 = time.perf_counter()
    rows = evaluate(model, edits, config)
    null = run_null(model, null_edits(edits[:: len(EDIT_KINDS)]), config)
    zebras = run_zebras(model, config, zebra_seeds)
    out = dict(path=path, minutes=(time.perf_counter() - t0) / 60, seconds_per_edit=float(np.median([r["seconds"] for r in rows])))
    for kind in EDIT_KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        out[kind] = dict(n=len(sel), success=int(sum(bool(r["success"]) for r in sel)), iou=float(np.mean([r["iou"] for r in sel])))
    out["mask_iou"] = float(np.mean([r["iou"] for r in rows if r["kind"] in EVAL_KINDS]))
    out["null"] = dict(n=len(null), success=int(sum(null)))
    out["zebra"] = dict(n=len(zebras), success=int(sum(zebras)))
    return out


def rate(cell: dict) -> str:
    lo, hi = wilson_interval(cell["success"], cell["n"])
    return f"{cell['success'] / cell['n']:.0%} ({lo:.0%}-{hi:.0%})"


def format_table(results: dict) -> str:
    head = ["model", *EDIT_KINDS, "mask IoU (colour/shape/pattern)", "null edit kept", "whole zebras", "s / edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, *(rate(r[k]) for k in EDIT_KINDS), f"{r['mask_iou']:.3f}", rate(r["null"]),
                 f"{r['zebra']['success']} of {r['zebra']['n']}", f"{r['seconds_per_edit']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER", help="a model to measure (repeat)")
    p.add_argument("--scenes", type=int, default=100, help="held-out scenes, every kind on each (default 100)")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED, help=f"first scene seed (default {HELD_OUT_SEED})")
    p.add_argument("--zebra-seeds", type=int, default=20, help="generator seeds of the demo's horse -> zebra (default 20)")
    p.add_argument("--out", type=Path, default=RESULTS / "ablation", help="OUT.json and OUT.md (default results/ablation)")
    add_config_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    models = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            print(f"error: --model must be NAME=FOLDER with an existing folder, got {item!r}", file=sys.stderr)
            return 2
        models.append((name, path))
    config = config_from_args(args)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    results = json.loads(json_path.read_text())["models"] if json_path.exists() else {}
    for name, path in models:
        print(f"{name}: {path}", flush=True)
        results[name] = measure_model(path, config, args.scenes, args.first_seed, args.zebra_seeds)
        print(format_table({name: results[name]}), flush=True)
        meta = dict(scenes=args.scenes, first_seed=args.first_seed, zebra_seeds=args.zebra_seeds, config=config.to_dict(),
                    torch=torch.__version__, machine=platform.machine())
        json_path.write_text(json.dumps(dict(meta=meta, models=results), indent=1) + "\n")
        md_path.write_text(f"# Ablation\n\n{args.scenes} held-out scenes x {len(EDIT_KINDS)} kinds (seeds from {args.first_seed}), "
                           f"strict judges, 95% Wilson intervals; settings `{config}`.\n\n{format_table(results)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
