"""The batch command: jobs split by rank give the same bits as one process, a run resumes from its
manifest by what each job is, one run writes into a folder at a time, what a killed run leaves is
put right by the next, a bad job is recorded and the others go on, and no file is ever replaced."""

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
import diffedit_helpers.manifest as manifest_module
from diffedit_helpers import DiffEditConfig
from diffedit_helpers.batch import MANIFEST, run_jobs, single_process_note
from diffedit_helpers.cli import main
from diffedit_helpers.jobs import iter_jobs
from diffedit_helpers.manifest import read_manifest, write_output
from diffedit_helpers.world.shapes import make_edit, random_scene, render

FAST = DiffEditConfig(steps=6, n_noise=2, threshold=0.3)
KINDS = ("colour", "pattern", "shape")
CLI_FAST = ["--steps", "6", "--n-noise", "2", "--quiet"]


def job_lines(folder: Path, n: int, first: int = 0) -> list[str]:
    "n shapes-world edits (images saved in `folder`, relative paths), one JSON line each."
    lines = []
    for i in range(first, first + n):
        edit = make_edit(random_scene(2_000_000 + i), KINDS[i % 3])
        render(edit.source)[0].save(folder / f"scene{i}.png")
        lines.append(json.dumps({"image": f"scene{i}.png", "source": edit.source_prompt, "target": edit.target_prompt,
                                 "seed": i, "settings": {"threshold": 0.25 + 0.05 * (i % 2)}}))
    return lines


def write_jobs(folder: Path, n: int, extra_lines=(), name: str = "jobs.jsonl") -> Path:
    "n shapes-world edits as a JSON-lines file, then `extra_lines` as they are."
    path = folder / name
    path.write_text("\n".join([*job_lines(folder, n), *extra_lines]) + "\n")
    return path


def jobs_of(path: Path) -> list:
    return list(iter_jobs(path))


def by_line(out: Path) -> dict:
    "{line: record} of the manifest's jobs."
    return {r["line"]: r for r in read_manifest(out).values()}


def outputs(out: Path, names) -> dict:
    "{name: (edited bytes, mask bytes)} of the finished jobs."
    return {i: ((out / i / "edited.png").read_bytes(), (out / i / "mask.png").read_bytes()) for i in names}


def folders(out: Path) -> list[str]:
    return sorted(r["id"] for r in read_manifest(out).values() if r["status"] == "ok")


def batch(jobs: Path, out: Path, *extra) -> int:
    return main(["batch", str(jobs), "--out", str(out), *CLI_FAST, *extra])


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*prefix, jobs: Path, out: Path) -> list[str]:
    return [*prefix, "-m", "diffedit_helpers", "batch", str(jobs), "--out", str(out), *CLI_FAST]


def command_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))


def run_command(*prefix, jobs: Path, out: Path):
    "The batch command in fresh processes, one thread each, on the bundled model."
    return subprocess.run(command(*prefix, jobs=jobs, out=out), capture_output=True, text=True, timeout=600,
                          env=command_env())


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
    assert "8 of 8 jobs done" in two.stdout
    m1, m2 = by_line(tmp_path / "one"), by_line(tmp_path / "two")
    lines = list(range(1, 9))
    assert sorted(m1) == sorted(m2) == lines
    assert [m2[n]["rank"] for n in lines] == [0, 1] * 4 and {m1[n]["rank"] for n in lines} == {0}  # really two processes
    names = [m1[n]["id"] for n in lines]
    assert outputs(tmp_path / "one", names) == outputs(tmp_path / "two", names)
    for n in lines:
        for key in ("key", "id", "mask_coverage", "settings", "seed", "outputs"):
            assert m1[n][key] == m2[n][key]


