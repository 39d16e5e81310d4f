"""The edit command's output files: the modes a plain open() gives, --overwrite all or nothing, and
what a run killed while saving leaves put right by the next run."""

import os

import pytest
from PIL import Image

import diffedit_helpers.outputs as outputs
from diffedit_helpers.cli import main
from diffedit_helpers.world.shapes import horse_scene, render

SRC, TGT = "a brown horse on grass", "a zebra on grass"
NAMES = ("mask.png", "edited.png", "overview.png")


@pytest.fixture
def picture_file(tmp_path):
    path = tmp_path / "in.png"
    render(horse_scene())[0].save(path)
    return path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def run_edit(picture_file, out, *extra) -> int:
    return main(["edit", str(picture_file), "--source", SRC, "--target", TGT, "--out", str(out), "--steps", "6",
                 "--n-noise", "2", "--quiet", *extra])


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_outputs_take_the_mode_a_plain_open_gives(tmp_path, picture_file, cli_with_tiny_model, umask_022):
    out = tmp_path / "out"
    assert run_edit(picture_file, out) == 0
    assert [mode(out / n) for n in NAMES] == [0o644] * 3
    os.chmod(out / "edited.png", 0o640)
    assert run_edit(picture_file, out, "--overwrite") == 0
    assert mode(out / "edited.png") == 0o640 and mode(out / "mask.png") == 0o644  # as open(..., "w") keeps a file's mode


def test_overwrite_checks_every_destination_before_replacing_any(tmp_path, picture_file, cli_with_tiny_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in NAMES[:2]:
        (out / name).write_bytes(b"old " + name.encode())
    (out / "overview.png").mkdir()
    assert run_edit(picture_file, out, "--overwrite") == 2
    assert "overview.png is a folder" in capsys.readouterr().err and cli_with_tiny_model == []
    assert [(out / n).read_bytes() for n in NAMES[:2]] == [b"old mask.png", b"old edited.png"]


def test_a_run_killed_while_saving_leaves_nothing_that_blocks_the_next(tmp_path, picture_file, cli_with_tiny_model,
                                                                       monkeypatch):
    """Killed after placing mask.png and before edited.png: no clean-up runs (a kill), so its
    temporary files and the lone mask.png stay; the next run removes them and writes the set."""
    out = tmp_path / "out"
    real_place, real_remove, placed = outputs._place, outputs._remove, []

    def killed(tmp, path, overwrite):
        if placed:
            raise SystemExit("killed")
        placed.append(path)
        return real_place(tmp, path, overwrite)

    monkeypatch.setattr(outputs, "_place", killed)
    monkeypatch.setattr(outputs, "_remove", lambda path: None)  # a killed process cleans nothing up
    child = os.fork()
    if child == 0:  # the run that is killed, in its own process, so that its process id is gone afterwards
        try:
            run_edit(picture_file, out)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    monkeypatch.setattr(outputs, "_place", real_place)
    monkeypatch.setattr(outputs, "_remove", real_remove)
    left = sorted(p.name for p in out.iterdir())
    assert "mask.png" in left and "edited.png" not in left and any(n.endswith(".part") for n in left), left
    assert run_edit(picture_file, out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert Image.open(out / "edited.png").size == (64, 64)

