"""Writing result pictures without ever losing a file: the command line's outputs.

Each picture is written whole to a hidden temporary file in the destination folder, then linked
into place under its name only if that name is still free (or moved over it, atomically, when
overwriting is asked for). A name taken in the meantime (another run into the same folder) is
refused, naming the file; a failed or interrupted write leaves no partial file behind; a name
that is the same file as an input (a hard link, say) is never replaced.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".part"


class OutputError(OSError):
    "An output could not be written; the message names the file and why, in one line."


def check_out_folder(out, flag: str = "--out") -> Path:
    """The output folder as a Path, refused before any model loads if it cannot be written: an
    empty name, a file, or a folder (or, if it does not exist yet, its nearest existing parent)
    that this user cannot write into."""
    if str(out).strip() == "":
        raise OutputError(f"{flag} must name a folder, got an empty string")
    out = Path(out)
    check_name_lengths(out, flag)
    if out.is_symlink() and not out.exists():
        raise OutputError(f"{flag} {str(out)!r} is a link to {os.readlink(out)!r}, which does not exist; "
                          f"create that folder or choose another")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {str(out)!r} is a file, not a folder")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{flag} {str(out)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out.absolute() else f" (its parent {str(existing)!r} is not writable)"
        raise OutputError(f"{flag} {str(out)!r} is not a writable folder{where}")
    return out


def check_name_lengths(out: Path, flag: str = "--out"):
    "Refuse a folder name with a part longer than the file system takes (checked before the model loads)."
    try:
        limit = os.pathconf(next(p for p in out.absolute().parents if p.is_dir()), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in out.absolute().parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"{flag}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; this file system "
                              f"takes at most {limit}")


def same_file(a, b) -> bool:
    "True if a and b are one file on disk (same inode and device, so also a hard link or a symlink to it)."
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(path, inputs, flag: str = "--out"):
    "Refuse an output name that is one of the input files, by path or by inode (a hard link)."
    path = Path(path)
    for source in inputs:
        if path.absolute() == Path(source).absolute() or same_file(path, source):
            raise OutputError(f"{flag} {str(path.parent)!r} would overwrite the input image {str(source)!r} "
                                            f"(as {path.name}); choose another folder")


def _write_temp(image, path: Path) -> Path:
    "Save `image` whole into a new hidden file next to `path` (same folder, so linking it is atomic)."
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=image_format(path))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(Path(tmp))
        raise
    return Path(tmp)


def image_format(path: Path) -> str:
    "The PIL format name for a file name's suffix (.png -> PNG)."
    from PIL import Image

    Image.init()
    suffix = path.suffix.lower()
    if suffix not in Image.EXTENSION:
        raise OutputError(f"{str(path)!r}: unknown picture suffix {suffix!r}")
    return Image.EXTENSION[suffix]


def _place(tmp: Path, path: Path, overwrite: bool):
    "Give the finished temporary file its name: only if the name is free, or over it when overwriting."
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists, however recently it was taken
    except FileExistsError:
        raise
    except OSError as e:  # a file system without hard links: claim the name exclusively, then move the data over it
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)
        return
    _remove(tmp)


def _remove(path: Path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def save_new(image, path, overwrite: bool = False, inputs=(), flag: str = "--out") -> Path:
    "Write one picture to `path` (see `save_all`)."
    return save_all([(image, path)], overwrite, inputs, flag)[0]


def save_all(items, overwrite: bool = False, inputs=(), flag: str = "--out") -> list[Path]:
    """Write every (PIL image, path) of `items`, all or none.

    First each picture goes whole into a temporary file beside its destination; then each is
    linked into place if its name is free, or, with `overwrite`, moved over the old file (never
    over a name that is one of `inputs`). On any failure, an interrupt included, the temporary
    files and the files this call already placed are removed and the error names the file:
    FileExistsError for a name taken, OutputError for a write that failed (a full disk, say).
    """
    items = [(image, Path(path)) for image, path in items]
    for _, path in items:
        check_not_input(path, inputs, flag)
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for image, path in items:
            try:
                temps.append(_write_temp(image, path))
            except OSError as e:
                raise OutputError(f"could not write {str(path)!r}: {e.strerror or e}") from e
        for (_, path), tmp in zip(items, temps):
            try:
                _place(tmp, path, overwrite)
            except FileExistsError:
                raise FileExistsError(f"{flag} {str(path.parent)!r}: {path.name} was written by another run "
                                                    f"meanwhile; choose a new folder or pass --overwrite") from None
            except OSError as e:
                raise OutputError(f"could not write {str(path)!r}: {e.strerror or e}") from e
            placed.append(path)
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        if not overwrite:  # what this call created; under --overwrite the old files are already gone
            for path in placed:
                _remove(path)
        raise
    return placed