# ----------------------------------------------------------------------------- in process (tiny model)
def test_ranks_split_the_jobs_and_each_job_gets_what_it_gets_alone(tmp_path, tiny_model):
    jobs_path = write_jobs(tmp_path, 5)
    alone, split = tmp_path / "alone", tmp_path / "split"
    alone.mkdir(), split.mkdir()
    run_jobs(tiny_model, iter_jobs(jobs_path), alone, FAST, 0, tmp_path)
    # three processes, here run one after another into the same folder
    runs = [run_jobs(tiny_model, iter_jobs(jobs_path), split, FAST, 0, tmp_path, rank=r, world=3) for r in (2, 0, 1)]
    assert [[r["line"] for r in run.records] for run in runs] == [[3], [1, 4], [2, 5]]
    names = folders(alone)
    assert len(names) == 5 and folders(split) == names and outputs(alone, names) == outputs(split, names)
    manifest = by_line(split)
    assert all(manifest[n]["status"] == "ok" and manifest[n]["seed"] == n - 1 for n in range(1, 6))
    assert manifest[2]["settings"]["threshold"] == 0.3 and manifest[1]["settings"]["threshold"] == 0.25
    assert all(0 < manifest[n]["mask_coverage"] < 1 and manifest[n]["seconds"] > 0 for n in manifest)
    name = manifest[1]["id"]
    assert manifest[1]["outputs"] == {"edited": f"{name}/edited.png", "mask": f"{name}/mask.png"}


def test_an_interrupted_run_resumes_without_redoing_finished_jobs(tmp_path, tiny_model, monkeypatch):
    jobs = write_jobs(tmp_path, 5)
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
        run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path)
    assert sorted(by_line(out)) == [1, 2]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.png")}
    monkeypatch.setattr(edit_module, "diffedit", real)

    # a second interruption, while job 4 writes its mask: its half-written folder must not block the rerun
    real_write = manifest_module.write_output

    def stop_at_mask(path, data, append=False):
        if Path(path).name == "mask.png" and len(read_manifest(out)) == 3:
            raise KeyboardInterrupt
        return real_write(path, data, append)

    monkeypatch.setattr(manifest_module, "write_output", stop_at_mask)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path)
    assert sorted(by_line(out)) == [1, 2, 3] and len(folders(out)) == 3
    monkeypatch.setattr(manifest_module, "write_output", real_write)

    rerun = run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path)
    assert [r["line"] for r in rerun.records] == [4, 5]  # only what was left
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished jobs untouched
    assert all(r["status"] == "ok" for r in read_manifest(out).values()) and len(read_manifest(out)) == 5
    assert run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path).records == []  # all done: nothing runs
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run_jobs(tiny_model, iter_jobs(jobs), fresh, FAST, 0, tmp_path)
    assert folders(out) == folders(fresh) and outputs(out, folders(out)) == outputs(fresh, folders(fresh))


@pytest.fixture
def cli_tiny(monkeypatch, tiny_model):
    import diffedit_helpers.models as models

    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)


BAD_LINES = {
    3: ('{"image": "scene0.png", "source": "a"', "line 3 is not valid JSON"),
    4: ('["scene0.png", "a", "b"]', "line 4 must be a JSON object"),
    5: ('{"image": "scene0.png", "source": "a"}', "line 5: missing target"),
    6: ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"treshold": 0.3}}',
        "line 6: unknown setting(s) treshold"),
    7: ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"threshold": 2}}',
        "line 7: settings.threshold: threshold must be in [0, 1], got 2"),
    8: ('{"image": "nowhere.png", "source": "a", "target": "b"}', "image: file "),
    9: ('{"image": "scene0.png", "source": "a", "target": ""}', "target_prompt must be a non-empty string"),
    10: ('{"image": "scene0.png", "source": "a", "target": "b", "seed": -1}', "line 10: seed must be an integer in [0, 2**64 - 1]"),
    11: ('{"image": "scene0.png", "source": "a", "target": "b", "settings": {"guidance_scale": -1}}',
         "guidance_scale: guidance must be >= 0"),
    12: ('{"id": "my-job", "image": "scene1.png", "source": "", "target": "a red circle on grass", '
         '"settings": {"strength": 0.5, "negative_prompt": "blue"}}', None),
    13: ('{"id": "my-job", "image": "scene0.png", "source": "a", "target": "b"}', "line 13: id 'my-job' is already used by line 12"),
    14: ('{"id": "../up", "image": "scene0.png", "source": "a", "target": "b"}', "line 14: id must be"),
    15: ('{"image": "scene0.png", "source": "a", "target": "b", "seed": 151115727451828646838272}',
         "line 15: seed must be an integer in [0, 2**64 - 1], got 151115727451828646838272"),
}


