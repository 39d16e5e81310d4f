"""Writing result pictures without ever losing a file: the command line's outputs.

Each picture is written whole to a hidden temporary file in the destination folder, then linked
into place under its name only if that name is still free (or moved over it, atomically, when
overwriting is asked for). A name taken in the meantime (another run into the same folder) is
refused, naming the file; a failed or interrupted write leaves no partial file behind; a name
that is the same file as an input (a hard link, say) is never replaced. Files get the mode a plain
open() gives them. What a killed run left (its temporary files, named for its process, and a set
of files it had only partly placed) is removed by the next save into that folder (`clean_stale`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path

TEMP_SUFFIX = ".part"
SWAP_SUFFIX = ".swap"
# a temporary file of ours: .<name>.<pid>-<token>-<files in its set>[o: the set overwrites].part; the link
# an overwriting save moves over its destination ends in .swap instead
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]+)-(?P<n>\d+)(?P<over>o?)(?P<ext>\.part|\.swap)$")


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


def _write_temp(image, path: Path, batch: str, overwrite: bool = False) -> Path:
    """Save `image` whole into a new hidden file next to `path` (same folder, so linking it is
    atomic), named for this process and this set of files (`batch`, see `clean_stale`), with the
    mode a plain open() gives: 0666 less the umask, or the mode of the file it will replace."""
    tmp = path.parent / f".{path.name}.{batch}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if overwrite and path.is_file():
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=image_format(path))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def clean_stale(folder, names=None):
    """Remove what a killed save of ours left in `folder`: its temporary files and, if it was
    killed while placing its set of files, the files of the set it had placed (so that none of a
    set is left alone). Only sets whose process is gone are touched; `names` limits it to those
    destination names. A set that was overwriting older files and was killed while placing them
    takes those older files with it, so that no new file is left beside an old one."""
    groups: dict[tuple, list] = {}
    for entry in os.scandir(folder) if Path(folder).is_dir() else ():
        m = _TEMP_NAME.match(entry.name)
        if m and (names is None or m["name"] in names) and not _alive(int(m["pid"])):
            if m["ext"] == SWAP_SUFFIX:  # a link an overwriting save had not yet moved into place
                _remove(Path(entry.path))
                continue
            key = (m["pid"], m["token"], int(m["n"]), m["over"] == "o")
            groups.setdefault(key, []).append((Path(entry.path), Path(folder) / m["name"]))
    for (_, _, n, overwrote), temps in groups.items():
        placed = [final for tmp, final in temps if same_file(tmp, final)]
        if len(temps) == n and 0 < len(placed) < n:  # killed while placing: undo the part of the set it placed
            for final in [final for _, final in temps] if overwrote else placed:  # overwriting: the old files left too
                _remove(final)
        for tmp, _ in temps:
            _remove(tmp)


def _alive(pid: int) -> bool:
    "True if process `pid` exists (on this machine)."
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_destinations(paths, flag: str = "--out"):
    "Refuse, before anything is written, a destination that is not a file (a folder, say): it can never be replaced."
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and not path.is_file():
            raise OutputError(f"{flag} {str(path.parent)!r}: {path.name} is a folder or another non-file in the way; "
                              f"move it, or choose a new folder")


def image_format(path: Path) -> str:
    "The PIL format name for a file name's suffix (.png -> PNG)."
    from PIL import Image

    Image.init()
    suffix = path.suffix.lower()
    if suffix not in Image.EXTENSION:
        raise OutputError(f"{str(path)!r}: unknown picture suffix {suffix!r}")
    return Image.EXTENSION[suffix]


_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)  # what link() says where it cannot


def _place(tmp: Path, path: Path, overwrite: bool):
    "Give the finished temporary file its name: only if the name is free, or over it when overwriting."
    if overwrite:  # a second link moved over the old file: the temporary file stays until the whole set is placed
        swap = tmp.with_name(tmp.name.removesuffix(TEMP_SUFFIX) + SWAP_SUFFIX)
        try:
            os.link(tmp, swap)
        except OSError as e:  # a file system without hard links: the file itself is moved over
            if e.errno not in _NO_LINKS:
                raise
            swap = tmp
        try:
            os.replace(swap, path)
        except BaseException:
            if swap != tmp:
                _remove(swap)
            raise
        return
    try:
        os.link(tmp, path)  # fails if the name exists, however recently it was taken
    except FileExistsError:
        raise
    except OSError as e:  # a file system without hard links: claim the name exclusively, then move the data over it
        if e.errno not in _NO_LINKS:
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(tmp, path)


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
    check_destinations([path for _, path in items], flag)
    for folder in {path.parent for _, path in items}:
        clean_stale(folder)
    batch = f"{os.getpid()}-{secrets.token_hex(4)}-{len(items)}{'o' if overwrite else ''}"
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for image, path in items:
            try:
                temps.append(_write_temp(image, path, batch, overwrite))
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
        for tmp in temps:  # only once the whole set is placed (`clean_stale` relies on it)
            _remove(tmp)
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        if not overwrite:  # what this call created; under --overwrite the old files are already gone
            for path in placed:
                _remove(path)
        raise
    return placed
