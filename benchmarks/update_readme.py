"""Regenerate the README's Results section (between <!-- results:start --> and <!-- results:end -->)
from benchmarks/results/quality.md and speed.md (written by quality.py and speed.py).

    python benchmarks/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section_from(path: Path, link_prefix: str) -> str:
    "A results file as a README subsection: its title one level down, its pictures linked from the root."
    text = path.read_text().strip()
    text = re.sub(r"^# ", "### ", text, count=1, flags=re.M)
    return re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({link_prefix}{m.group(1)})", text)


def results_section(results: Path = RESULTS, root: Path = ROOT) -> str:
    prefix = results.resolve().relative_to(root).as_posix() + "/"
    parts = [
        "## Results",
        "",
        "Measured on held-out scenes of the shapes world (never seen in training), against diffusers' "
        "`StableDiffusionDiffEditPipeline` and `LEditsPPPipelineStableDiffusion` (LEDITS++) on the same bundled model "
        "and settings. Regenerate with `make bench` "
        "(the scripts are in `benchmarks/`; `benchmarks/gpu.py` times both at Stable Diffusion 1.5's size on a GPU).",
        "",
        section_from(results / "quality.md", prefix),
        "",
        section_from(results / "speed.md", prefix),
    ]
    return "\n".join(parts)


def replace_section(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README must hold one {START} ... {END} pair")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{body.strip()}\n{END}{tail}"


def main() -> int:
    missing = [p.name for p in (RESULTS / "quality.md", RESULTS / "speed.md") if not p.exists()]
    if missing:
        print(f"error: {', '.join(missing)} missing in {RESULTS}: run benchmarks/quality.py and benchmarks/speed.py first",
              file=sys.stderr)
        return 1
    readme = ROOT / "README.md"
    readme.write_text(replace_section(readme.read_text(), results_section()))
    print(f"updated the Results section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
