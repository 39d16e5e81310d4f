"""The batch command left running unattended: two runs on one folder, a changed jobs file, ids
that collide or are paths, a torn manifest, and a run killed at any write. Each test drives the
command itself and reads the manifest and the folders as a user would."""

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from test_batch import job_lines

import diffedit_helpers.edit as edit_module
from diffedit_helpers.cli import main

CLI_FAST = ["--steps", "6", "--n-noise", "2", "--quiet"]


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def records(out: Path) -> list[dict]:
    "The manifest's whole records, in order (a torn line is skipped)."
    found = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            pass
    return found


def pictures(out: Path) -> dict:
    "{folder/file: bytes} of every finished picture in `out`."
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


def batch(jobs: Path, out: Path, *extra) -> int:
    try:
        return main(["batch", str(jobs), "--out", str(out), *CLI_FAST, *extra])
    except KeyboardInterrupt:  # never let one reach pytest: it would stop the session
        pytest.fail("KeyboardInterrupt escaped the batch command")


@pytest.fixture
def cli_tiny(cli_with_tiny_model):
    return cli_with_tiny_model


@pytest.fixture
def edits(monkeypatch):
    "The target prompts of the edits `diffedit` runs."
    real = edit_module.diffedit
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("target_prompt", args[3] if len(args) > 3 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(edit_module, "diffedit", counted)
    return calls


# ----------------------------------------------------------------------------- high: two runs, identity, names, the manifest
def command_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))


