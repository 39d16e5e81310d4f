"""The benchmarks' results as the notebooks read them, never retyped: the tables of
benchmarks/results/quality.md (written by benchmarks/quality.py) and the JSON files beside it.

A markdown table is read cell for cell as the benchmark printed it (strings, so a notebook
prints the same digits); `quality_summary` picks the one row per method, and
`leditspp_settings` the LEDITS++ settings the benchmark tuned and ran.
Read in notebook 09_successors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..paths import repo_root

SETTINGS_LINE = re.compile(r"LEDITS\+\+: `([^`]*)`")  # quality.md: "LEDITS++: `edit_guidance_scale=5, ...`"


def results_dir(start: Path | None = None) -> Path:
    "benchmarks/results/ in the repository."
    return repo_root(start) / "benchmarks" / "results"


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of a markdown text, each a list of rows {header: cell} (cells stripped,
    as printed). A table is a header line, a |---| line, then rows up to the first other line."""
    tables, lines, i = [], text.splitlines(), 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            head = _cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                if len(cells) != len(head):
                    raise ValueError(f"a table row has {len(cells)} cells, its header {len(head)}: {lines[i]!r}")
                rows.append(dict(zip(head, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def quality_summary(path: Path | None = None) -> list[dict[str, str]]:
    "The per-method table of quality.md (its first table with a 'method' column): one row per method."
    text = Path(path or results_dir() / "quality.md").read_text(encoding="utf-8")
    for table in markdown_tables(text):
        if table and "method" in table[0]:
            return table
    raise ValueError(f"{path or 'quality.md'} holds no table with a 'method' column: rerun benchmarks/quality.py")


def leditspp_settings(path: Path | None = None) -> dict[str, float]:
    "The LEDITS++ settings quality.md ran with, e.g. {'edit_guidance_scale': 5.0, 'edit_threshold': 0.9, 'skip': 0.3}."
    text = Path(path or results_dir() / "quality.md").read_text(encoding="utf-8")
    found = SETTINGS_LINE.search(text)
    if found is None:
        raise ValueError(f"{path or 'quality.md'} names no LEDITS++ settings: rerun benchmarks/quality.py without --no-leditspp")
    return {k.strip(): float(v) for k, v in (pair.split("=") for pair in found.group(1).split(","))}


def read_json(name: str, start: Path | None = None) -> dict:
    "A JSON result, e.g. read_json('attention.json')."
    return json.loads((results_dir(start) / name).read_text(encoding="utf-8"))


def format_table(rows: list[dict[str, str]], columns: list[str], first: str = "method") -> str:
    "Rows as a plain-text table of `columns` (after `first`), each column as wide as its widest cell."
    cols = [first, *columns]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cols, widths)))]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(w) if j == 0 else str(r[c]).rjust(w) for j, (c, w) in enumerate(zip(cols, widths))))
    return "\n".join(lines)
