"""The notebooks as files a reader opens: small enough for GitHub (no saved widget state), one short setup
cell, the "Two paths" paragraph once (in 00) and a pointer to it elsewhere, and links to the paper, the
blog post and the glossary from every notebook."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PAPER, POST = "arxiv.org/abs/2210.11427", "blog.scottlogic.com/2023/12/13/diffedit.html"


def _cells(notebook: Path) -> list:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _markdown(notebook: Path) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(notebook) if c["cell_type"] == "markdown")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_the_notebook_is_under_a_megabyte_without_widget_state(notebook):
    assert notebook.stat().st_size < 1_000_000, f"{notebook.name}: {notebook.stat().st_size:,} bytes"
    assert "widgets" not in json.loads(notebook.read_text(encoding="utf-8"))["metadata"]  # saved widget state


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_the_setup_cell_is_short_and_the_notebook_links_its_sources(notebook):
    setup = [c for c in _cells(notebook) if c["cell_type"] == "code" and "find_spec" in "".join(c["source"])]
    assert len(setup) == 1 and len("".join(setup[0]["source"]).strip().splitlines()) <= 8
    text = _markdown(notebook)
    assert PAPER in text and POST in text and "GLOSSARY.md" in text
    paragraph = re.findall(r"\*Two paths[.:]\* Every notebook runs", text)
    assert len(paragraph) == (1 if notebook.stem.startswith("00") else 0)
    assert notebook.stem.startswith("00") or "(00_quickstart.ipynb)" in text.split("\n## ")[0]  # the pointer, up top


def test_the_glossary_spells_out_what_the_notebooks_measure_with():
    glossary = (NOTEBOOKS[0].parent / "GLOSSARY.md").read_text(encoding="utf-8")
    for term in ("IoU (intersection over union)", "PSNR (peak signal-to-noise ratio)", "The judge", "inpaint_strength"):
        assert term in glossary