def command(jobs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diffedit_helpers", "batch", str(jobs), "--out", str(out), *CLI_FAST]


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_and_says_who_holds_it(tmp_path):
    """Two real processes on one --out, the bundled model: the first stalls in its first job (its
    image comes from a local server that waits), the second is refused without touching anything."""
    import http.server
    import threading

    requested, release = threading.Event(), threading.Event()
    lines = job_lines(tmp_path, 2)
    picture = (tmp_path / "scene0.png").read_bytes()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.set()
            release.wait(timeout=300)
            self.send_response(200)
            self.send_header("Content-Length", str(len(picture)))
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    try:
        spec = dict(json.loads(lines[0]), image=f"http://127.0.0.1:{server.server_port}/scene0.png")
        jobs = write_lines(tmp_path / "jobs.jsonl", [json.dumps(spec), lines[1]])
        first = subprocess.Popen(command(jobs, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=command_env())
        try:
            assert requested.wait(timeout=300), "the first run never fetched its image"
            second = subprocess.run(command(jobs, out), capture_output=True, text=True, timeout=600, env=command_env())
        finally:
            release.set()
            stdout, stderr = first.communicate(timeout=600)
    finally:
        server.shutdown()
    assert second.returncode == 2, second.stderr
    assert f"in use by another batch run (pid {first.pid} on host {socket.gethostname()}, since " in second.stderr
    assert first.returncode == 0, stderr
    assert "2 of 2 jobs done" in stdout
    assert len(records(out)) == 2  # each job ran once, by the first run
    again = subprocess.run(command(jobs, out), capture_output=True, text=True, timeout=600, env=command_env())
    assert again.returncode == 0 and "2 of 2 jobs done" in again.stdout, again.stderr
    assert len(records(out)) == 2  # the free folder's rerun finds it all done


def test_a_job_inserted_above_finished_ones_runs_and_they_are_kept(tmp_path, cli_tiny, edits, capsys):
    lines = job_lines(tmp_path, 3)
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    assert batch(write_lines(jobs, lines[1:]), out) == 0
    before = pictures(out)
    new_target = json.loads(lines[0])["target"]
    edits.clear()
    assert batch(write_lines(jobs, lines), out) == 0  # the new job is line 1 now
    assert "3 of 3 jobs done" in capsys.readouterr().out
    assert edits == [new_target]  # the new job ran, the finished ones did not
    after = pictures(out)
    assert {k: after[k] for k in before} == before
    alone = tmp_path / "alone"
    assert batch(write_lines(tmp_path / "one.jsonl", lines[:1]), alone) == 0
    assert set(pictures(alone).values()) <= set(after.values())  # the new job's folder holds the new job's edit


def test_a_changed_job_runs_again(tmp_path, cli_tiny, edits):
    lines = job_lines(tmp_path, 1)
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    assert batch(write_lines(jobs, lines), out) == 0
    changed = dict(json.loads(lines[0]), seed=99)
    edits.clear()
    assert batch(write_lines(jobs, [json.dumps(changed)]), out) == 0 and len(edits) == 1


def test_an_id_that_is_another_lines_number_takes_nothing_from_it(tmp_path, cli_tiny, edits, capsys):
    lines = job_lines(tmp_path, 3)
    lines[1] = json.dumps(dict(json.loads(lines[1]), id="0003"))
    jobs, out = write_lines(tmp_path / "jobs.jsonl", lines), tmp_path / "out"
    assert batch(jobs, out) == 0
    assert "3 of 3 jobs done" in capsys.readouterr().out and len(edits) == 3
    assert batch(jobs, out, "--retry-failed") == 0 and len(edits) == 3
    assert all(r["status"] == "ok" for r in records(out))


def test_a_second_line_with_the_same_id_fails_alone(tmp_path, cli_tiny, capsys):
    lines = job_lines(tmp_path, 2)
    lines = [json.dumps(dict(json.loads(line), id="same")) for line in lines]
    jobs, out = write_lines(tmp_path / "jobs.jsonl", lines), tmp_path / "out"
    for extra in ((), ("--retry-failed",)):
        assert batch(jobs, out, *extra) == 1
        err = capsys.readouterr()
        assert "1 of 2 jobs done" in err.out and "id 'same' is already used by line 1" in err.err
    assert [r["status"] for r in records(out) if r["line"] == 1] == ["ok"]  # never overridden by line 2's error


@pytest.mark.parametrize("bad_id", ["manifest.jsonl", "MANIFEST.JSONL", ".hidden", "a/b", "..", "con", "nul.png", "x."])
def test_an_id_is_a_name_never_a_path_or_one_of_ours(tmp_path, cli_tiny, capsys, bad_id):
    lines = job_lines(tmp_path, 2)
    lines[0] = json.dumps(dict(json.loads(lines[0]), id=bad_id))
    jobs, out = write_lines(tmp_path / "jobs.jsonl", lines), tmp_path / "out"
    assert batch(jobs, out) == 1
    assert "line 1: id " in capsys.readouterr().err
    assert (out / "manifest.jsonl").is_file() and sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["out"]
    assert batch(jobs, out) == 1  # and every later run still reads its manifest
    assert "1 of 2 jobs done" in capsys.readouterr().out


def test_a_torn_last_line_loses_no_later_record(tmp_path, cli_tiny, edits, capsys):
    lines = job_lines(tmp_path, 2)
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    assert batch(write_lines(jobs, lines[:1]), out) == 0
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"id": "0002", "sta')  # what a run killed in mid-append leaves
    assert batch(write_lines(jobs, lines), out) == 0
    assert [r["status"] for r in records(out)] == ["ok", "ok"]
    edits.clear()
    assert batch(jobs, out) == 0 and edits == []
    assert "2 of 2 jobs done" in capsys.readouterr().out


def test_a_folder_placed_before_a_kill_is_adopted_and_staging_folders_are_removed(tmp_path, cli_tiny, edits, capsys):
    lines = job_lines(tmp_path, 2)
    jobs, out = write_lines(tmp_path / "jobs.jsonl", lines), tmp_path / "out"
    assert batch(jobs, out) == 0
    kept = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text(kept[0] + "\n")  # killed after the second folder's rename, before its record
    [name] = [p.name for p in out.iterdir() if p.is_dir() and p.name not in json.dumps(kept[0])]
    before = pictures(out)
    staging = out / f".{name}.partial-1234-0"  # and a staging folder from an earlier kill
    staging.mkdir()
    (staging / "edited.png").write_bytes(b"half")
    edits.clear()
    assert batch(jobs, out) == 0 and edits == []  # adopted: nothing edited again
    assert "2 of 2 jobs done" in capsys.readouterr().out
    assert pictures(out) == before and not staging.exists()
    assert batch(jobs, out, "--retry-failed") == 0 and edits == []


def test_a_kill_at_any_write_loses_and_redoes_no_finished_job(tmp_path, cli_tiny, edits, monkeypatch):
    """Every write point of a two-job run (each job: edited.png, mask.png, job.json, the manifest
    line) is where a kill lands in turn; the rerun completes the folder, and every job finished
    before the kill is neither lost nor edited again."""
    import diffedit_helpers.manifest as manifest_module

    jobs = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 2))
    assert batch(jobs, tmp_path / "whole") == 0
    whole = pictures(tmp_path / "whole")
    real_write, real_rmtree = manifest_module.write_output, manifest_module.shutil.rmtree
    left_staging = 0
    for kill_at in range(8):
        out = tmp_path / f"killed-{kill_at}"
        writes = []

        def killed(path, data, append=False):
            if len(writes) == kill_at:
                raise SystemExit("killed")  # not caught as a job's error: the run stops here
            writes.append(path)
            return real_write(path, data, append)

        monkeypatch.setattr(manifest_module, "write_output", killed)
        monkeypatch.setattr(manifest_module.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing up
        with pytest.raises(SystemExit):
            batch(jobs, out)
        monkeypatch.setattr(manifest_module, "write_output", real_write)
        monkeypatch.setattr(manifest_module.shutil, "rmtree", real_rmtree)
        finished = {p.parent.name for p in out.glob("[!.]*/job.json")}
        left_staging += any(".partial-" in p.name for p in out.iterdir())
        edits.clear()
        assert batch(jobs, out) == 0, kill_at
        assert len(edits) == 2 - len(finished), kill_at  # what was finished is not redone
        assert pictures(out) == whole, kill_at  # nor lost, and the rest is completed as it would have been
        assert not [p for p in out.iterdir() if ".partial-" in p.name]
        assert sorted(r["line"] for r in records(out) if r["status"] == "ok") == [1, 2], kill_at
    assert left_staging == 6  # the kills inside a job's folder left its staging folder, as a real kill does


def test_a_run_that_cannot_load_its_model_leaves_the_folder_free(tmp_path, monkeypatch, tiny_model, capsys):
    import diffedit_helpers.models as models

    def broken(name, device=None, dtype=None):
        raise OSError("no such model")

    jobs, out = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 1)), tmp_path / "out"
    monkeypatch.setattr(models, "load_model", broken)
    assert batch(jobs, out) == 2 and "error: no such model" in capsys.readouterr().err
    monkeypatch.setattr(models, "load_model", lambda name, device=None, dtype=None: tiny_model)
    assert batch(jobs, out) == 0


