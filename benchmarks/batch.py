"""Batch throughput: `python -m diffedit_helpers batch` on one process, then on two under
`accelerate launch`, one thread each, the same held-out edits, default settings, bundled model.

    python benchmarks/batch.py                  # 40 jobs; about 2 minutes on two idle cores
    python benchmarks/batch.py --jobs 12        # quicker

Jobs per minute are reported two ways: end to end (the command's wall time, process start and
model loading included) and over the jobs alone (from the first job's start to the last job's end,
read from the manifest). The two runs' outputs are compared byte for byte. The load average before
and after is written beside the numbers: on a shared machine other work takes cores too.
Writes benchmarks/results/batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffedit_helpers.batch import read_manifest
from diffedit_helpers.world.evaluate import held_out_edits
from diffedit_helpers.world.shapes import render

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.7  # two processes against one, jobs per minute


def write_jobs(folder: Path, n: int) -> Path:
    "n held-out edits (one kind per scene in turn), their images in `folder`, as JOBS.jsonl; seed k for job k."
    lines = []
    for k, edit in enumerate(held_out_edits(n, cycle=True)):
        render(edit.source)[0].save(folder / f"scene{k}.png")
        lines.append(json.dumps({"image": f"scene{k}.png", "source": edit.source_prompt, "target": edit.target_prompt, "seed": k}))
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(processes: int) -> list[str]:
    """The command prefix for `processes` processes: plain Python for one; `accelerate launch --multi_gpu`
    for more (torchrun underneath; on a machine without a GPU the processes run on the CPU)."""
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def run(processes: int, jobs: Path, out: Path) -> dict:
    "Run the batch command; its wall time and the manifest's span of job times."
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [*launcher(processes), "-m", "diffedit_helpers", "batch", str(jobs), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the batch command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    records = list(read_manifest(out).values())
    span = max(r["started"] + r["seconds"] for r in records) - min(r["started"] for r in records)
    return dict(processes=processes, jobs=len(records), wall=wall, span=span,
                ranks=sorted({r["rank"] for r in records}), median=sorted(r["seconds"] for r in records)[len(records) // 2])


def same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.glob("*/*.png"))
    return names == sorted(p.relative_to(b) for p in b.glob("*/*.png")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def report(runs: list[dict], identical: bool, load: tuple, n: int) -> str:
    one = runs[0]
    rows = []
    for r in runs:
        e2e, jobs_only = 60 * r["jobs"] / r["wall"], 60 * r["jobs"] / r["span"]
        rows.append(f"| {r['processes']} | {r['wall']:.1f} | {e2e:.1f} | {one['wall'] / r['wall']:.2f}x | "
                    f"{jobs_only:.1f} | {one['span'] / r['span']:.2f}x | {r['median']:.2f} |")
    two = runs[-1]
    speed_e2e, speed_jobs = one["wall"] / two["wall"], one["span"] / two["span"]
    verdict = lambda x: "met" if x >= TARGET else "missed"  # noqa: E731
    return "\n".join([
        "# Batch throughput",
        "",
        f"`benchmarks/batch.py`: {n} held-out shapes-world edits (one kind per scene in turn), bundled model, default "
        "settings (50 DDIM steps from step 12, 10 noise draws), CPU float32, one thread per process "
        f"(OMP_NUM_THREADS=1); one process (`python -m diffedit_helpers batch`), then two (`accelerate launch "
        f"--multi_gpu --num_processes 2`, torchrun underneath, on the CPU). {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}.",
        "",
        "| processes | wall s | jobs / min (end to end) | speed-up | jobs / min (jobs only) | speed-up | median s / job |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "End to end: the command's wall time, process start and model loading included. Jobs only: from the first "
        "job's start to the last job's end (manifest times).",
        f"Outputs of the two runs byte for byte identical: {'yes' if identical else 'NO'}.",
        f"Target: two processes >= {TARGET}x one: end to end {speed_e2e:.2f}x ({verdict(speed_e2e)}), "
        f"jobs only {speed_jobs:.2f}x ({verdict(speed_jobs)}).",
        "",
        f"The machine was shared with other work while this ran: load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after (1-minute, {os.cpu_count()} cores). With the cores busy, two processes cannot "
        "get two cores' worth of time; rerun on an idle machine for the clean figure.",
        "",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=40, help="number of edits (default 40)")
    p.add_argument("--out", default=str(RESULTS / "batch.md"), help="where to write the report")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = write_jobs(tmp, args.jobs)
        before = os.getloadavg()[0]
        runs = [run(n, jobs, tmp / f"out{n}") for n in (1, 2)]
        after = os.getloadavg()[0]
        if runs[1]["ranks"] != [0, 1]:
            raise SystemExit(f"expected two processes, the manifest shows ranks {runs[1]['ranks']}")
        identical = same_outputs(tmp / "out1", tmp / "out2")
    text = report(runs, identical, (before, after), args.jobs)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
