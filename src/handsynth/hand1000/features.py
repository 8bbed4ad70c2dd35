"""Stage I (`handsynth features`): the 63-d MediaPipe gesture feature of a gesture's training images.

Per image, the feature is the 21 landmarks (x, y, z) of the first detected hand; the gesture
feature is their mean over every image with a detection (Hand1000 `cal_mean_feature.py`). Unlike
the reference loop, detection runs in worker processes, and each result is cached under the sha256
of the file's bytes and the detector settings, so a re-run, or an interrupted run resumed, detects
only what it has not seen.

Input is a dataset folder (`<dataset>/<split>.jsonl`, filtered by gesture) or a plain folder of
images. Output: `<out>/<gesture>/mean.npy`, `features.npz` (keys, features, fallback),
`report.json`.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from handsynth import files
from handsynth.config import FeaturesSection
from handsynth.data.gestures import check_gesture
from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.hands import NUM_LANDMARKS, HandDetector, detect_in_workers, worker_context
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

IN_PROCESS_JOBS = 4  # at most this many detections: run them here rather than start workers
CACHE_FLUSH_SECONDS = 2.0  # new cache entries go to disk at least this often


@dataclass(frozen=True)
class ImageItem:
    key: str
    path: Path
    landmarks: list | None = None  # the annotation's 21x2 normalised landmarks, for the fallback


@dataclass
class GestureFeature:
    gesture: str
    folder: Path  # <out>/<gesture>
    mean: np.ndarray  # (63,) float32
    keys: list[str]
    features: np.ndarray  # (N, 63) float32
    report: dict = field(repr=False)


def list_images(source: Path, gesture: str | None, split: str = "train") -> tuple[list[ImageItem], str]:
    """The images of `gesture` in a dataset folder's manifest, or every image in a plain folder.

    Returns the items and the gesture label: for a plain folder, `gesture` or else its name.
    """
    if not source.is_dir():
        raise HandsynthError(f"input folder not found: {source}")
    manifest = source / f"{split}.jsonl"
    if manifest.is_file():
        if gesture is None:
            raise HandsynthError(f"{source} is a dataset folder: name the gesture to use (--gesture)")
        check_gesture(gesture)
        items = [
            ImageItem(key=r["key"], path=source / r["image"], landmarks=r.get("landmarks"))
            for r in files.read_jsonl(manifest)
            if r.get("gesture") == gesture
        ]
        if not items:
            raise HandsynthError(f"{manifest} has no '{gesture}' images; check the gesture name")
        return items, gesture
    paths = files.image_files(source)
    if not paths:
        raise HandsynthError(
            f"{source} holds no images ({', '.join(sorted(files.IMAGE_SUFFIXES))}) and no {split}.jsonl "
            "manifest"
        )
    items = [ImageItem(key=p.relative_to(source).with_suffix("").as_posix(), path=p) for p in paths]
    return items, gesture or source.name


def settings_tag(settings: FeaturesSection) -> str:
    """Cache file name part: results are only reusable under the same detector and settings."""
    return (
        f"mediapipe{version('mediapipe')}-hands{settings.max_num_hands}"
        f"-conf{settings.min_detection_confidence:g}-complexity{settings.model_complexity}"
    )


def _detector_settings(settings: FeaturesSection) -> dict:
    return dict(
        max_num_hands=settings.max_num_hands,
        min_detection_confidence=settings.min_detection_confidence,
        model_complexity=settings.model_complexity,
    )


class LandmarkCache(files.DigestCache):
    """sha256 of an image file -> first-hand landmarks (21x3 list) or None (no hand), as JSONL."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "landmarks", CACHE_FLUSH_SECONDS)


_worker_detector: HandDetector | None = None


def _init_worker(detector_settings: dict) -> HandDetector:
    global _worker_detector
    _worker_detector = HandDetector(**detector_settings)
    return _worker_detector


def _detect_file(job: tuple[str, str]) -> tuple[str, list | None, str | None, int]:
    """(digest, first-hand landmarks or None, error or None, detections run) for one file."""
    digest, path = job
    try:
        rgb = load_rgb(path)
    except HandsynthError as exc:
        return digest, None, str(exc), 0
    before = _worker_detector.calls
    hand = _worker_detector.detect(rgb).first
    return digest, None if hand is None else hand.landmarks.tolist(), None, _worker_detector.calls - before


def _run_detections(
    jobs: list[tuple[str, str]],
    settings: FeaturesSection,
    context: multiprocessing.context.BaseContext | None,
    progress: bool,
    label: str,
):
    """Yield `_detect_file` results: in worker processes started by `context`, or here if None."""
    if not jobs:  # everything cached: don't even load MediaPipe
        return
    with progress_bar(total=len(jobs), desc=f"hands [{label}]", unit="img", disable=not progress) as bar:
        yield from detect_in_workers(
            jobs, _detect_file, _init_worker, (_detector_settings(settings),), settings.workers, context, bar,
            f"a Stage I worker process died while detecting hands in '{label}'; the landmarks found so far "
            "are cached. Run again with --workers 1 to detect in this process",
        )  # fmt: skip