# ----------------------------------------------------------------------------- medium: interrupts, settings, the jobs file
def test_ctrl_c_says_interrupted_without_a_traceback(tmp_path, cli_tiny, monkeypatch, capsys):
    jobs = write_lines(tmp_path / "jobs.jsonl", job_lines(tmp_path, 1))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edit_module, "diffedit", interrupt)
    assert batch(jobs, tmp_path / "out") == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_jobs_diffusers_names_win_over_the_command_lines_options(tmp_path, cli_tiny):
    spec = json.loads(job_lines(tmp_path, 1)[0])
    spec["settings"] = {"guidance_scale": 7.5, "num_inference_steps": 5, "strength": 0.5}
    jobs, out = write_lines(tmp_path / "jobs.jsonl", [json.dumps(spec)]), tmp_path / "out"
    assert batch(jobs, out, "--guidance", "5", "--start", "0.25") == 0
    [record] = records(out)
    assert (record["settings"]["guidance"], record["settings"]["steps"]) == (7.5, 5)
    assert int(record["settings"]["edit_start"] * 5) == 5 - int(5 * 0.5)


def test_a_job_whose_own_field_and_name_disagree_is_refused(tmp_path, cli_tiny, capsys):
    spec = dict(json.loads(job_lines(tmp_path, 1)[0]), settings={"guidance": 3.0, "guidance_scale": 7.5})
    assert batch(write_lines(tmp_path / "jobs.jsonl", [json.dumps(spec)]), tmp_path / "out") == 1
    assert "line 1: settings.guidance_scale: guidance_scale=7.5 and config.guidance=3.0 disagree" in capsys.readouterr().err


def test_a_long_jobs_file_is_read_as_a_stream(tmp_path, cli_tiny, monkeypatch):
    "The first job starts with only a few lines of a 24 MB jobs file in memory."
    line = job_lines(tmp_path, 1)[0]
    jobs = tmp_path / "jobs.jsonl"
    with open(jobs, "w") as f:
        f.write((line + "\n") * 200_000)
    peak = []

    def first_edit(*args, **kwargs):
        peak.append(tracemalloc.get_traced_memory()[1])
        raise KeyboardInterrupt

    monkeypatch.setattr(edit_module, "diffedit", first_edit)
    tracemalloc.start()
    try:
        batch(jobs, tmp_path / "out")
    finally:
        tracemalloc.stop()
    assert len(peak) == 1 and peak[0] < 8 * 2**20, peak


def test_the_jobs_file_is_named_in_what_is_wrong_with_it(tmp_path, cli_tiny, capsys):
    out = tmp_path / "out"
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert batch(folder, out) == 2
    assert "is a folder" in capsys.readouterr().err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(job_lines(tmp_path, 1)[0].replace("on", "\u00f6n").encode("latin-1") + b"\n")
    assert batch(latin, out) == 1
    assert f"line 1 of {str(latin)!r} is not UTF-8" in capsys.readouterr().err


def test_a_byte_order_mark_is_not_part_of_line_one(tmp_path, cli_tiny):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + job_lines(tmp_path, 1)[0].encode() + b"\n")
    assert batch(bom, tmp_path / "out") == 0


def test_a_seed_out_of_range_names_its_line(tmp_path, cli_tiny, capsys):
    spec = dict(json.loads(job_lines(tmp_path, 1)[0]), seed=2**77)
    assert batch(write_lines(tmp_path / "jobs.jsonl", ["", json.dumps(spec)]), tmp_path / "out") == 1
    assert f"line 2: seed must be an integer in [0, 2**64 - 1], got {2**77}" in capsys.readouterr().err


def test_no_jobs_is_an_error_before_the_model_loads(tmp_path, cli_tiny, capsys):
    assert batch(write_lines(tmp_path / "jobs.jsonl", ["", "  "]), tmp_path / "out") == 2
    assert "holds no jobs" in capsys.readouterr().err and cli_tiny == []
