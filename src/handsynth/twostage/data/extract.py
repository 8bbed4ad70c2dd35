"""Whole-body poses of many images (`handsynth pose extract`), in worker processes, cached by content.

Each image's pose (perception.pose) is cached under the sha256 of the file's bytes and the detector
settings, as Stage I caches its hands: a re-run, or an interrupted run resumed, detects only what it
has not seen. With `person_masks`, Holistic's person segmentation of each image with a body is kept
as a 0/255 PNG beside the cache (the "fg" metrics and the dataset's person masks read it).

`poses.jsonl`, one line per readable image, sorted by path:
{"image", "sha256", "width", "height", "keypoints": 133 x [x, y, v] or null, "scores": 133 or null,
 "hand_sources": {"left": "holistic" | "hands" | null, "right": ...}, "body": bool}.
An image with no person gets null keypoints and is counted; an unreadable one is named and skipped.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.hands import detect_in_workers, worker_context
from handsynth.perception.pose import HOLISTIC_COMPLEXITY, SIDES, PoseDetector
from handsynth.progress import progress_bar

IN_PROCESS_JOBS = 2  # at most this many detections: run them here rather than start workers
CACHE_FLUSH_SECONDS = 2.0


def settings_tag() -> str:
    """Cache file name part: a cached pose is only reused under the same MediaPipe and settings."""
    return f"mediapipe{version('mediapipe')}-holistic{HOLISTIC_COMPLEXITY}-handsfill"


class PoseCache(files.DigestCache):
    """sha256 of an image file -> its pose record, or the reason it could not be read, as JSONL; with
    the person masks found beside it in `person/<sha256>.png`."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / f"poses-{settings_tag()}.jsonl", "pose", CACHE_FLUSH_SECONDS)
        self.person_dir = folder / "person"

    def person_mask_path(self, digest: str) -> Path:
        return self.person_dir / f"{digest}.png"

    def has(self, digest: str, person_masks: bool) -> bool:
        if digest in self.errors:
            return True
        pose = self.entries.get(digest)
        if pose is None:
            return False
        # a pose cached without its person mask (by `pose extract`) is detected again for the mask
        return not (person_masks and pose["body"] and not self.person_mask_path(digest).is_file())


_worker: PoseDetector | None = None
_person_dir: Path | None = None


def _init_worker(person_dir: str | None) -> PoseDetector:
    global _worker, _person_dir
    _worker = PoseDetector(segmentation=person_dir is not None)
    _person_dir = None if person_dir is None else Path(person_dir)
    return _worker


def _detect_file(job: tuple[str, str]) -> tuple[str, dict | None, str | None, int]:
    """(digest, pose record or None, error or None, detections run) for one file."""
    digest, path = job
    try:
        rgb = load_rgb(path)
    except HandsynthError as exc:
        return digest, None, str(exc), 0
    start = time.perf_counter()
    pose = _worker.detect(rgb)
    record = {**pose.record(), "seconds": round(time.perf_counter() - start, 4)}
    mask = pose.person_mask()
    if _person_dir is not None and mask is not None:
        files.save_image(_person_dir / f"{digest}.png", Image.fromarray(mask.astype(np.uint8) * 255))
    return digest, record, None, 1


@dataclass
class PoseRun:
    """What `detect_poses` found for each path: a pose record or an error, plus what it cost."""

    poses: dict[Path, dict] = field(default_factory=dict)  # path -> record (with "sha256")
    missing: list[Path] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)
    detections_run: int = 0
    cache_hits: int = 0
    worker_start: str = "none"
    cache: PoseCache | None = None


