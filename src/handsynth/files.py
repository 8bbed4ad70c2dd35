"""Reading inputs with errors that name the file, and atomic writes: every output lands whole or not
at all, so an interrupted run can resume."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from handsynth.errors import HandsynthError

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; move it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomically(folder: str | os.PathLike, *parts: Any) -> Path:
    """`save_pretrained` every part (model, processor, tokenizer) into one folder that appears whole."""
    with atomic_dir(folder) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
    return Path(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def check_settings_stamp(
    path: str | os.PathLike, settings: dict, folder: Path, made: str, advice: str
) -> None:
    """Outputs a re-run reuses must not change shape under a folder: the settings that shape them are
    stamped in `path` on the first run, and a later run with other settings is an error naming the
    folder (`{folder} was {made} with ...`) and what to do (`advice`)."""
    path = Path(path)
    if not path.is_file():
        write_json(path, settings)
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    if before != settings:
        raise HandsynthError(f"{folder} was {made} with {before}, not {settings}; {advice}")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike, torn_end_ok: bool = False) -> list[dict]:
    """Read a JSONL file of objects, skipping blank lines. A line that is not a JSON object is an error
    naming the file and the line: rows after it must not vanish unseen. With `torn_end_ok` (for files
    the toolkit appends to itself), a last line cut off before its newline (a killed append) is dropped."""
    return _parse_jsonl(Path(path), torn_end_ok)[0]


def read_jsonl_repairing(path: str | os.PathLike) -> list[dict]:
    """`read_jsonl` of a file the toolkit appends to and resumes: a torn last line (a killed append) is
    cut and the file rewritten, so that the next append starts a line of its own; one pass over the file."""
    records, torn = _parse_jsonl(Path(path), torn_end_ok=True)
    if torn:
        write_jsonl(path, records)
    return records


def _parse_jsonl(path: Path, torn_end_ok: bool) -> tuple[list[dict], bool]:
    """The records, and whether the last line lacks its newline (dropped when it is not JSON)."""
    records: list[dict] = []
    bad: tuple[int, str] | None = None  # the first bad line; allowed only as a torn last line
    ended = True
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if bad is not None:
                    break
                ended = line.endswith("\n")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad = (number, f"not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(record, dict):
                    bad = (number, f"a JSON {type(record).__name__}, not an object")
                    continue
                records.append(record)
    except UnicodeDecodeError as exc:
        raise HandsynthError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    torn_end = bad is not None and not ended and torn_end_ok
    if bad is not None and not torn_end:
        number, what = bad
        raise HandsynthError(f"{path} line {number} is {what}; fix or delete that line")
    return records, not ended


def append_jsonl(path: str | os.PathLike, *records: dict) -> None:
    """Append records and flush them to disk, for logs that grow as work completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(record, default=_json_default) + "\n" for record in records))
        f.flush()
        os.fsync(f.fileno())


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image under `folder`, by its suffix, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """`arrays` as one compressed .npz, written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def save_image(path: str | os.PathLike, image, **kwargs) -> None:
    """Save a PIL image atomically, in the format the suffix names."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix.lower()]
    image.save(buf, format=fmt, **kwargs)
    write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


# The full-scale value of PIL's high-bit-depth modes (a 16-bit grey PNG opens as I;16); `convert`
# would clip them to 255, so a 16-bit photo would read as white.
HIGH_DEPTH_FULL_SCALE = {
    "I;16": 65535,
    "I;16L": 65535,
    "I;16B": 65535,
    "I;16N": 65535,
    "I": 2**31 - 1,  # 32-bit signed integers
    "F": 1.0,  # 32-bit floats, 0..1
}


def eight_bit(image: Image.Image) -> Image.Image:
    """`image` with a 16-bit or 32-bit grey mode scaled to 8-bit L by its full scale; others as they are."""
    full = HIGH_DEPTH_FULL_SCALE.get(image.mode)
    if full is None:
        return image
    values = np.asarray(image, dtype=np.float64) / full
    return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, upright (EXIF), 16/32-bit depths scaled, transparent pixels composited on white (so an
    RGBA hand cut-out keeps its outline)."""
    image = eight_bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_gray(image: Image.Image) -> Image.Image:
    """8-bit L (a mask), 16/32-bit depths scaled."""
    return eight_bit(image).convert("L")


def image_from_bytes(data: bytes, name: str | os.PathLike = "<bytes>") -> Image.Image:
    """Decode image bytes to an 8-bit RGB PIL image (`to_rgb`); a HandsynthError naming `name`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HandsynthError(f"cannot decode image {name}: {exc}; replace or remove the file") from None


