"""Many edits from a JSON-lines file, on one process or several (`accelerate launch`).

    python -m diffedit_helpers batch JOBS.jsonl --out DIR
    accelerate launch --num_processes 2 --cpu -m diffedit_helpers batch JOBS.jsonl --out DIR

Each line of JOBS.jsonl is one job, a JSON object:
    {"image": "horse.png", "source": "a brown horse on grass", "target": "a zebra on grass",
     "settings": {"threshold": 0.3, "num_inference_steps": 30}, "seed": 1, "id": "horse-1", "mask": "m.png"}
image, source and target are required; relative paths are read from the JOBS file's folder. settings
take DiffEditConfig's fields and diffusers' names (`diffedit`'s num_inference_steps, guidance_scale,
strength, negative_prompt) over the command line's options; seed defaults to --seed; id (letters,
digits, ".", "_", "-") defaults to the line number, "0007"; mask is a mask file to edit inside.

Under `accelerate launch` process r of n runs jobs r, r + n, r + 2n, ... of the file (Accelerate's
PartialState gives r and n); alone, one process runs them all in order. Each job writes
DIR/<id>/edited.png and DIR/<id>/mask.png (into a staging folder, then renamed into place; an
existing file or folder is never replaced) and appends one line to DIR/manifest.jsonl: its
status, outputs, mask coverage, seconds, settings and seed, or its error. A job's generator is
seeded from its own seed, so its result does not depend on how many processes ran.
Jobs the manifest already holds are skipped (a rerun resumes; --retry-failed runs failed ones again);
a job that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from io import BytesIO
from pathlib import Path

from .config import DIFFUSERS_NAMES, ConfigError, DiffEditConfig, config_from_args

MANIFEST = "manifest.jsonl"
OUTPUTS = ("edited.png", "mask.png")
JOB_KEYS = ("image", "source", "target", "settings", "seed", "id", "mask")
CONFIG_FIELDS = tuple(f.name for f in fields(DiffEditConfig))
PASSED_AS_ARGUMENTS = ("negative_prompt", *DIFFUSERS_NAMES)  # settings handed to `diffedit` by name
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_URL = re.compile(r"^https?://")


@dataclass
class Job:
    "One line of the jobs file: its id, its line number (from 1), the parsed object, or why it cannot run."

    id: str
    line: int
    spec: dict | None = None
    error: str | None = None


def read_jobs(path: Path) -> list[Job]:
    """Every non-blank line of a JSON-lines file as a Job, in order. A line that is not a JSON
    object, or whose id is bad or taken, becomes a Job with its `error` set (it fails alone)."""
    jobs, seen = [], {}
    for n, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        job = Job(id=f"{n:04d}", line=n)
        try:
            job.spec = json.loads(text)
        except json.JSONDecodeError as e:
            job.error = f"line {n} is not valid JSON ({e.msg} at column {e.colno})"
        if job.error is None and not isinstance(job.spec, dict):
            job.error = f"line {n} must be a JSON object {{\"image\": ..., \"source\": ..., \"target\": ...}}, got {type(job.spec).__name__}"
        if job.error is None and "id" in job.spec:
            given = job.spec["id"]
            if isinstance(given, str) and _ID.match(given):
                job.id = given
            else:
                job.error = f"line {n}: id must be 1-100 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {given!r}"
        if job.error is None and job.id in seen:  # refused under its line number: the first keeps the id
            job.error = f"line {n}: id {job.id!r} is already used by line {seen[job.id]}"
            job.id = f"{n:04d}"
        seen.setdefault(job.id, n)
        jobs.append(job)
    return jobs


def job_arguments(job: Job, config: DiffEditConfig, seed: int, base: Path) -> dict:
    """The keyword arguments of `diffedit` for one job (image, prompts, config, seed, mask and
    diffusers' names), checked; ValueError naming the line and the key when something is wrong."""
    if job.error is not None:
        raise ValueError(job.error)
    spec, n = job.spec, job.line
    unknown = sorted(set(spec) - set(JOB_KEYS))
    if unknown:
        raise ValueError(f"line {n}: unknown key(s) {', '.join(unknown)}; a job takes {', '.join(JOB_KEYS)}")
    missing = [k for k in ("image", "source", "target") if k not in spec]
    if missing:
        raise ValueError(f"line {n}: missing {', '.join(missing)} (a job needs image, source and target)")
    if not isinstance(spec["image"], str):
        raise ValueError(f"line {n}: image must be a path or an http(s) URL (a string), got {type(spec['image']).__name__}")
    seed = spec.get("seed", seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"line {n}: seed must be an integer >= 0, got {seed!r}")
    settings = spec.get("settings", {})
    if not isinstance(settings, dict):
        raise ValueError(f"line {n}: settings must be a JSON object, got {type(settings).__name__}")
    bad = sorted(set(settings) - set(CONFIG_FIELDS) - set(PASSED_AS_ARGUMENTS))
    if bad:
        raise ValueError(f"line {n}: unknown setting(s) {', '.join(bad)}; settings take DiffEditConfig's fields "
                         f"and {', '.join(PASSED_AS_ARGUMENTS)}")
    try:
        config = config.replace(**{k: v for k, v in settings.items() if k in CONFIG_FIELDS}).validate()
    except ConfigError as e:
        raise ConfigError(e.field, f"line {n}: settings.{e.field}: {e}") from None
    args = dict(image=_local(spec["image"], base), source_prompt=spec["source"], target_prompt=spec["target"],
                config=config, seed=seed, mask=None if spec.get("mask") is None else _local(spec["mask"], base))
    args.update({k: v for k, v in settings.items() if k in PASSED_AS_ARGUMENTS})
    return args


def _local(name, base: Path):
    "A path relative to the jobs file's folder (absolute paths and URLs as they are)."
    if not isinstance(name, str) or _URL.match(name):
        return name
    return str(base / name)


def write_output(path: Path, data: bytes, append: bool = False):
    """Every file the batch writes goes through here. A new file, created exclusively (an existing
    file is never replaced); or, with `append`, data added to the end of the file in one os.write
    on an O_APPEND descriptor, so lines from several processes never interleave."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {str(path)!r}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)


def png_bytes(image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_outputs(out: Path, job_id: str, result) -> dict:
    """Write the job's pictures to a staging folder, then rename it to out/<id> (refused if that
    exists). Returns {name: path relative to out}."""
    final = out / job_id
    if final.exists():
        raise FileExistsError(f"{str(final)!r} exists but the manifest does not record job {job_id!r} "
                              "(an interrupted run?); move it away to run the job again")
    staging = Path(tempfile.mkdtemp(prefix=f".{job_id}.partial-", dir=out))  # left behind only by a killed run
    for name, image in zip(OUTPUTS, (result.image, result.mask_image)):
        write_output(staging / name, png_bytes(image))
    os.rename(staging, final)
    return {name.removesuffix(".png"): f"{job_id}/{name}" for name in OUTPUTS}


def read_manifest(out: Path) -> dict:
    "The latest manifest record of each job id; a torn last line (a killed run) is ignored."
    records = {}
    path = out / MANIFEST
    if path.exists():
        for text in path.read_text().splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                records[record["id"]] = record
    return records


def run_job(model, job: Job, config: DiffEditConfig, seed: int, base: Path, out: Path, fit: str, rank: int) -> dict:
    """Run one job and write its outputs; returns its manifest record. Any error of the job (a bad
    line, a missing image, a bad setting, the model failing) is caught and recorded as its error."""
    import torch

    from .edit import diffedit

    record = dict(id=job.id, line=job.line, rank=rank, started=round(time.time(), 3))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = job_arguments(job, config, seed, base)
            job_seed = args.pop("seed")
            generator = torch.Generator().manual_seed(job_seed)  # drawn on the CPU: the same noise on any device
            result = diffedit(model, generator=generator, fit=fit, progress=False, **args)
            outputs = save_outputs(out, job.id, result)
        settings = result.config.to_dict()
        if args.get("negative_prompt") is not None:
            settings["negative_prompt"] = args["negative_prompt"]
        record.update(status="ok", image=job.spec["image"], source=args["source_prompt"], target=args["target_prompt"],
                      outputs=outputs, mask_coverage=round(float(result.mask.mean()), 6), settings=settings, seed=job_seed)
        if caught:
            record["warnings"] = sorted({str(w.message) for w in caught})
    except Exception as e:  # noqa: BLE001 - a failing job is recorded and the others go on
        record.update(status="error", error=f"{type(e).__name__}: {e}")
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def run_jobs(model, jobs: list[Job], out: Path, config: DiffEditConfig, seed: int, base: Path, fit: str = "error",
             rank: int = 0, world: int = 1, retry_failed: bool = False, report=None) -> list[dict]:
    """Run this process's share of `jobs` (every world-th from `rank`) that the manifest does not
    hold yet, appending a manifest line after each; report(record), if given, after each job.
    Returns the new records."""
    done = read_manifest(out)
    records = []
    for job in jobs[rank::world]:
        prior = done.get(job.id)
        if prior is not None and (prior.get("status") == "ok" or not retry_failed):
            continue
        record = run_job(model, job, config, seed, base, out, fit, rank)
        write_output(out / MANIFEST, (json.dumps(record) + "\n").encode(), append=True)
        records.append(record)
        if report is not None:
            report(record)
    return records


def process_state(device=None):
    """Accelerate's PartialState: this process's rank (process_index) and the number of processes.
    On the CPU (no accelerator, `accelerate launch --cpu`, or device "cpu") the processes a launcher
    started form a CPU process group (gloo)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    cpu = str(device or "").startswith("cpu") or parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator
    return PartialState(cpu=cpu)