def detect_poses(
    paths: list[Path],
    cache_dir: Path,
    workers: int = 2,
    person_masks: bool = False,
    progress: bool = True,
    label: str = "poses",
) -> PoseRun:
    """Detect (or take from the cache in `cache_dir`) the whole-body pose of every image in `paths`."""
    run = PoseRun(cache=PoseCache(cache_dir))
    cache = run.cache
    digests: dict[Path, str] = {}
    for path in paths:
        try:
            digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            run.missing.append(path)
    jobs = {d: str(p) for p, d in digests.items() if not cache.has(d, person_masks)}
    run.cache_hits = len(set(digests.values())) - len(jobs)
    person_dir = str(cache.person_dir) if person_masks else None
    context = None if workers <= 1 or len(jobs) <= IN_PROCESS_JOBS else worker_context([__name__])
    if jobs:
        run.worker_start = context.get_start_method() if context else "in-process"
    try:
        for digest, pose, error, calls in _run_jobs(
            list(jobs.items()), workers, context, person_dir, progress, label
        ):
            run.detections_run += calls
            if error is None:
                cache.add(digest, pose)
            else:
                cache.add_error(digest, error)
    finally:  # also on Ctrl-C or a dead worker: what was detected is kept
        cache.flush()
    for path, digest in digests.items():
        if digest in cache.errors:
            run.unreadable[path] = cache.errors[digest]
        else:
            run.poses[path] = {"sha256": digest, **cache.entries[digest]}
    return run


def _run_jobs(jobs, workers: int, context, person_dir: str | None, progress: bool, label: str):
    if not jobs:  # everything cached: don't even load MediaPipe
        return
    with progress_bar(
        total=len(jobs), desc=f"whole-body poses [{label}]", unit="img", disable=not progress
    ) as bar:
        yield from detect_in_workers(
            jobs, _detect_file, _init_worker, (person_dir,), workers, context, bar,
            f"a pose worker process died while detecting '{label}'; the poses found so far are cached. "
            "Run again with --workers 1 to detect in this process",
        )  # fmt: skip


def list_images(folder: Path) -> list[Path]:
    if folder.is_file():
        raise HandsynthError(
            f"{folder} is a file; pose extract reads every image under a folder: give the folder holding it"
        )
    if not folder.is_dir():
        raise HandsynthError(f"image folder not found: {folder}")
    paths = files.image_files(folder)
    if not paths:
        raise HandsynthError(f"{folder} holds no images ({', '.join(sorted(files.IMAGE_SUFFIXES))})")
    return paths


def summarize(poses: list[dict]) -> dict:
    """Counts and detection rates of a list of pose records."""
    n = len(poses)
    sources = Counter(r["hand_sources"][side] for r in poses for side in SIDES)
    seconds = [r["seconds"] for r in poses if "seconds" in r]
    bodies = sum(bool(r.get("body")) for r in poses)
    return {
        "images": n,
        "with_person": sum(r["keypoints"] is not None for r in poses),
        "no_person": sum(r["keypoints"] is None for r in poses),
        "bodies": bodies,
        "hands": {"holistic": sources["holistic"], "hands": sources["hands"], "none": sources[None]},
        "rates": {
            "body": bodies / n if n else 0.0,
            "holistic_hands_per_image": sources["holistic"] / n if n else 0.0,
            "hands_per_image": (sources["holistic"] + sources["hands"]) / n if n else 0.0,
        },
        "seconds_per_image": float(np.mean(seconds)) if seconds else None,
    }


def extract_poses(images_dir: str | Path, out: str | Path, workers: int = 2, progress: bool = True) -> dict:
    """`handsynth pose extract`: poses.jsonl for every image under `images_dir`, and a report beside it."""
    images_dir, out = Path(images_dir), Path(out)
    paths = list_images(images_dir)
    files.check_writable(out)  # before the detection, not after it
    run = detect_poses(
        paths, out.parent / f".{out.stem}-cache", workers, progress=progress, label=images_dir.name
    )
    lines = [{"image": str(path), **record} for path, record in sorted(run.poses.items())]
    files.write_jsonl(out, lines)
    report = {
        **summarize(lines),
        "unreadable": {str(p): e for p, e in run.unreadable.items()},
        "missing": [str(p) for p in run.missing],
        "detections_run": run.detections_run,
        "cache_hits": run.cache_hits,
        "worker_start": run.worker_start,
        "detector": {"mediapipe": version("mediapipe"), "model_complexity": HOLISTIC_COMPLEXITY},
    }
    files.write_json(out.with_suffix(".report.json"), report)
    return report
