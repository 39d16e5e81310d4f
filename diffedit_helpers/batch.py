"""Many edits from a JSON-lines file, on one process or several (`accelerate launch`), safe to
leave running, to stop, and to run again.

    python -m diffedit_helpers batch JOBS.jsonl --out DIR
    accelerate launch --num_processes 2 --cpu -m diffedit_helpers batch JOBS.jsonl --out DIR

Each line of JOBS.jsonl is one job, a JSON object:
    {"image": "horse.png", "source": "a brown horse on grass", "target": "a zebra on grass",
     "settings": {"threshold": 0.3, "num_inference_steps": 30}, "seed": 1, "id": "horse-1", "mask": "m.png"}
image, source and target are required; relative paths are read from the JOBS file's folder. settings
take DiffEditConfig's fields (negative_prompt included) and diffusers' names (num_inference_steps,
guidance_scale, strength, translated once by `config.with_diffusers_names`), and win over the command line's options; seed defaults to --seed; id (a
name: letters, digits, ".", "_", "-") names the job's folder, which otherwise is the start of the
job's key; mask is a mask file to edit inside. The file is read as a stream (`jobs`).

A job is what it does under its id (`jobs.job_key`): a rerun skips the jobs whose key the manifest records as
done, wherever their lines now stand, and runs every job that is new or changed (--retry-failed
also runs the failed ones again). One run writes into DIR at a time (`manifest.OutputLock`); a
second says who holds it. Each job writes DIR/<name>/edited.png, mask.png and job.json (into a
staging folder, then renamed into place; an existing file or folder is never replaced) and appends
one line to DIR/manifest.jsonl: its key, status, outputs, mask coverage, seconds, settings and
seed, or its error. What a killed run leaves is put right by the next (`manifest.reconcile`).

Under `accelerate launch` process r of n runs jobs r, r + n, r + 2n, ... of the file (Accelerate's
PartialState gives r and n); alone, one process runs them all in order. A job's generator is seeded
from its own seed, so its result does not depend on how many processes ran. A job that fails is
recorded with its error and the others go on.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from .config import ConfigError, DiffEditConfig, config_from_args, with_option
from .jobs import Job, check_jobs_file, folder_name, iter_jobs, job_arguments, job_key, line_key, SEED_RANGE
from .manifest import (MANIFEST, OUTPUTS, ManifestError, OutputFolderBusy, OutputLock, append_record, check_own_files,
                       place_job, read_manifest, reconcile)
from .outputs import check_out_folder, same_file

INTERRUPTED = 130  # the shell's status for a program stopped by Ctrl-C (128 + SIGINT)
FAILED_SHOWN = 10  # failed jobs the summary names; the rest it counts


@dataclass
class BatchRun:
    "What one process did with its share of the jobs: the records it appended, how many jobs, which failed."

    records: list = field(default_factory=list)
    total: int = 0
    failed: list = field(default_factory=list)  # the labels of the jobs not done


def png_bytes(image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_identity(model) -> str:
    "The model part of a job's key: its name and precision."
    return f"{getattr(model, 'name', type(model).__name__)} {getattr(model, 'dtype', '')}"


def prepare_job(job: Job, config: DiffEditConfig, seed: int, base: Path, model, fit: str):
    "(diffedit's arguments, key), or (None, key of the line) with the error set on `job` when the line cannot run."
    try:
        args = job_arguments(job, config, seed, base)
    except ValueError as e:
        job.error = str(e)
        return None, line_key(job)
    return args, job_key(args, model_identity(model), fit, job.id)


def run_job(model, job: Job, args: dict, key: str, out: Path, fit: str, rank: int) -> dict:
    """Run one prepared job and place its folder; returns its manifest record. Any error of the job
    (a missing image, a bad setting, the model failing, its folder taken) is caught and recorded."""
    import torch

    from .edit import diffedit
    from .inputs import fit_inputs

    name = folder_name(job, key)
    record = dict(id=name, key=key, line=job.line, rank=rank, started=round(time.time(), 3))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generator = torch.Generator().manual_seed(args["seed"])  # drawn on the CPU: the same noise on any device
            edit_args = {k: v for k, v in args.items() if k not in ("seed", "negative_prompt", "image", "mask")}
            image, mask = fit_inputs(model, args["image"], args["mask"], fit=fit)  # the negative prompt is in the config
            result = diffedit(model, image, mask=mask, generator=generator, progress=False, **edit_args)
            files = dict(zip(OUTPUTS, (png_bytes(result.image), png_bytes(result.mask_image))))
        settings = result.config.to_dict()
        if args["negative_prompt"] is not None:
            settings["negative_prompt"] = args["negative_prompt"]
        record.update(status="ok", image=job.spec["image"], source=args["source_prompt"], target=args["target_prompt"],
                      outputs={f.removesuffix(".png"): f"{name}/{f}" for f in OUTPUTS},
                      mask_coverage=round(float(result.mask.mean()), 6), settings=settings, seed=args["seed"])
        if caught:
            record["warnings"] = sorted({str(w.message) for w in caught})
        record["seconds"] = round(time.perf_counter() - t0, 3)
        place_job(out, name, files, record)
    except Exception as e:  # noqa: BLE001 - a failing job is recorded and the others go on
        record = {k: record[k] for k in ("id", "key", "line", "rank", "started")}
        record.update(status="error", error=f"{type(e).__name__}: {e}")
    record["seconds"] = record.get("seconds", round(time.perf_counter() - t0, 3))
    return record


def error_record(job: Job, key: str, rank: int) -> dict:
    "The record of a line that cannot run (no model work)."
    return dict(id=job.id, key=key, line=job.line, rank=rank, started=round(time.time(), 3), status="error",
                error=f"ValueError: {job.error}", seconds=0.0)


def run_jobs(model, jobs, out: Path, config: DiffEditConfig, seed: int, base: Path, fit: str = "error",
             rank: int = 0, world: int = 1, retry_failed: bool = False, report=None) -> BatchRun:
    """Run this process's share of `jobs` (an iterable of Job: every world-th from `rank`) whose key
    the manifest does not record as done (nor as failed, unless `retry_failed`), appending a
    manifest record after each; report(record, job), if given, after each job that ran."""
    out = Path(out)
    done = read_manifest(out)
    run = BatchRun()
    for i, job in enumerate(jobs):
        if i % world != rank:
            continue
        run.total += 1
        args, key = prepare_job(job, config, seed, base, model, fit)
        prior = done.get(key)
        if prior is None or (prior["status"] != "ok" and retry_failed):
            prior = run_job(model, job, args, key, out, fit, rank) if args is not None else error_record(job, key, rank)
            append_record(out, prior)
            done[key] = prior
            run.records.append(prior)
            if report is not None:
                report(prior, job)
        if prior["status"] != "ok":
            run.failed.append(job.label)
    return run


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
    stderr and recorded in the manifest), 2 when the command itself cannot run, 130 on Ctrl-C."""
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def check_command(args) -> tuple[Path, Path]:
    """The options, the jobs file and the output folder, checked before any model work: (jobs file,
    out). The options are checked over the shapes world's defaults; `_run` lays them over the model's."""
    config_from_args(args)
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        raise ValueError(f"--seed must be an integer in [0, 2**64 - 1], got {args.seed}")
    jobs_path, out = check_jobs_file(args.jobs), check_out_folder(args.out)
    check_jobs_outside(jobs_path, out)
    if next(iter_jobs(jobs_path), None) is None:
        raise ValueError(f"jobs file {str(jobs_path)!r} holds no jobs (every line is blank); nothing to do")
    return jobs_path, out


