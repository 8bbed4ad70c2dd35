"""Reading inputs with errors that name the file, and atomic writes: every output lands whole or not
at all, so an interrupted run can resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from handsynth.errors import HandsynthError


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


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a torn last line (from a killed append) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def read_jsonl_repairing(path: str | os.PathLike) -> list[dict]:
    """`read_jsonl`, rewriting a file whose last line is torn (a killed append) without that line, so
    that the next append starts a line of its own; one pass over the file."""
    records, torn = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                torn = True
                break
            torn = not line.endswith("\n")
    if torn:
        write_jsonl(path, records)
    return records


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


def rgb_from_bytes(data: bytes, name: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8 RGB, upright (EXIF) and without alpha.

    Transparent pixels are composited on white, so an RGBA hand cut-out keeps its outline.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise HandsynthError(f"cannot decode image {name}: {exc}; replace or remove the file") from None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; grayscale, RGBA and EXIF rotation normalised."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HandsynthError(f"image not found: {path}") from None
    except OSError as exc:
        raise HandsynthError(f"cannot read image {path}: {exc}") from None
    return rgb_from_bytes(data, path)


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
    image made another way."""
    out_dir = Path(out_dir)
    path = out_dir / "records.jsonl"
    if not path.is_file():
        return {}
    planned = {r[key]: r for r in plan}
    done = {}
    for record in read_jsonl(path):
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
