"""The output folder of a `batch` run: one writer at a time, job folders placed whole, and a
manifest that agrees with what is on disk.

    out/.lock            held (flock) by the run writing here; says who: pid, host, since when
    out/manifest.jsonl   one JSON record a line, appended whole; a torn line is skipped
    out/<name>/          a finished job: edited.png, mask.png and job.json (its own record)

A job's folder is written under a staging name (`.<name>.partial-<pid>-<n>`) and renamed into
place only when complete, with its record inside it; then its record is appended to the
manifest. A run that is killed in between leaves either a staging folder, removed by the next
run, or a complete folder the manifest does not record, which the next run adopts
(`reconcile`). A record whose folder is gone no longer counts as done.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

MANIFEST = "manifest.jsonl"
LOCK = ".lock"
RECORD = "job.json"  # a finished job's record, inside its folder
OUTPUTS = ("edited.png", "mask.png")
PARTIAL = ".partial-"
_counter = itertools.count()


class OutputFolderBusy(OSError):
    "Another run holds the output folder's lock; the message says who and since when."


class NotOurFile(OSError):
    "A name the run writes to (its lock, its manifest) is a link, a folder or a file shared with another name."


def open_own(path: Path, flags: int) -> int:
    """A descriptor on one of the run's own files in the output folder, never through a link (O_NOFOLLOW)
    and never a file that also has another name (a hard link: writing would change that file too)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise NotOurFile(not_ours(path)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise NotOurFile(not_ours(path))
    return fd


def not_ours(path: Path) -> str:
    return (f"{str(path)!r} is not a plain file of this output folder (a link, a folder, or a file with another name "
            f"too); move it away, or choose a new --out")


def check_own_files(out: Path):
    "Refuse, before any model work, an output folder whose lock or manifest is a link, a folder or a shared file."
    for name in (LOCK, MANIFEST):
        path = Path(out) / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            raise NotOurFile(not_ours(path))


def write_output(path: Path, data: bytes, append: bool = False):
    """Every file the batch writes goes through here. A new file, created exclusively (an existing
    file is never replaced), with the mode a plain open() gives (0666 less the umask); or, with
    `append`, data added to the end of the file in one os.write on an O_APPEND descriptor, the file
    cut back to its old length if that fails. Never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(path, flags, 0o666)
    try:
        start = os.fstat(fd).st_size if append else 0
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to {str(path)!r}: {written} of {len(data)} bytes")
        except OSError:
            if append:  # a failed append is undone (the caller holds the file's lock): no torn line
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- one writer at a time
class OutputLock:
    """An exclusive lock on the output folder (flock on out/.lock), held until `release` or the
    process ends (a killed run holds nothing). `acquire` raises OutputFolderBusy naming the holder."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.fd = None

    def acquire(self) -> "OutputLock":
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_text(os.read(fd, 4096))
            os.close(fd)
            raise OutputFolderBusy(f"--out {str(self.path.parent)!r} is in use by another batch run ({holder}); "
                                   f"wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), since=since)).encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holder_text(data: bytes) -> str:
    "Who holds the lock, from the lock file's contents: 'pid 12, host h, since ...'."
    try:
        info = json.loads(data)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


# ----------------------------------------------------------------------------- records
class ManifestError(OSError):
    "A record could not be appended (a full disk, say); the manifest is left as it was."


def append_record(out: Path, record: dict):
    """Append one record to the manifest as a whole line. A torn last line (a killed run) is
    ended first, so the new record stands on a line of its own; processes of one run take turns.
    A write that fails or is cut short (a full disk) is undone: ManifestError, the manifest as it was."""
    path = Path(out) / MANIFEST
    line = (json.dumps(record) + "\n").encode()
    fd = open_own(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the processes of one run (`accelerate launch`) take turns, until it is written
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        write_output(path, line, append=True)
    except OSError as e:
        if isinstance(e, NotOurFile):
            raise
        raise ManifestError(f"could not append to {str(path)!r} ({e.strerror or e}); it is kept as it was: free "
                            f"some space and run again") from None
    finally:
        os.close(fd)


def iter_records(out: Path):
    "Every whole record of the manifest, in order; torn or unreadable lines are skipped."
    path = Path(out) / MANIFEST
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                yield record


def is_complete(out: Path, name) -> bool:
    "True if out/<name> is a finished job's folder: both pictures and its record."
    return isinstance(name, str) and all((Path(out) / name / f).is_file() for f in (*OUTPUTS, RECORD))


def holds(out: Path, name, key: str) -> bool:
    "True if out/<name> is the finished folder of the job `key`: both pictures, and its record (job.json) with that key."
    record = folder_record(out, name) if isinstance(name, str) else None
    return record is not None and record["key"] == key and is_complete(out, name)


def read_manifest(out: Path) -> dict:
    """{key: record}: each job's record. A finished job (status ok, its folder complete and holding
    its record) keeps its record whatever comes after it; otherwise the latest record counts."""
    records = {}
    for record in iter_records(out):
        prior = records.get(record["key"])
        if prior is None or not (prior.get("status") == "ok" and holds(out, prior.get("id"), prior["key"])):
            records[record["key"]] = record
    return {k: r for k, r in records.items() if r.get("status") != "ok" or holds(out, r.get("id"), k)}


# ----------------------------------------------------------------------------- what is on disk
def reconcile(out: Path, records: dict) -> list[dict]:
    """Make the manifest agree with the folder (run under the lock): remove staging folders that
    killed runs left, and adopt every complete job folder the manifest does not record as done
    (its record is appended, and added to `records`). Returns the adopted records."""
    out = Path(out)
    done = {r.get("id") for r in records.values() if r.get("status") == "ok"}
    adopted = []
    for entry in os.scandir(out):
        if entry.name.startswith(".") and PARTIAL in entry.name and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.is_dir(follow_symlinks=False) and entry.name not in done and is_complete(out, entry.name):
            record = folder_record(out, entry.name)
            if record is not None and records.get(record["key"], {}).get("status") != "ok":
                record["adopted"] = True
                append_record(out, record)
                records[record["key"]] = record
                adopted.append(record)
    return adopted


def folder_record(out: Path, name: str) -> dict | None:
    "The record a finished job's folder holds (None if it is not one of ours)."
    try:
        record = json.loads((Path(out) / name / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("status") == "ok" and isinstance(record.get("key"), str)
    return record if ok and record.get("id") == name else None


def place_job(out: Path, name: str, files: dict, record: dict) -> str:
    """Write a finished job's `files` ({file name: bytes}) and its record into a staging folder,
    then rename it to out/<name>. Returns "new"; "same" when out/<name> already holds this job
    (same key: another process of the run finished it); "redone" when it held this job's record
    but had lost a file (it is replaced). FileExistsError, saying why and what to remove, when
    out/<name> is anything else; the staging folder is removed on any failure."""
    out = Path(out)
    staging = out / f".{name}{PARTIAL}{os.getpid()}-{next(_counter)}"
    os.mkdir(staging)  # the mode a plain mkdir gives (0777 less the umask)
    try:
        for file, data in files.items():
            write_output(staging / file, data)
        write_output(staging / RECORD, json.dumps(record).encode())
        final = out / name
        if final.exists() or final.is_symlink():
            existing = folder_record(out, name)
            if existing is None or existing["key"] != record["key"]:
                raise FileExistsError(f"{str(final)!r} exists and is not this job's folder ({not_this_job(out, name)}); "
                                      f"remove it and run again with --retry-failed to redo this job, or give this job another id")
            if is_complete(out, name):
                return "same"
            stale = out / f".{name}{PARTIAL}{os.getpid()}-{next(_counter)}"
            os.rename(final, stale)  # this job's own folder, a file of it lost: redone (a kill here leaves a staging folder)
            os.rename(staging, final)
            shutil.rmtree(stale, ignore_errors=True)
            return "redone"
        os.rename(staging, final)
        return "new"
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def not_this_job(out: Path, name: str) -> str:
    "Why out/<name>, in the way of a job, is not that job's folder."
    path = Path(out) / name / RECORD
    if not path.is_file():
        return f"it has no {RECORD}"
    record = folder_record(out, name)
    if record is None:
        try:
            other = json.loads(path.read_text(encoding="utf-8")).get("id")
        except (OSError, ValueError, AttributeError):
            return f"its {RECORD} is damaged"
        return f"its {RECORD} is job {other!r}'s" if isinstance(other, str) else f"its {RECORD} is damaged"
    return f"it holds job {record['id']!r} with other inputs or settings"