def check_jobs_outside(jobs_path: Path, out: Path):
    """Refuse a jobs file inside the output folder (its manifest, say): the run appends to what it
    reads, and would never end."""
    jobs, folder = jobs_path.resolve(), out.resolve()
    if jobs.is_relative_to(folder) or same_file(jobs, out / MANIFEST):
        raise ValueError(f"jobs file {str(jobs_path)!r} is inside --out {str(out)!r}, where the run writes; "
                         f"copy it elsewhere (or choose another --out)")


def lock_out_folder(out: Path, state) -> OutputLock | None:
    """Take the output folder for this run (the main process holds the lock and puts the folder in
    order, `reconcile`); every process raises OutputFolderBusy if another run holds it."""
    lock, error = None, None
    if state.is_main_process:
        try:
            check_own_files(out)
            lock = OutputLock(out).acquire()
            reconcile(out, read_manifest(out))
        except OSError as e:
            error = str(e)
            if lock is not None:
                lock.release()
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]  # also the barrier: no process starts before the folder is in order
    if error is not None:
        raise OutputFolderBusy(error)
    return lock


def _main(args) -> int:
    try:
        jobs_path, out = check_command(args)
        state = process_state(args.device)
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_out_folder(out, state)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        return command_error(err)
    try:
        return _run(args, jobs_path, out, state)
    finally:
        if lock is not None:
            lock.release()


def command_error(err: Exception) -> int:
    "Say why the command cannot run, in one line; its exit status."
    print(f"error: {with_option(err) if isinstance(err, ConfigError) else err}", file=sys.stderr)
    return 2


def _run(args, jobs_path: Path, out: Path, state) -> int:
    "Load the model and run this process's jobs (the output folder is this run's); the exit status."
    from .models import load_model

    try:
        device = state.device if args.device in (None, "auto") else args.device  # auto: the process's own device
        model = load_model(args.model, device=device, dtype=args.dtype)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        return command_error(err)
    note = single_process_note(os.environ, state.num_processes)
    if note and state.is_main_process:
        print(f"warning: {note}", file=sys.stderr)

    def report(record, job):
        if record["status"] != "ok":
            print(f"error: {job.label}: {record['error']}", file=sys.stderr)
        elif not args.quiet:
            print(f"[{state.process_index}/{state.num_processes}] {record['id']}: {record['seconds']:.2f} s, "
                  f"mask {100 * record['mask_coverage']:.1f} %", flush=True)

    config = config_from_args(args, DiffEditConfig.for_model(model), quiet=True)  # the options over the model's own defaults
    try:
        run = run_jobs(model, iter_jobs(jobs_path), out, config, args.seed, jobs_path.parent, args.fit,
                       state.process_index, state.num_processes, args.retry_failed, report)
    except ManifestError as err:  # a full disk: the next run adopts the job folder whose record was not written
        return command_error(err)
    total, failed = gather_outcome(run, state)  # every process's: the main one releases the lock only after all are done
    if state.is_main_process:
        print(f"{total - len(failed)} of {total} jobs done in {out}/ ({MANIFEST})" + failed_summary(failed))
    return 1 if failed else 0


def failed_summary(failed: list, shown: int = FAILED_SHOWN) -> str:
    "The summary's part about the failed jobs: the first `shown` labels, and how many more (each was said on stderr)."
    if not failed:
        return ""
    more = len(failed) - shown
    return f"; failed: {', '.join(failed[:shown])}" + (f" and {more:,} more (see {MANIFEST})" if more > 0 else "")


def gather_outcome(run: BatchRun, state) -> tuple[int, list]:
    "(jobs, labels of the failed ones) over every process of the run."
    if state.num_processes == 1:
        return run.total, run.failed
    from accelerate.utils import gather_object

    parts = gather_object([(run.total, run.failed)])
    return sum(t for t, _ in parts), sorted((f for _, fs in parts for f in fs), key=lambda label: int(label.split()[1]))