def compute_gesture_feature(
    source: str | Path,
    out_dir: str | Path,
    gesture: str | None = None,
    settings: FeaturesSection | None = None,
    progress: bool = True,
) -> GestureFeature:
    """Stage I for one gesture: detect (or reuse cached) landmarks, write mean, features and report.

    Images that are missing or corrupt, and images with no hand, are skipped and counted. With
    `settings.annotation_fallback`, an image with no detection uses its manifest landmarks with z = 0.
    """
    settings = settings or FeaturesSection()
    source, out_dir = Path(source), Path(out_dir)
    start = time.perf_counter()
    items, label = list_images(source, gesture, settings.split)

    digests: list[str | None] = []
    for item in items:
        try:
            digests.append(hashlib.sha256(item.path.read_bytes()).hexdigest())
        except OSError:
            digests.append(None)
    cache = LandmarkCache(out_dir / ".cache" / f"landmarks-{settings_tag(settings)}.jsonl")
    paths = {d: str(item.path) for item, d in zip(items, digests, strict=True) if d is not None}
    jobs = [(d, path) for d, path in paths.items() if d not in cache]
    # a few images, or one worker: not worth starting processes
    context = (
        None
        if settings.workers <= 1 or len(jobs) <= IN_PROCESS_JOBS
        else worker_context(["handsynth.perception.hands"])
    )
    detections_run = 0
    try:
        for digest, landmarks, error, calls in _run_detections(jobs, settings, context, progress, label):
            detections_run += calls
            if error is None:
                cache.add(digest, landmarks)
            else:
                cache.add_error(digest, error)
    finally:  # also on Ctrl-C or a dead worker: what was detected is kept
        cache.flush()

    keys, rows, fallback = [], [], []
    missing, corrupt, no_hand = [], [], []
    for item, digest in zip(items, digests, strict=True):
        if digest is None:
            missing.append(str(item.path))
        elif digest in cache.errors:
            corrupt.append(str(item.path))
        elif cache.entries[digest] is not None:
            keys.append(item.key)
            rows.append(np.asarray(cache.entries[digest], dtype=np.float64).reshape(-1))
            fallback.append(False)
        elif settings.annotation_fallback and item.landmarks is not None:
            points = np.zeros((NUM_LANDMARKS, 3))
            points[:, :2] = np.asarray(item.landmarks, dtype=np.float64).reshape(NUM_LANDMARKS, 2)
            keys.append(item.key)
            rows.append(points.reshape(-1))
            fallback.append(True)
        else:
            no_hand.append(item.key)
    for path in missing:
        log.warning("skipped missing image %s", path)
    for path in corrupt:
        log.warning("skipped unreadable image %s", path)
    if not rows:
        raise HandsynthError(
            f"no hand detected in any of the {len(items)} '{label}' images under {source} "
            f"({len(missing)} missing, {len(corrupt)} unreadable); check that the images show hands, "
            "or lower --min-detection-confidence"
        )

    values = np.stack(rows)
    mean = values.mean(axis=0).astype(np.float32)
    detected = len(rows) - sum(fallback)
    report = {
        "gesture": label,
        "source": str(source),
        "images": len(items),
        "detected": detected,
        "fallback": sum(fallback),
        "used": len(rows),
        "no_hand": len(no_hand),
        "missing": len(missing),
        "corrupt": len(corrupt),
        "coverage_percent": 100.0 * detected / len(items),
        "feature_std": values.std(axis=0).tolist(),
        "seconds": time.perf_counter() - start,
        "detections_run": detections_run,
        "cache_hits": len(paths) - len(jobs),
        "workers": settings.workers,
        "worker_start": "none" if not jobs else context.get_start_method() if context else "in-process",
        "detector": {**_detector_settings(settings), "mediapipe": version("mediapipe")},
        "annotation_fallback": settings.annotation_fallback,
        "skipped_files": missing + corrupt,
        "no_hand_keys": no_hand,
    }
    folder = out_dir / label
    features = values.astype(np.float32)
    with files.atomic_path(folder / "features.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), features=features, fallback=np.array(fallback))
    files.write_npy(folder / "mean.npy", mean)
    files.write_json(folder / "report.json", report)
    log.info(
        "%s: %d/%d images with a hand (%.1f%%), %d fallback, %d skipped, %d detections, %.1f s -> %s",
        label, detected, len(items), report["coverage_percent"], report["fallback"],
        len(missing) + len(corrupt), detections_run, report["seconds"], folder,
    )  # fmt: skip
    return GestureFeature(label, folder, mean, keys, features, report)