def rgb_from_bytes(data: bytes, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8 RGB (`to_rgb`)."""
    return np.asarray(image_from_bytes(data, name), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image (`to_rgb`); a HandsynthError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HandsynthError(f"image not found: {path}") from None
    except OSError as exc:
        raise HandsynthError(f"cannot read image {path}: {exc}") from None
    return image_from_bytes(data, path)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (`to_rgb`)."""
    return np.asarray(load_image(path), dtype=np.uint8).copy()


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail now, before the work, when the file `path` cannot be written: its folder cannot be made
    (read-only, or a file on the way) or takes no new file."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path and path.is_dir():
        reason = "it is a folder; name a file"
    elif existing != path and not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
    raise HandsynthError(f"cannot write {path}: {reason}; choose another {flag}")


@contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path | None]:
    """Hold `<folder>/.lock` while one process writes the folder; a second writer is refused with the
    first one's process id and command. The kernel drops the lock when its process dies, so a lock
    left by a killed run is simply taken over. Under `accelerate launch` the main process (RANK 0)
    holds it for the whole launch; the other ranks take none (yield None)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    folder = Path(folder)
    path = folder / ".lock"
    check_writable(path, "output folder")
    while True:
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise HandsynthError(
                f"{folder} is being written by {holder}; wait for it to finish, or choose another output "
                "folder"
            ) from None
        if path.exists() and os.fstat(f.fileno()).st_ino == path.stat().st_ino:
            break
        f.close()  # the holder before us removed the file as we opened it: lock the new one
    try:
        f.truncate(0)
        f.write(f"process {os.getpid()} (`{' '.join(sys.argv)}`)")
        f.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # removed while still locked, so no one locks a stale file
        f.close()


class DigestCache:
    """A JSONL cache keyed by the sha256 of an input file: one result per file, or the reason it could
    not be read (`errors`: the same bytes never decode). Each line is {"sha256", `field`: value} or
    {"sha256", "error"}.

    New entries go to disk in batches, at least every `flush_seconds` and in `flush`: one write and
    fsync per image would cost the parent process, which shares the cores with the workers, half a
    second per few hundred images. A killed run loses at most those seconds; a torn last line is cut.
    """

    def __init__(self, path: str | os.PathLike, field: str, flush_seconds: float = 2.0) -> None:
        self.path = Path(path)
        self.field = field
        self.flush_seconds = flush_seconds
        self.entries: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.pending: list[dict] = []
        self.flushed_at = time.monotonic()
        if self.path.is_file():
            for record in read_jsonl_repairing(self.path):
                if "error" in record:
                    self.errors[record["sha256"]] = record["error"]
                else:
                    self.entries[record["sha256"]] = record[field]

    def __contains__(self, digest: str) -> bool:
        return digest in self.entries or digest in self.errors

    def add(self, digest: str, value: Any) -> None:
        self.entries[digest] = value
        self._queue({"sha256": digest, self.field: value})

    def add_error(self, digest: str, error: str) -> None:
        self.errors[digest] = error
        self._queue({"sha256": digest, "error": error})

    def _queue(self, record: dict) -> None:
        self.pending.append(record)
        if time.monotonic() - self.flushed_at > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            append_jsonl(self.path, *self.pending)
            self.pending = []
        self.flushed_at = time.monotonic()


def locked_output(argument: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function holding `output_lock` on the folder it receives as `argument`, so that
    two commands never write one output folder at once."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            with output_lock(signature.bind(*args, **kwargs).arguments[argument]):
                return function(*args, **kwargs)

        return locked

    return decorate


def folder_stamp(folder: str | os.PathLike) -> str:
    """A digest of the names, sizes and modification times of the files under `folder`. It changes when
    a model is saved there again, at the cost of a directory walk rather than of hashing its weights."""
    folder = Path(folder)
    stats = {str(p.relative_to(folder)): p.stat() for p in folder.rglob("*") if p.is_file()}
    entries = sorted((name, s.st_size, s.st_mtime_ns) for name, s in stats.items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def finished_records(
    out_dir: str | os.PathLike,
    plan: list[dict],
    settings_keys: Iterable[str],
    file_fields: Iterable[str] = ("file",),
    key: str = "index",
    what: str = "image",
) -> dict[Any, dict]:
    """The records of `<out_dir>/records.jsonl` that name all their files (`file_fields`, relative to
    `out_dir`) and whose files all exist, by `key`, for a run that resumes. A record the `plan` also
    has but with other settings is an error rather than work redone: redoing it would overwrite an
    image made another way. Of two records of one key, the later one made the
    file on disk."""
    out_dir = Path(out_dir)
    path = out_dir / "records.jsonl"
    if not path.is_file():
        return {}
    planned = {r[key]: r for r in plan}
    done = {}
    # cut a torn last line before this run appends; of two records for one image, the later
    for record in {r.get(key): r for r in read_jsonl_repairing(path)}.values():
        want = planned.get(record.get(key))
        if want is None or not all(f in record and (out_dir / record[f]).is_file() for f in file_fields):
            continue
        changed = [k for k in settings_keys if record.get(k) != want[k]]
        if changed:
            raise HandsynthError(
                f"{out_dir} already holds {what} {record[key]} made with other settings "
                f"({', '.join(changed)} differ); choose another output folder or delete this one"
            )
        done[record[key]] = record
    return done


def generated_records(folder: str | os.PathLike, command: str) -> list[dict]:
    """The records of the images a generated folder's records.jsonl names (a pose generation skipped has
    no image), or an error naming the `command` that makes them."""
    path = Path(folder) / "records.jsonl"
    records = read_jsonl(path, torn_end_ok=True) if path.is_file() else []
    records = [record for record in records if "skipped" not in record]
    if not records:
        raise HandsynthError(f"no generated images in {path.parent}; run `{command}` first")
    return records


def check_one_setting(records: list[dict], keys: Iterable[str], folder: str | os.PathLike) -> None:
    """An error unless every record has the same values at `keys` (what one pipeline call shares)."""
    keys = tuple(keys)
    if len({json.dumps([record.get(k) for k in keys]) for record in records}) > 1:
        raise HandsynthError(
            f"{folder}/records.jsonl mixes sampling settings ({', '.join(keys)}); make its images again "
            "with one setting before comparing"
        )
