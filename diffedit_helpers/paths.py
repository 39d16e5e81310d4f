"""Where the repository and its images/ folder are, wherever a notebook runs.

Notebooks run with cwd = notebooks/ under pytest, from the repo root in a terminal, and from
/content or /kaggle/working on Colab and Kaggle. The package knows where it was installed from
(an editable install points into the clone); failing that, the folder and its parents are searched.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_NAME = "diffedit-helpers"


def is_repo(folder: Path) -> bool:
    "True if `folder` holds this project's pyproject.toml."
    pyproject = Path(folder) / "pyproject.toml"
    return pyproject.is_file() and f'name = "{PROJECT_NAME}"' in pyproject.read_text(encoding="utf-8")


def find_repo(start: Path) -> Path | None:
    "The first of `start` and its parents that is the repository, or None."
    start = Path(start).resolve()
    return next((d for d in (start, *start.parents) if is_repo(d)), None)


def repo_root(start: Path | None = None) -> Path:
    """The repository root: the clone the package was installed from, else the first repo
    found from `start` (default: the working directory) upwards."""
    root = find_repo(Path(__file__).parent) or find_repo(start or Path.cwd())
    if root is None:
        raise FileNotFoundError(
            f"no {PROJECT_NAME} repository above {str(start or Path.cwd())!r}: clone the repository and run from inside it"
        )
    return root


def images_dir(start: Path | None = None) -> Path:
    "The repository's images/ folder (the pictures the notebooks use)."
    images = repo_root(start) / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{str(images)!r} is missing: run `python tools/make_images.py` in the repository")
    return images
