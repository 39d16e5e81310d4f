from pathlib import Path

import pytest

from diffedit_helpers import paths


def make_repo(folder: Path, name: str = "diffedit-helpers") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    return folder


def test_find_repo_walks_up_from_a_nested_folder(tmp_path):
    root = make_repo(tmp_path / "clone")
    nested = root / "notebooks" / "deeper"
    nested.mkdir(parents=True)
    assert paths.find_repo(nested) == root.resolve()


def test_find_repo_skips_other_projects(tmp_path):
    root = make_repo(tmp_path / "clone")
    other = make_repo(root / "vendor" / "other", name="something-else")
    assert paths.find_repo(other) == root.resolve()


def test_find_repo_returns_none_outside_any_repo(tmp_path):
    make_repo(tmp_path / "sibling")  # a repo next to the folder is not above it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert paths.find_repo(elsewhere) is None


def test_images_dir_is_this_repos_images_folder():
    images = paths.images_dir()
    assert images.name == "images"
    assert paths.is_repo(images.parent)
    assert (images / "horse_on_grass.png").is_file()


def test_images_dir_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the editable install still leads to the clone
    assert paths.images_dir() == paths.images_dir(Path(__file__).parent)


def test_repo_root_error_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "site-packages" / "diffedit_helpers" / "paths.py"))
    with pytest.raises(FileNotFoundError, match="no diffedit-helpers repository above"):
        paths.repo_root(tmp_path)
