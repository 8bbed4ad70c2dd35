"""Reading HaGRID annotations, v1 (`ann_train_val/<g>.json`) and v2 (`annotations/<split>/<g>.json`).

A record is one image with the box of its gesture (not of a `no_gesture` hand), the hand's
landmarks where the annotation has them, and the subject's user_id. Images missing on disk are
listed by `read_hagrid`; images that are on disk but cannot be decoded are found by `verify_images`.
Neither stops the run: both are reported by key and path with a count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth.data.gestures import NO_GESTURE, check_gesture
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)
V2_SPLITS = ("train", "val", "test")
_LOGGED = 20  # missing images named one by one in the log; the index lists them all


@dataclass(frozen=True)
class HagridRecord:
    key: str
    image_path: Path
    gesture: str
    bbox: tuple[float, float, float, float]  # [x, y, w, h], normalised to the image size
    user_id: str | None = None
    split: str | None = None
    landmarks: np.ndarray | None = field(default=None, compare=False)  # (21, 2) normalised x, y
    landmarks_3d: np.ndarray | None = field(default=None, compare=False)  # (21, 3), synthetic data only
    united_bbox: tuple[float, float, float, float] | None = None  # both hands of a two-hand gesture
    caption: str | None = None  # synthetic data only: the caption its generator wrote
    hand_boxes: int = 1  # hands annotated in the image: more than two means more than one person

    @property
    def gesture_box(self) -> tuple[float, float, float, float]:
        """The box the whole gesture occupies: both hands for a two-hand gesture, else its hand."""
        return self.united_bbox or self.bbox


@dataclass
class HagridIndex:
    records: list[HagridRecord]
    missing: list[tuple[str, Path]]  # (key, path) of annotated images not on disk
    corrupt: list[tuple[str, Path, str]] = field(default_factory=list)  # (key, path, error), if verified

    def by_gesture(self, gesture: str) -> list[HagridRecord]:
        return [r for r in self.records if r.gesture == gesture]


def detect_layout(root: Path) -> str:
    if (root / "annotations").is_dir():
        return "v2"
    if (root / "ann_train_val").is_dir():
        return "v1"
    raise HandsynthError(
        f"{root} is not a HaGRID folder: expected annotations/<split>/<gesture>.json (v2) "
        "or ann_train_val/<gesture>.json (v1)"
    )


def annotation_files(root: Path, gesture: str, splits: tuple[str, ...] = V2_SPLITS) -> list[tuple[str, Path]]:
    """(split, json path) for every annotation file of `gesture` under `root`."""
    if detect_layout(root) == "v1":
        path = root / "ann_train_val" / f"{gesture}.json"
        return [("train_val", path)] if path.is_file() else []
    return [(s, root / "annotations" / s / f"{gesture}.json") for s in splits
            if (root / "annotations" / s / f"{gesture}.json").is_file()]  # fmt: skip


def image_path(root: Path, gesture: str, key: str) -> Path:
    """HaGRID keeps images as `<gesture>/<key>.jpg` under `images/` (v2) or the root (v1 archives)."""
    for folder in (root / "images" / gesture, root / gesture, root / f"train_val_{gesture}"):
        path = folder / f"{key}.jpg"
        if path.is_file():
            return path
    return root / "images" / gesture / f"{key}.jpg"


def _first_box_index(labels: list[str], gesture: str) -> int | None:
    for i, label in enumerate(labels):
        if label == gesture:
            return i
    return next((i for i, label in enumerate(labels) if label != NO_GESTURE), None)


def parse_entry(root: Path, gesture: str, split: str, key: str, entry: dict) -> HagridRecord | None:
    """One annotation entry to a record; None when it holds no box of a real gesture."""
    labels = entry.get("labels", [])
    index = _first_box_index(labels, gesture)
    if index is None:
        return None
    hands = entry.get("hand_landmarks") or entry.get("landmarks") or []  # v2 name, v1 name
    landmarks = hands[index] if index < len(hands) and hands[index] else None
    hands_3d = entry.get("hand_landmarks_3d") or []
    landmarks_3d = hands_3d[index] if index < len(hands_3d) and hands_3d[index] else None
    united = entry.get("united_bbox")
    united = united[0] if united and united[0] else None
    return HagridRecord(
        key=key,
        image_path=image_path(root, gesture, key),
        gesture=gesture,
        bbox=tuple(entry["bboxes"][index]),
        user_id=entry.get("user_id"),
        split=split,
        landmarks=None if landmarks is None else np.asarray(landmarks, dtype=np.float64),
        landmarks_3d=None if landmarks_3d is None else np.asarray(landmarks_3d, dtype=np.float64),
        united_bbox=None if united is None else tuple(united),
        caption=entry.get("caption"),
        hand_boxes=len(entry["bboxes"]),
    )


def read_hagrid(
    root: str | Path, gestures: list[str], splits: tuple[str, ...] = V2_SPLITS, verify: bool = False
) -> HagridIndex:
    """Every record of `gestures` under `root`; images missing on disk are listed, not fatal.

    With `verify`, every image is also decoded and the unreadable ones move to `corrupt`
    (on a full HaGRID copy that is slow: verify only the records you select, with `verify_images`).
    """
    root = Path(root)
    records, missing = [], []
    for gesture in gestures:
        check_gesture(gesture)
        sources = annotation_files(root, gesture, splits)
        if not sources:
            raise HandsynthError(f"no annotations for gesture '{gesture}' under {root}")
        for split, path in sources:
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise HandsynthError(f"cannot read annotation file {path}: {exc}") from None
            for key, entry in entries.items():
                record = parse_entry(root, gesture, split, key, entry)
                if record is None:
                    continue
                if record.image_path.is_file():
                    records.append(record)
                else:
                    missing.append((key, record.image_path))
    for key, path in missing[:_LOGGED]:
        log.warning("missing image %s: %s", key, path)
    if missing:
        log.warning("%d annotated image(s) are missing and were skipped", len(missing))
    corrupt = []
    if verify:
        records, corrupt = verify_images(records)
    return HagridIndex(records=records, missing=missing, corrupt=corrupt)


def check_image(path: Path) -> str | None:
    """None when `path` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as image:
            # A JPEG decoded at 1/8 scale still reads the whole stream, so truncation shows, at less cost.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_images(records: list[HagridRecord]) -> tuple[list[HagridRecord], list[tuple[str, Path, str]]]:
    """Split `records` into those whose image decodes and (key, path, error) for those that do not."""
    good, corrupt = [], []
    for record in progress_bar(records, desc="verifying images", unit="img", disable=len(records) < 100):
        error = check_image(record.image_path)
        if error is None:
            good.append(record)
        else:
            corrupt.append((record.key, record.image_path, error))
            log.warning("unreadable image %s: %s (%s)", record.key, record.image_path, error)
    if corrupt:
        log.warning("%d image(s) could not be read and were skipped", len(corrupt))
    return good, corrupt
