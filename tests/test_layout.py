"""The package's shape: the teaching modules stand apart from the shapes world, importing the
package needs no widgets, the pipeline names its own stages, and bad settings carry their field."""

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffedit_helpers
from diffedit_helpers import STAGES, ConfigError, DiffEditConfig, diffedit
from diffedit_helpers.config import add_config_arguments, config_from_args
from diffedit_helpers.world.shapes import horse_scene, make_edit, render

PACKAGE = Path(diffedit_helpers.__file__).parent


def _imports(path: Path) -> set[str]:
    "The package-relative modules a file imports (`from .x import`, `from ..x import`, `diffedit_helpers.x`)."
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).parent.parts  # () or ("world",)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                name = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("diffedit_helpers."):
                name = node.module.removeprefix("diffedit_helpers.")
            else:
                continue
            found.add(name)
            found.update(f"{name}.{a.name}" if name else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("diffedit_helpers.") for a in node.names if a.name.startswith("diffedit_helpers."))
    return found


def test_teaching_modules_never_import_the_world_except_the_demo():
    teaching = [p for p in PACKAGE.glob("*.py")]
    assert {p.stem for p in teaching} >= {"config", "images", "latents", "text", "noising", "mask", "edit", "models", "cli"}
    for p in teaching:
        world = {m for m in _imports(p) if m == "world" or m.startswith("world.")}
        allowed = {"world.shapes", "world.shapes.horse_scene", "world.shapes.make_edit", "world.shapes.render"} if p.stem == "cli" else set()
        assert world <= allowed, f"{p.name} imports {sorted(world - allowed)}"
    # inside the world, only train imports train; tests and benchmarks take the architecture from tiny_model
    for p in (PACKAGE / "world").glob("*.py"):
        if p.stem != "train":
            assert not any(m.startswith("world.train") or m == "train" for m in _imports(p)), p.name


def test_the_mask_step_never_reaches_back_into_the_edit_step():
    assert not any(m == "edit" or m.startswith("edit.") for m in _imports(PACKAGE / "mask.py"))
    assert not any(m.split(".")[0] in ("mask", "edit") for m in _imports(PACKAGE / "noising.py"))


def _first_cycle(graph: dict) -> list | None:
    "A cycle in the module import graph {module: modules it imports}, as [a, b, ..., a], or None."
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = "done"

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_no_two_modules_import_each_other_even_inside_a_function():
    modules = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    assert "models" not in graph["text"]  # the prompts never reach back into the loader (models reads text.TIME_IDS)
    assert _first_cycle(graph) is None, " -> ".join(_first_cycle(graph))


def test_importing_the_package_needs_no_widgets():
    code = "import diffedit_helpers, sys; assert 'ipywidgets' not in sys.modules and 'IPython' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_diffedit_names_its_stages_in_order(tiny_model):
    edit = make_edit(horse_scene(), "pattern")
    events = []
    cfg = DiffEditConfig(steps=6, n_noise=2, threshold=0.2)
    r = diffedit(tiny_model, render(edit.source)[0], edit.source_prompt, edit.target_prompt, cfg,
                 torch.Generator().manual_seed(0), progress=False, on_stage=lambda s, e: events.append((s, e)))
    assert r.mask.any()
    assert events == [(s, e) for s in STAGES for e in ("start", "end")]  # every stage once, balanced, in order


@pytest.mark.parametrize("field, value", [("threshold", 1.5), ("blur", -3), ("n_noise", 0), ("edit_start", 1.0),
                                          ("encoding", "latent"), ("refine", 1), ("composite", "yes")])
def test_config_errors_carry_their_field(field, value):
    with pytest.raises(ConfigError) as err:
        DiffEditConfig(**{field: value}).validate()
    assert err.value.field == field and isinstance(err.value, ValueError) and field in str(err.value)


def test_command_line_options_are_the_config_fields_and_errors_name_the_option():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    assert config_from_args(p.parse_args([])) == DiffEditConfig()
    with pytest.raises(ConfigError, match=r"^--start: edit_start must be in \[0, 1\)") as err:
        config_from_args(p.parse_args(["--start", "1.0"]))
    assert err.value.field == "edit_start"
    assert config_from_args(p.parse_args(["--no-refine", "--feather", "3"])) == DiffEditConfig(refine=False, feather=3)
