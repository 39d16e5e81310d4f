"""The jobs of a `batch` run: a JSON-lines file read as a stream, each line checked into the
arguments of one `diffedit` call, and each job's identity, its key.

A job is what it does and the name it is given: its key is a hash of its input (the image and
mask files' contents, or their URLs), prompts, settings, seed, model, fit and its `id` when the
line gives one; never its line number. Moving a line, or inserting one above it, leaves its key
(and so its finished result) as it was; changing what it does, or its id, gives a new key, so it
runs again (two ids doing the same work get a folder and a record each). A job's folder is its
`id` when the line gives one, else the start of its key.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass, fields
from pathlib import Path

from .config import DIFFUSERS_NAMES, ConfigError, DiffEditConfig, with_diffusers_names
from .images import check_scheme, is_url

JOB_KEYS = ("image", "source", "target", "settings", "seed", "id", "mask")
CONFIG_FIELDS = tuple(f.name for f in fields(DiffEditConfig))
SETTING_NAMES = (*CONFIG_FIELDS, "negative_prompt", *DIFFUSERS_NAMES)
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_LINE_BYTES = 1 << 20  # a job's line: a JSON object of paths, prompts and settings, far shorter than this
KEY_CHARS = 12  # the part of a key that names a job's folder when the line gives no id
# names a job's folder can never take: the files of the output folder itself, and the device names some systems reserve
RESERVED_IDS = frozenset({"manifest.jsonl", "con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(10))})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_URL = re.compile(r"^https?://", re.IGNORECASE)
_BOM = b"\xef\xbb\xbf"


@dataclass
class Job:
    """One line of the jobs file: its line number (from 1), its text, the parsed object and the id
    it gives (None: none), or why it cannot run (`error`)."""

    line: int
    text: str = ""
    spec: dict | None = None
    id: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        "How messages name the job: its line, and its id when it has one."
        return f"line {self.line}" + (f" ({self.id})" if self.id else "")


def check_jobs_file(path) -> Path:
    "The jobs file as a Path; refused (before any model work) if it is missing or not a file."
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"jobs file {str(path)!r} is a folder; pass the JSON-lines file itself")
    if not path.exists():
        raise FileNotFoundError(f"jobs file {str(path)!r} does not exist")
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(f"jobs file {str(path)!r} is not a regular file (a pipe or a device); pass a JSON-lines file")
    return path


def iter_jobs(path: Path):
    """Each non-blank line of a JSON-lines file as a Job, in order, read as a stream (one line in
    memory at a time, at most MAX_LINE_BYTES of it). A UTF-8 byte-order mark before line 1 is
    skipped. A line that is too long, not UTF-8, not a JSON object, or whose id is bad or given
    to an earlier line, is a Job with its `error`."""
    ids: dict[str, int] = {}  # explicit id -> the line that gave it first
    with open(path, "rb") as fh:
        for n, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                skip_line(fh)
                yield Job(line=n, error=f"line {n} is longer than the limit of {MAX_LINE_BYTES:,} bytes (a job is a short "
                                        f"JSON object); skipped")
                continue
            if n == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw.strip():
                continue
            yield parse_line(raw, n, path, ids)


def skip_line(fh):
    "Read past the rest of the current line, a chunk at a time."
    while (chunk := fh.readline(1 << 16)) and not chunk.endswith(b"\n"):
        pass


def parse_line(raw: bytes, n: int, path: Path, ids: dict) -> Job:
    "One line (bytes) as a Job; `ids` maps the ids given so far to their lines (updated)."
    job = Job(line=n)
    try:
        job.text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        job.error = f"line {n} of {str(path)!r} is not UTF-8 text (byte {e.start + 1} is {raw[e.start]:#04x})"
        return job
    try:
        job.spec = json.loads(job.text)
    except json.JSONDecodeError as e:
        job.error = f"line {n} is not valid JSON ({e.msg} at column {e.colno})"
        return job
    if not isinstance(job.spec, dict):
        job.error = f"line {n} must be a JSON object {{\"image\": ..., \"source\": ..., \"target\": ...}}, got {type(job.spec).__name__}"
        return job
    if "id" in job.spec:
        job.error = id_error(job.spec["id"], n)
        if job.error is None:
            job.id = job.spec["id"]
            first = ids.setdefault(job.id.lower(), n)
            if first != n:
                job.error = f"line {n}: id {job.id!r} is already used by line {first}; give each job its own id"
    return job


def id_error(given, n: int) -> str | None:
    "Why `given` cannot name a job's folder (a name, never a path or one of ours), or None."
    if not isinstance(given, str) or not _ID.match(given) or given.endswith("."):
        return (f"line {n}: id must be a name of 1-100 letters, digits, '.', '_' or '-' (starting with a letter or digit, "
                f"not ending in '.'; no '/' or '\\'), got {given!r}")
    if given.lower() in RESERVED_IDS or given.split(".")[0].lower() in RESERVED_IDS - {"manifest.jsonl"}:
        return f"line {n}: id {given!r} is a reserved name (the manifest's, or a device name); choose another"
    return None


def job_arguments(job: Job, config: DiffEditConfig, seed: int, base: Path) -> dict:
    """The keyword arguments of `diffedit` for one job: image, source_prompt, target_prompt,
    config, seed, mask and negative_prompt, checked. The job's settings win over the command
    line's, diffusers' names included (a job's own field and name must agree). ValueError naming
    the line and the key when something is wrong."""
    if job.error is not None:
        raise ValueError(job.error)
    spec, n = job.spec, job.line
    unknown = sorted(set(spec) - set(JOB_KEYS))
    if unknown:
        raise ValueError(f"line {n}: unknown key(s) {', '.join(unknown)}; a job takes {', '.join(JOB_KEYS)}")
    missing = [k for k in ("image", "source", "target") if k not in spec]
    if missing:
        raise ValueError(f"line {n}: missing {', '.join(missing)} (a job needs image, source and target)")
    for key in ("image", "mask"):
        if key in spec and not (isinstance(spec[key], str) or (key == "mask" and spec[key] is None)):
            raise ValueError(f"line {n}: {key} must be a path or an http(s) URL (a string), got {type(spec[key]).__name__}")
        if is_url(spec.get(key)):  # file://, ftp://: never read as a relative path
            check_scheme(spec[key], f"line {n}: {key}")
    seed = spec.get("seed", seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ValueError(f"line {n}: seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    settings = spec.get("settings", {})
    if not isinstance(settings, dict):
        raise ValueError(f"line {n}: settings must be a JSON object, got {type(settings).__name__}")
    bad = sorted(set(settings) - set(SETTING_NAMES))
    if bad:
        raise ValueError(f"line {n}: unknown setting(s) {', '.join(bad)}; settings take DiffEditConfig's fields "
                         f"and {', '.join(SETTING_NAMES[len(CONFIG_FIELDS):])}")
    try:
        config = job_config(config, settings)
    except ConfigError as e:
        raise ConfigError(e.field, f"line {n}: settings.{e.field}: {e}") from None
    return dict(image=local(spec["image"], base), source_prompt=spec["source"], target_prompt=spec["target"],
                config=config, seed=seed, mask=None if spec.get("mask") is None else local(spec["mask"], base),
                negative_prompt=settings.get("negative_prompt"))


def job_config(config: DiffEditConfig, settings: dict) -> DiffEditConfig:
    """The command line's `config` with a job's settings over it, validated: its fields, then its
    diffusers names (which replace the command line's value of their field)."""
    own = {k: v for k, v in settings.items() if k in CONFIG_FIELDS}
    names = {k: settings[k] for k in DIFFUSERS_NAMES if k in settings}
    defaults = DiffEditConfig()
    with_diffusers_names(defaults.replace(**own), **names)  # the job's own field and name agree
    given_way = {DIFFUSERS_NAMES[k]: getattr(defaults, DIFFUSERS_NAMES[k]) for k in names}  # the command line's value gives way
    return with_diffusers_names(config.replace(**given_way).replace(**own).validate(), **names)


def local(name: str, base: Path) -> str:
    "A path relative to the jobs file's folder (absolute paths and http(s) URLs, any case, as they are)."
    return name if _URL.match(name) else str(base / name)


def input_identity(name: str | None):
    """What an input is, for the key: a URL as it is; a local file by its content (sha256), or by
    its path while it is missing (so adding the file changes the key)."""
    if name is None or _URL.match(name):
        return name
    path = Path(name).absolute()
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return {"path": str(path)}
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return {"sha256": digest.hexdigest()}
    except OSError:
        return {"path": str(path)}


def job_key(args: dict, model: str, fit: str, name: str | None = None) -> str:
    "The job's identity (64 hex digits): input, prompts, settings, seed, model, fit and the id it is given (`name`)."
    what = dict(image=input_identity(args["image"]), mask=input_identity(args["mask"]), source=args["source_prompt"],
                target=args["target_prompt"], settings=args["config"].to_dict(), negative_prompt=args["negative_prompt"],
                seed=args["seed"], model=str(model), fit=fit)
    if name is not None:  # the job's folder: the same work under two ids is two jobs (a line without one keeps its key)
        what["id"] = name
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def line_key(job: Job) -> str:
    "The identity of a line that cannot run: its own text (fixing the line gives a new key)."
    return hashlib.sha256(f"line {job.line}: {job.text}".encode()).hexdigest()


def folder_name(job: Job, key: str) -> str:
    "The job's folder in the output folder: its id, else the start of its key."
    return job.id or key[:KEY_CHARS]
