"""Cheap held-out probes of a model while it trains, and the VAE's ceiling under the same judges.

    OMP_NUM_THREADS=1 python benchmarks/probes.py probe --run bundled --model diffedit_helpers/bundled
    OMP_NUM_THREADS=1 python benchmarks/probes.py snapshots --run "long run 32x32" --checkpoints ~/diffedit-long-run
    OMP_NUM_THREADS=1 python benchmarks/probes.py ceiling --run bundled --model diffedit_helpers/bundled

The probes (about 100 edits, 1.5-3 CPU minutes on the bundled model), on scenes from PROBE_SEED, disjoint
from the ablation's held-out scenes (which start at HELD_OUT_SEED), so choosing a checkpoint by them does
not tune it on the scenes that decide whether it ships:
  - the null edit on 40 scenes: the true object mask, the source caption as the target; the object must come back;
  - whole zebras: the demo's horse -> zebra with generator seeds 0-19 (`world.metrics.whole_zebra`);
  - colour edits on 40 scenes, by the strict judge, with their mask IoU.
`snapshots` probes every snapshot an open-ended training run wrote (`train --cpu-hours`, its
CHECKPOINTS/snapshots.jsonl) that the curve does not have yet. Rows go to results/training_curve.jsonl and
the table to results/training_curve.md.

`ceiling` runs the same judges on the true target scenes, as rendered and through the model's VAE (encode,
decode): no UNet can pass an edit whose target fails through the VAE. Rows go to results/vae_ceiling.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ablation import null_edits, run_null, run_zebras

from diffedit_helpers import DiffEditConfig, load_model
from diffedit_helpers.latents import decode_to_images, encode_image
from diffedit_helpers.world.evaluate import evaluate, held_out_edits
from diffedit_helpers.world.metrics import edit_success, whole_zebra
from diffedit_helpers.world.shapes import EDIT_KINDS, HELD_OUT_SEED, horse_scene, make_edit, render

RESULTS = Path(__file__).parent / "results"
CURVE, CEILING = RESULTS / "training_curve.jsonl", RESULTS / "vae_ceiling.jsonl"
PROBE_SEED = HELD_OUT_SEED + 500_000  # the probes' scenes: never trained on, and not the ablation's
PROBE_SCENES, ZEBRA_SEEDS = 40, 20


def probe(folder, scenes: int = PROBE_SCENES, zebra_seeds: int = ZEBRA_SEEDS) -> dict:
    "The three probes of the model in `folder`, with its default settings: counts of successes."
    model = load_model(folder)
    config = DiffEditConfig.for_model(model)
    started = time.process_time()
    edits = held_out_edits(scenes, EDIT_KINDS, PROBE_SEED)
    null = run_null(model, null_edits(edits[:: len(EDIT_KINDS)]), config)
    zebras = run_zebras(model, config, zebra_seeds)
    colour = evaluate(model, [e for e in edits if e.kind == "colour"], config)
    return dict(scenes=scenes, null=int(sum(null)), zebras=int(sum(zebras)), zebra_seeds=zebra_seeds,
                colour=int(sum(bool(r["success"]) for r in colour)), colour_iou=round(float(np.mean([r["iou"] for r in colour])), 3),
                probe_cpu_minutes=round((time.process_time() - started) / 60, 1))


def through_vae(model, image):
    "The picture encoded to latents and decoded again by the model's VAE."
    with torch.no_grad():
        return decode_to_images(model, encode_image(model, [image]))[0]


def judged(pairs) -> dict:
    "How many (picture, edit) pairs pass the strict judge, of how many."
    return dict(n=len(pairs), success=int(sum(bool(edit_success(np.asarray(image), e)) for image, e in pairs)))


def ceiling(folder, scenes: int = 100) -> dict:
    "The judges on the true targets, as rendered and through the VAE: each edit kind, the null edit, whole zebras."
    model = load_model(folder)
    edits = held_out_edits(scenes, EDIT_KINDS, PROBE_SEED)
    out = {}
    for kind in EDIT_KINDS:
        targets = [(render(e.target)[0], e) for e in edits if e.kind == kind]
        out[kind] = dict(rendered=judged(targets), through_vae=judged([(through_vae(model, i), e) for i, e in targets]))
    nulls = [(render(e.source)[0], e) for e in null_edits(edits[:: len(EDIT_KINDS)])]
    out["null"] = dict(rendered=judged(nulls), through_vae=judged([(through_vae(model, i), e) for i, e in nulls]))
    zebras = [make_edit(horse_scene(seed), "pattern") for seed in range(ZEBRA_SEEDS)]
    out["whole_zebra"] = {
        way: dict(n=len(zebras), success=int(sum(bool(whole_zebra(np.asarray(f(render(e.target)[0])), e)) for e in zebras)))
        for way, f in (("rendered", lambda i: i), ("through_vae", lambda i: through_vae(model, i)))
    }
    return out


def append_row(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def unprobed_snapshots(checkpoints: Path, run: str, rows: list[dict]) -> list[dict]:
    "The snapshots an open-ended run listed in CHECKPOINTS/snapshots.jsonl whose step the curve of `run` lacks."
    listed = read_rows(Path(checkpoints) / "snapshots.jsonl")
    done = {r["step"] for r in rows if r["run"] == run}
    return [s for s in listed if s["step"] not in done and Path(s["folder"]).is_dir()]


def format_curve(rows: list[dict]) -> str:
    "The training curve as a markdown table, one row per probe, runs in the order first seen."
    head = ["run", "step", "CPU hours", "loss", f"null edit kept (of {PROBE_SCENES})", f"whole zebras (of {ZEBRA_SEEDS})",
            f"colour (of {PROBE_SCENES})", "colour mask IoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for run in runs:
        for r in sorted((r for r in rows if r["run"] == run), key=lambda r: r.get("step") or 0):
            cells = [run, "-" if r.get("step") is None else r["step"], "-" if r.get("cpu_hours") is None else f"{r['cpu_hours']:.2f}",
                     "-" if r.get("loss") is None else f"{r['loss']:.4f}", r["null"], r["zebras"], r["colour"], f"{r['colour_iou']:.3f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def write_curve_table(rows: list[dict]):
    (RESULTS / "training_curve.md").write_text(
        "# Training curve: cheap held-out probes of each snapshot\n\n"
        f"`benchmarks/probes.py` on scenes from seed {PROBE_SEED} (not the ablation's), default settings, a generator seeded 0 "
        "per edit. CPU hours are the training process's own CPU time (one thread) for the UNet and text encoder, "
        "summed over resumed runs; the loss is the logged Min-SNR-weighted loss (smoothed).\n\n" + format_curve(rows) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("probe", "snapshots", "ceiling"))
    p.add_argument("--checkpoints", type=Path, help="snapshots: the run's checkpoint folder")
    p.add_argument("--run", required=True, help="the row's name (a model, or a training run)")
    p.add_argument("--model", type=Path, help="probe, ceiling: a model folder")
    args = p.parse_args(argv)
    if args.what == "snapshots" and (args.checkpoints is None or not (args.checkpoints / "snapshots.jsonl").is_file()):
        p.error(f"snapshots needs a checkpoint folder holding snapshots.jsonl, got {args.checkpoints}")
    if args.what != "snapshots" and (args.model is None or not args.model.is_dir()):
        p.error(f"{args.what} needs --model FOLDER, an existing model folder, got {args.model}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.what == "ceiling":
        row = dict(run=args.run, **ceiling(args.model))
        append_row(CEILING, row)
        print(json.dumps(row, indent=1))
        return 0
    if args.what == "probe":
        targets = [dict(folder=str(args.model))]
    else:
        targets = unprobed_snapshots(args.checkpoints, args.run, read_rows(CURVE))
    for snap in targets:
        row = dict(run=args.run, step=snap.get("step"), cpu_hours=snap.get("cpu_hours"), loss=snap.get("loss"), **probe(snap["folder"]))
        append_row(CURVE, row)
        print(row, flush=True)
    write_curve_table(read_rows(CURVE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
