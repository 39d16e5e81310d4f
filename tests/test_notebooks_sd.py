"""Every notebook on the Stable Diffusion path, offline: executed top to bottom with DIFFEDIT_MODEL
naming an SD-1.5-shaped folder with random weights (512-px photos, 8x VAE factor, 77-token CLIP
prompts). No error is allowed; outputs are not compared with the stored ones (random weights paint
noise, and the stored outputs are the bundled model's). The executed copies go to a temporary
folder: the notebooks in the repository are never rewritten."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from diffedit_helpers.world.sd_shaped import save_sd_folder

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _execute(notebook: Path, out_dir: Path, env: dict) -> tuple[Path, int, str]:
    cmd = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(out_dir),
           "--ExecutePreprocessor.timeout=900", str(notebook)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=notebook.parent)
    return notebook, proc.returncode, proc.stderr[-3000:]


def _printed(notebook: Path) -> str:
    "Everything the executed notebook's code cells printed."
    nb = json.loads(notebook.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


@pytest.mark.slow
def test_every_notebook_runs_on_an_sd_shaped_model(tmp_path):
    assert len(NOTEBOOKS) >= 8
    folder = save_sd_folder(tmp_path / "sd15-shaped")
    env = dict(os.environ, DIFFEDIT_MODEL=str(folder), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with ThreadPoolExecutor(max_workers=2) as pool:  # two kernels at a time, one thread each
        results = list(pool.map(lambda nb: _execute(nb, tmp_path / "executed", env), NOTEBOOKS))
    failed = [f"{nb.name}: {err}" for nb, code, err in results if code != 0]
    assert not failed, "\n\n".join(failed)
    for nb in NOTEBOOKS:
        printed = _printed(tmp_path / "executed" / nb.name)
        assert f"model: {folder}" in printed, f"{nb.name} did not take the Stable Diffusion path"
        assert "horse_on_grass" not in printed  # photos, never the shapes world, for Stable Diffusion
