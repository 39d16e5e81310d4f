"""Installing the package where our users run it: beside Colab's and Kaggle's preinstalled versions
(nothing of theirs may change), and on the oldest versions the requirements allow.

Two checks need the package registry or packages installed aside; `make test` prepares both
(`make test-compat`) and they skip when run without that preparation."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = {"colab": "3.13", "kaggle": "3.12"}  # platform file in tools/platforms/ -> its Python
FLOOR_SITE = os.environ.get("DIFFEDIT_TRANSFORMERS_FLOOR")  # transformers at its floor, installed aside
CHECK_INSTALL = os.environ.get("DIFFEDIT_CHECK_INSTALL") == "1"


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_the_package_and_requirements_txt_ask_for_the_same_versions():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    notebooks_only = {"ipykernel"}  # what the notebooks need beyond the package
    assert sorted(deps) == sorted(r for r in _requirements(ROOT / "requirements.txt") if _name(r) not in notebooks_only)
    assert not any(_name(r) in ("torch", "accelerate") for r in deps)  # never pulled in by installing the package


def test_the_transformers_floor_is_the_version_tested():
    floor = next(r for r in _requirements(ROOT / "requirements.txt") if _name(r) == "transformers")
    tested = re.search(r"transformers==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert floor == "transformers>=" + ".".join(tested.split(".")[:2])


_ENCODE = (
    "import json, sys, torch, transformers\n"
    "from transformers import CLIPTextModel, CLIPTokenizer\n"
    "folder = sys.argv[1]\n"
    "model, info = CLIPTextModel.from_pretrained(folder + '/text_encoder', output_loading_info=True)\n"
    "model = model.float()  # the stored float16 weights, computed in float32 whatever the version's default\n"
    "tok = CLIPTokenizer.from_pretrained(folder + '/tokenizer')\n"
    "ids = tok(['a zebra on grass'], padding='max_length', max_length=77, return_tensors='pt').input_ids\n"
    "with torch.no_grad():\n"
    "    emb = model(ids).last_hidden_state\n"
    "print(json.dumps(dict(version=transformers.__version__, missing=list(info['missing_keys']),\n"
    "                      unexpected=list(info['unexpected_keys']), ids=ids[0, :6].tolist(), emb=emb[0, :4, :4].tolist())))\n"
)


def _encode(site: str | None) -> dict:
    from diffedit_helpers import BUNDLED_PATH

    env = dict(os.environ, PYTHONPATH=site or "", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _ENCODE, str(BUNDLED_PATH)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not FLOOR_SITE, reason="needs transformers at its floor installed aside (make test-compat)")
def test_the_bundled_text_encoder_loads_whole_on_the_transformers_floor():
    import numpy as np

    floor, current = _encode(FLOOR_SITE), _encode(None)
    assert floor["version"] != current["version"]  # two versions really were compared
    assert floor["missing"] == [] and floor["unexpected"] == [], floor
    assert floor["ids"] == current["ids"] == [49406, 320, 22548, 525, 5922, 49407]
    np.testing.assert_allclose(floor["emb"], current["emb"], atol=1e-4)  # the same weights, not random ones


@pytest.mark.skipif(not CHECK_INSTALL, reason="asks the package registry (make test-compat)")
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_installing_beside_the_platforms_versions_changes_none_of_them(platform, tmp_path):
    constraints = ROOT / "tools" / "platforms" / f"{platform}.txt"
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
           "--python-version", PLATFORMS[platform], "--only-binary=:all:", "-r", str(ROOT / "requirements.txt"),
           "-c", str(constraints)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip cannot install beside {platform}'s versions:\n{proc.stderr[-3000:]}"
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    pinned = dict(line.split("==") for line in _requirements(constraints) if "==" in line)
    for name, version in pinned.items():
        assert chosen.get(name.lower(), version) == version, (name, chosen.get(name.lower()))
    assert "torch" not in chosen  # the preinstalled (CUDA) torch is never replaced


def test_building_the_package_says_no_packaging_warning_and_ships_the_bundled_model(tmp_path):
    "What `pip install -e .` builds: no setuptools warning, and every file of the bundled model in the wheel."
    import shutil
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("the build needs setuptools >= 77 (pyproject.toml's build-system)")
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "diffedit_helpers", source / "diffedit_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w",
           str(tmp_path / "wheel"), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="always"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
            if re.search(r"Warning:|absent from|deprecated", line) and "byte-compiling is disabled" not in line]
    assert said == []
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    bundled = {str(p.relative_to(ROOT)) for p in (ROOT / "diffedit_helpers" / "bundled").rglob("*") if p.is_file()}
    assert bundled and bundled <= shipped
