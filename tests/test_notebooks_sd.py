"""Every notebook on the Stable Diffusion path, offline: executed top to bottom with DIFFEDIT_MODEL
naming an SD-1.5-shaped folder with random weights (512-px photos, 8x VAE factor, 77-token CLIP
prompts). No error is allowed; outputs are not compared with the stored ones (random weights paint
noise, and the stored outputs are the bundled model's). The executed copies go to a temporary
folder: the notebooks in the repository are never rewritten. One test per notebook, so that `make test`'s
two workers share them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffedit_helpers.world.sd_shaped import save_sd_folder

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _execute(notebook: Path, out_dir: Path, env: dict) -> tuple[int, str]:
    "Run `notebook` top to bottom into `out_dir`: (exit code, the end of stderr)."
    cmd = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(out_dir),
           "--ExecutePreprocessor.timeout=900", str(notebook)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=notebook.parent)
    return proc.returncode, proc.stderr[-3000:]


def _printed(notebook: Path) -> str:
    "Everything the executed notebook's code cells printed."
    nb = json.loads(notebook.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_sd_folder(tmp_path_factory.mktemp("sd") / "sd15-shaped")


def test_there_is_a_notebook_series():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_the_notebook_runs_on_an_sd_shaped_model(notebook, sd_folder, tmp_path):
    env = dict(os.environ, DIFFEDIT_MODEL=str(sd_folder), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    code, err = _execute(notebook, tmp_path, env)
    assert code == 0, f"{notebook.name}: {err}"
    printed = _printed(tmp_path / notebook.name)
    assert f"model: {sd_folder}" in printed, f"{notebook.name} did not take the Stable Diffusion path"
    assert "horse_on_grass" not in printed  # photos, never the shapes world, for Stable Diffusion
