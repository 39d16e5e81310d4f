"""The batch command: jobs split by rank give the same bits as one process, a run resumes from its
manifest, a bad job is recorded and the others go on, and no file is ever replaced."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffedit_helpers.edit as edit_module
from diffedit_helpers import DiffEditConfig
from diffedit_helpers.batch import (
    MANIFEST,
    read_jobs,
    read_manifest,
    run_jobs,
    single_process_note,
    write_output,
)
from diffedit_helpers.cli import main
from diffedit_helpers.world.shapes import make_edit, random_scene, render

FAST = DiffEditConfig(steps=6, n_noise=2, threshold=0.3)
KINDS = ("colour", "pattern", "shape")


def write_jobs(folder: Path, n: int, extra_lines=()) -> Path:
    "n shapes-world edits (images saved in `folder`, relative paths) as JOBS.jsonl, then `extra_lines` as they are."
    lines = []
    for i in range(n):
        edit = make_edit(random_scene(2_000_000 + i), KINDS[i % 3])
        render(edit.source)[0].save(folder / f"scene{i}.png")
        lines.append(json.dumps({"image": f"scene{i}.png", "source": edit.source_prompt, "target": edit.target_prompt,
                                 "seed": i, "settings": {"threshold": 0.25 + 0.05 * (i % 2)}}))
    path = folder / "jobs.jsonl"
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def outputs(out: Path, ids) -> dict:
    "{id: (edited bytes, mask bytes)} of the finished jobs."
    return {i: ((out / i / "edited.png").read_bytes(), (out / i / "mask.png").read_bytes()) for i in ids}


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(*prefix, jobs: Path, out: Path):
    "The batch command in fresh processes, one thread each, on the bundled model."
    cmd = [*prefix, "-m", "diffedit_helpers", "batch", str(jobs), "--out", str(out), "--steps", "6", "--n-noise", "2",
           "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_accelerate_processes_give_the_outputs_of_one_bit_for_bit(tmp_path):
    pytest.importorskip("accelerate")
    jobs = write_jobs(tmp_path, 8)
    one = run_command(sys.executable, jobs=jobs, out=tmp_path / "one")
    assert one.returncode == 0, one.stderr
    # `accelerate launch --cpu` starts one process without MPI; --multi_gpu starts them with torchrun, on the CPU here
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    two = run_command(*launch, jobs=jobs, out=tmp_path / "two")
    assert two.returncode == 0, two.stderr
    ids = [f"{i:04d}" for i in range(1, 9)]
    m1, m2 = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert sorted(m1) == sorted(m2) == ids
    assert {m2[i]["rank"] for i in ids} == {0, 1} and {m1[i]["rank"] for i in ids} == {0}  # really two processes
    assert [m2[i]["rank"] for i in ids] == [0, 1] * 4  # job k on process k mod 2
    assert outputs(tmp_path / "one", ids) == outputs(tmp_path / "two", ids)
    for i in ids:
        for key in ("mask_coverage", "settings", "seed", "outputs"):
            assert m1[i][key] == m2[i][key]


# ----------------------------------------------------------------------------- in process (tiny model)
def test_ranks_split_the_jobs_and_each_job_gets_what_it_gets_alone(tmp_path, tiny_model):
    jobs_path = write_jobs(tmp_path, 5)
    jobs = read_jobs(jobs_path)
    alone, split = tmp_path / "alone", tmp_path / "split"
    alone.mkdir(), split.mkdir()
    run_jobs(tiny_model, jobs, alone, FAST, 0, tmp_path)
    # three processes, here run one after another into the same folder
    records = [run_jobs(tiny_model, jobs, split, FAST, 0, tmp_path, rank=r, world=3) for r in (2, 0, 1)]
    assert [[r["id"] for r in rs] for rs in records] == [["0003"], ["0001", "0004"], ["0002", "0005"]]
    ids = [j.id for j in jobs]
    assert outputs(alone, ids) == outputs(split, ids)
    manifest = read_manifest(split)
    assert all(manifest[i]["status"] == "ok" and manifest[i]["seed"] == k for k, i in enumerate(ids))
    assert manifest["0002"]["settings"]["threshold"] == 0.3 and manifest["0001"]["settings"]["threshold"] == 0.25
    assert all(0 < manifest[i]["mask_coverage"] < 1 and manifest[i]["seconds"] > 0 for i in ids)
    assert manifest["0001"]["outputs"] == {"edited": "0001/edited.png", "mask": "0001/mask.png"}


def test_an_interrupted_run_resumes_without_redoing_finished_jobs(tmp_path, tiny_model, monkeypatch):
    jobs = read_jobs(write_jobs(tmp_path, 5))
    out = tmp_path / "out"
    out.mkdir()
    real = edit_module.diffedit
    calls = []

    def interrupted(*args, **kwargs):  # the run is stopped (Ctrl-C) during its third edit
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(edit_module, "diffedit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path)
    assert sorted(read_manifest(out)) == ["0001", "0002"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("000[12]/*.png")}
    monkeypatch.setattr(edit_module, "diffedit", real)

    # a second interruption, while job 0004 writes its mask: its half-written folder must not block the rerun
    import diffedit_helpers.batch as batch

    real_write = batch.write_output

    def stop_at_mask(path, data, append=False):
        if Path(path).name == "mask.png" and Path(path).parent.name.startswith(".0004."):
            raise KeyboardInterrupt
        return real_write(path, data, append)

    monkeypatch.setattr(batch, "write_output", stop_at_mask)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path)
    assert sorted(read_manifest(out)) == ["0001", "0002", "0003"] and not (out / "0004").exists()
    monkeypatch.setattr(batch, "write_output", real_write)

    rerun = run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path)
    assert [r["id"] for r in rerun] == ["0004", "0005"]  # only what was left
    assert {p: p.stat().st_mtime_ns for p in out.glob("000[12]/*.png")} == stamps  # finished jobs untouched
    assert all(r["status"] == "ok" for r in read_manifest(out).values()) and len(read_manifest(out)) == 5
    assert run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path) == []  # all done: nothing runs
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run_jobs(tiny_model, jobs, fresh, FAST, 0, tmp_path)
    ids = [j.id for j in jobs]
    assert outputs(out, ids) == outputs(fresh, ids)  # resuming changed no result


@pytest.fixture
def cli_tiny(monkeypatch, tiny_model):
    import diffedit_helpers.models as models

    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)


BAD_LINES = {
    "0003": ('{"image": "scene0.png", "source": "a"', "line 3 is not valid JSON"),
    "0004": ('["scene0.png", "a", "b"]', "line 4 must be a JSON object"),
    "0005": ('{"image": "scene0.png", "source": "a"}', "line 5: missing target"),
    "0006": ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"treshold": 0.3}}',
             "line 6: unknown setting(s) treshold"),
    "0007": ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"threshold": 2}}',
             "line 7: settings.threshold: threshold must be in [0, 1], got 2"),
    "0008": ('{"image": "nowhere.png", "source": "a", "target": "b"}', "image: file "),
    "0009": ('{"image": "scene0.png", "source": "a", "target": ""}', "target_prompt must be a non-empty string"),
    "0010": ('{"image": "scene0.png", "source": "a", "target": "b", "seed": -1}', "line 10: seed must be an integer >= 0"),
    "0011": ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"guidance_scale": -1}}',
             "guidance_scale: guidance must be >= 0"),
    "my-job": ('{"id": "my-job", "image": "scene1.png", "source": "", "target": "a red circle on grass", '
               '"settings": {"strength": 0.5, "negative_prompt": "blue"}}', None),
    "0013": ('{"id": "my-job", "image": "scene0.png", "source": "a", "target": "b"}', "line 13: id 'my-job' is already used by line 12"),
    "0014": ('{"id": "../up", "image": "scene0.png", "source": "a", "target": "b"}', "line 14: id must be"),
}


def test_bad_job_lines_are_recorded_with_a_clear_error_and_the_others_go_on(tmp_path, cli_tiny, capsys):
    jobs = write_jobs(tmp_path, 2, [line for line, _ in BAD_LINES.values()])
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--steps", "6", "--n-noise", "2", "--quiet"]) == 1
    err = capsys.readouterr()
    manifest = read_manifest(out)
    assert sorted(manifest) == sorted(["0001", "0002", *BAD_LINES])
    for job_id, (_, message) in BAD_LINES.items():
        record = manifest[job_id]
        if message is None:
            assert record["status"] == "ok", record
            assert record["settings"]["edit_start"] == 0.5 and record["settings"]["negative_prompt"] == "blue"
            continue
        assert record["status"] == "error" and message in record["error"], (job_id, record)
        assert sum(f"error: job {job_id}: " in line for line in err.err.splitlines()) == 1
        assert not (out / job_id).exists()
    assert manifest["0001"]["status"] == manifest["0002"]["status"] == "ok"
    assert (out / "0002" / "edited.png").exists() and not (out / ".." / "up").exists()
    assert "3 of 14 jobs done" in err.out and "failed: 0003, 0004" in err.out
    # a rerun skips them all (failed ones too), unless asked to retry the failed ones
    assert main(["batch", str(jobs), "--out", str(out), "--quiet"]) == 1
    assert len((out / MANIFEST).read_text().splitlines()) == 14
    assert main(["batch", str(jobs), "--out", str(out), "--quiet", "--retry-failed"]) == 1
    assert len((out / MANIFEST).read_text().splitlines()) == 14 + 11


def test_the_command_itself_refuses_a_missing_jobs_file_or_a_bad_option(tmp_path, cli_tiny, capsys):
    assert main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: jobs file ")
    jobs = write_jobs(tmp_path, 1)
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--threshold", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: --threshold: threshold must be in [0, 1]")
    assert not (tmp_path / "out").exists()


def test_outputs_are_written_exclusively_and_manifest_lines_appended_whole(tmp_path):
    path = tmp_path / "a.png"
    write_output(path, b"first")
    with pytest.raises(FileExistsError):
        write_output(path, b"second")
    assert path.read_bytes() == b"first"
    log = tmp_path / MANIFEST
    for i in range(3):
        write_output(log, (json.dumps({"id": str(i)}) + "\n").encode(), append=True)
    assert [json.loads(line)["id"] for line in log.read_text().splitlines()] == ["0", "1", "2"]
    with open(log, "a") as f:
        f.write('{"id": "3", "sta')  # a line torn by a killed run is ignored
    assert sorted(read_manifest(tmp_path)) == ["0", "1", "2"]


def test_a_job_folder_that_exists_without_a_record_is_never_replaced(tmp_path, tiny_model):
    jobs = read_jobs(write_jobs(tmp_path, 1))
    out = tmp_path / "out"
    (out / "0001").mkdir(parents=True)
    (out / "0001" / "edited.png").write_bytes(b"mine")
    [record] = run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path)
    assert record["status"] == "error" and "exists but the manifest does not record job '0001'" in record["error"]
    assert (out / "0001" / "edited.png").read_bytes() == b"mine"


def test_launching_with_cpu_but_without_mpi_is_said():
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}  # what `accelerate launch --num_processes 2 --cpu` sets
    assert "started one process" in single_process_note(env, 1)
    assert single_process_note(env, 2) is None and single_process_note({"ACCELERATE_USE_CPU": "True"}, 1) is None


def test_a_job_image_path_is_read_from_the_jobs_file_folder(tmp_path, tiny_model, monkeypatch):
    jobs = read_jobs(write_jobs(tmp_path, 1))
    monkeypatch.chdir(tmp_path.parent)  # not where the jobs file is
    out = tmp_path / "out"
    out.mkdir()
    [record] = run_jobs(tiny_model, jobs, out, FAST, 0, tmp_path)
    assert record["status"] == "ok" and record["image"] == "scene0.png"
    assert np.asarray(Image.open(out / "0001" / "mask.png")).shape == (64, 64)


def test_accelerate_is_imported_only_when_the_batch_command_runs():
    code = ("import sys, diffedit_helpers, diffedit_helpers.cli, diffedit_helpers.batch; "
            "assert 'accelerate' not in sys.modules, 'accelerate imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