def single_process_note(env, num_processes: int) -> str | None:
    """What to say when `accelerate launch --num_processes N --cpu` started one process: its simple
    launcher starts several CPU processes only through MPI (--mpirun_hostfile)."""
    if num_processes == 1 and parse_bool(env.get("ACCELERATE_USE_CPU")) and "MASTER_ADDR" in env:
        return ("`accelerate launch --cpu` started one process here (several CPU processes need MPI, "
                "--mpirun_hostfile; or `accelerate launch --multi_gpu --num_processes N`, which runs them on the "
                "CPU where there is no GPU): this process runs every job")
    return None


def parse_bool(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "y", "on")


def main(args) -> int:
    """The `batch` command: 0 when every job of the file is done, 1 when some failed (each said on
    stderr and recorded in the manifest), 2 when the command itself cannot run."""
    try:
        config = config_from_args(args)
        jobs_path, out = Path(args.jobs), Path(args.out)
        if not jobs_path.is_file():
            raise FileNotFoundError(f"jobs file {str(jobs_path)!r} does not exist")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {str(out)!r} is a file, not a folder")
        jobs = read_jobs(jobs_path)
        state = process_state(args.device)
        out.mkdir(parents=True, exist_ok=True)
        from .models import load_model

        device = state.device if args.device in (None, "auto") else args.device  # auto: the process's own device
        model = load_model(args.model, device=device, dtype=args.dtype)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = single_process_note(os.environ, state.num_processes)
    if note and state.is_main_process:
        print(f"warning: {note}", file=sys.stderr)

    def report(record):
        if record["status"] != "ok":
            print(f"error: job {record['id']}: {record['error']}", file=sys.stderr)
        elif not args.quiet:
            print(f"[{state.process_index}/{state.num_processes}] {record['id']}: {record['seconds']:.2f} s, "
                  f"mask {100 * record['mask_coverage']:.1f} %", flush=True)

    run_jobs(model, jobs, out, config, args.seed, jobs_path.parent, args.fit, state.process_index,
             state.num_processes, args.retry_failed, report)
    state.wait_for_everyone()
    records = read_manifest(out)
    failed = [j.id for j in jobs if records.get(j.id, {}).get("status") != "ok"]
    if state.is_main_process:
        print(f"{len(jobs) - len(failed)} of {len(jobs)} jobs done in {out}/ ({MANIFEST})"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