def test_bad_job_lines_are_recorded_with_a_clear_error_and_the_others_go_on(tmp_path, cli_tiny, capsys):
    jobs = write_jobs(tmp_path, 2, [line for line, _ in BAD_LINES.values()])
    out = tmp_path / "out"
    assert batch(jobs, out) == 1
    err = capsys.readouterr()
    manifest = by_line(out)
    assert sorted(manifest) == [1, 2, *BAD_LINES]
    for n, (_, message) in BAD_LINES.items():
        record = manifest[n]
        if message is None:
            assert record["status"] == "ok", record
            assert record["settings"]["edit_start"] == 0.5 and record["settings"]["negative_prompt"] == "blue"
            assert record["id"] == "my-job" and (out / "my-job" / "edited.png").is_file()
            continue
        assert record["status"] == "error" and message in record["error"], (n, record)
        assert sum(f"error: line {n}" in line for line in err.err.splitlines()) == 1
    assert manifest[1]["status"] == manifest[2]["status"] == "ok"
    assert not (tmp_path / "up").exists() and len(folders(out)) == 3
    assert "3 of 15 jobs done" in err.out and "failed: line 3, line 4" in err.out
    # a rerun skips them all (failed ones too), unless asked to retry the failed ones
    assert batch(jobs, out) == 1
    assert len((out / MANIFEST).read_text().splitlines()) == 15
    assert batch(jobs, out, "--retry-failed") == 1
    assert len((out / MANIFEST).read_text().splitlines()) == 15 + 12


def test_the_command_itself_refuses_a_missing_jobs_file_or_a_bad_option(tmp_path, cli_with_tiny_model, capsys):
    assert main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: jobs file ")
    jobs = write_jobs(tmp_path, 1)
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--threshold", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: --threshold: threshold must be in [0, 1]")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--seed", str(2**77)]) == 2
    assert capsys.readouterr().err.startswith("error: --seed must be an integer in [0, 2**64 - 1]")
    assert not (tmp_path / "out").exists() and cli_with_tiny_model == []


def test_outputs_are_written_exclusively_with_the_umask_mode(tmp_path):
    path = tmp_path / "a.png"
    old = os.umask(0o022)
    try:
        write_output(path, b"first")
        os.umask(0o027)
        write_output(tmp_path / "b.png", b"x")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777, (tmp_path / "b.png").stat().st_mode & 0o777) == (0o644, 0o640)
    with pytest.raises(FileExistsError):
        write_output(path, b"second")
    assert path.read_bytes() == b"first"


def test_job_folders_take_the_mode_a_plain_mkdir_gives(tmp_path, tiny_model):
    jobs = write_jobs(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(0o022)
    try:
        run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path)
    finally:
        os.umask(old)
    [name] = folders(out)
    assert (out / name).stat().st_mode & 0o777 == 0o755
    assert (out / name / "edited.png").stat().st_mode & 0o777 == 0o644


def test_a_folder_in_the_way_of_a_job_is_never_replaced(tmp_path, tiny_model):
    jobs = tmp_path / "jobs.jsonl"
    spec = json.loads(job_lines(tmp_path, 1)[0])
    jobs.write_text(json.dumps({**spec, "id": "mine"}) + "\n")
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "edited.png").write_bytes(b"mine")
    [record] = run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path).records
    assert record["status"] == "error" and "exists and is not this job's folder" in record["error"]
    assert (out / "mine" / "edited.png").read_bytes() == b"mine" and os.listdir(out / "mine") == ["edited.png"]
    assert not any(".partial-" in p.name for p in out.iterdir())


def test_launching_with_cpu_but_without_mpi_is_said():
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}  # what `accelerate launch --num_processes 2 --cpu` sets
    assert "started one process" in single_process_note(env, 1)
    assert single_process_note(env, 2) is None and single_process_note({"ACCELERATE_USE_CPU": "True"}, 1) is None


def test_a_job_image_path_is_read_from_the_jobs_file_folder(tmp_path, tiny_model, monkeypatch):
    jobs = write_jobs(tmp_path, 1)
    monkeypatch.chdir(tmp_path.parent)  # not where the jobs file is
    out = tmp_path / "out"
    out.mkdir()
    [record] = run_jobs(tiny_model, iter_jobs(jobs), out, FAST, 0, tmp_path).records
    assert record["status"] == "ok" and record["image"] == "scene0.png"
    assert np.asarray(Image.open(out / record["id"] / "mask.png")).shape == (64, 64)


def test_accelerate_is_imported_only_when_the_batch_command_runs():
    code = ("import sys, diffedit_helpers, diffedit_helpers.cli, diffedit_helpers.batch; "
            "assert 'accelerate' not in sys.modules, 'accelerate imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
