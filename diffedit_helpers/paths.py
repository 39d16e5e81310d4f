"""Where the repository and its images/ folder are, wherever a notebook runs.

Notebooks run with cwd = notebooks/ under pytest, from the repo root in a terminal, and from
/content or /kaggle/working on Colab and Kaggle. The package knows where it was installed from
(an editable install points into the clone); failing that, the folder and its parents are searched.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_NAME = "diffedit-helpers"
# what the notebooks edit (file in images/, source prompt, target prompt): for the bundled model a
# scene of the shapes world, the world it was trained on; for Stable Diffusion a photo whose object
# stands on a visible background (the table around the cup is what the edit must keep), and an
# edit of the kind SD does well: the same object, another colour and content
EXAMPLES = {
    "bundled": ("horse_on_grass.png", "a brown horse on grass", "a zebra on grass"),
    "photo": ("coffee.jpg", "a cup of coffee on a saucer", "a cup of green tea on a saucer"),
}
# the prompts of the example Stable Diffusion makes for itself (`generate.example_picture`): the blog
# post's horse, generated from the source prompt with a fixed seed, then edited into a zebra
EXAMPLES["generated"] = ("a photo of a brown horse on grass", "a photo of a zebra on grass")


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


def example_edit(model, start: Path | None = None) -> tuple[Path, str, str]:
    "The notebooks' example for `model`: (image path, source prompt, target prompt), from EXAMPLES."
    file, source, target = EXAMPLES["bundled" if model.name == "bundled" else "photo"]
    return images_dir(start) / file, source, target
