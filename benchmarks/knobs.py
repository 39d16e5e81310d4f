"""The knobs of an edit, one at a time: mean mask IoU and edit success on held-out shapes-world
edits as each of mask_strength, n_noise, edit_start, guidance and the seed moves away from its
default while every other setting stays at the default. Notebook 08_knobs plots the result.

    OMP_NUM_THREADS=1 python benchmarks/knobs.py                 # 30 scenes, about 6 min on an idle core
    OMP_NUM_THREADS=1 python benchmarks/knobs.py --scenes 3 --out /tmp/knobs.json   # a quick look

Every scene is held out (seeds from HELD_OUT_SEED on); each gets one edit of its first object, the
kinds colour, shape and pattern in turn (a third each). Each setting runs `world.evaluate.evaluate` (a fresh generator per
edit): mask IoU against the true region and `world.metrics.edit_success`. A setting shared by
several knobs (the defaults) runs once. Writes benchmarks/results/knobs.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from diffedit_helpers import DiffEditConfig, load_model
from diffedit_helpers.models import BUNDLED_PATH
from diffedit_helpers.world.evaluate import EVAL_KINDS, evaluate, held_out_edits, summarise

RESULTS = Path(__file__).parent / "results"
# each knob's values; the default of each is among them
KNOBS = {
    "mask_strength": [0.2, 0.35, 0.5, 0.65, 0.8],
    "n_noise": [1, 2, 5, 10, 20],
    "edit_start": [0.0, 0.125, 0.25, 0.375, 0.5],
    "guidance": [1.0, 4.0, 7.5, 12.0, 20.0],
    "seed": [0, 1, 2, 3, 4],
}
DEFAULT_SEED = 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=30, help="held-out scenes, one edit each (default 30)")
    p.add_argument("--model", default=str(BUNDLED_PATH), help="a local diffusers SD folder (default: the bundled model)")
    p.add_argument("--out", type=Path, default=RESULTS / "knobs.json", help="the JSON to write (default results/knobs.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p.parse_args(argv)


def setting(knob: str, value, base: DiffEditConfig) -> tuple[DiffEditConfig, int]:
    "The (config, seed) of one knob at one value, everything else at `base` and the default seed."
    if knob == "seed":
        return base, int(value)
    return base.replace(**{knob: value}).validate(), DEFAULT_SEED


def summary_row(rows: list[dict]) -> dict:
    "Mean IoU and success rate overall (the EVAL_KINDS) and per kind, from evaluate's rows."
    table = summarise(rows, EVAL_KINDS)
    return dict(iou=table["overall"]["iou"], success=table["overall"]["success"],
                by_kind={k: dict(iou=table[k]["iou"], success=table[k]["success"]) for k in EVAL_KINDS})


def sweep_knobs(model, edits, knobs=KNOBS, base: DiffEditConfig | None = None, log=print) -> dict:
    """{knob: [{"value", "iou", "success", "by_kind"}, ...]} for every value of every knob, each
    setting evaluated once (a setting two knobs share is reused)."""
    base = (base or DiffEditConfig()).validate()
    done: dict = {}
    out = {}
    for knob, values in knobs.items():
        out[knob] = []
        for value in values:
            config, seed = setting(knob, value, base)
            key = (tuple(sorted(config.to_dict().items())), seed)
            if key not in done:
                t0 = time.perf_counter()
                done[key] = summary_row(evaluate(model, edits, config, seed))
                log(f"{knob} = {value}: IoU {done[key]['iou']:.3f}, success {done[key]['success']:.1%} "
                    f"({time.perf_counter() - t0:.0f} s)")
            out[knob].append(dict(value=value, **done[key]))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: --out {str(args.out)!r} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        edits = held_out_edits(args.scenes, EVAL_KINDS, cycle=True)
    except ValueError as e:
        print(f"error: --scenes: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model)
    t0 = time.perf_counter()
    knobs = sweep_knobs(model, edits, log=lambda s: print(s, file=sys.stderr, flush=True))
    base = DiffEditConfig()
    result = dict(
        how=f"python benchmarks/knobs.py --scenes {args.scenes} (OMP_NUM_THREADS=1)",
        model="bundled" if Path(args.model) == BUNDLED_PATH else args.model,
        scenes=args.scenes, kinds=list(EVAL_KINDS), edits_per_value=len(edits),
        defaults=dict(base.to_dict(), seed=DEFAULT_SEED), knobs=knobs,
        platform=f"torch {torch.__version__}, {platform.machine()}", minutes=round((time.perf_counter() - t0) / 60, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
