"""What every source reader gives `pose build`: records of images with, where the source has them,
their own whole-body keypoints and captions; and the helpers the readers share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HANDS, empty_pose

VISIBLE = 2.0  # COCO-WholeBody's "labelled and visible"


@dataclass(frozen=True)
class SourceRecord:
    key: str
    image_path: Path
    gesture: str  # the group the selection draws from and the report counts (a hand type, "asl", ...)
    split: str | None = None
    caption: str | None = None
    keypoints: np.ndarray | None = field(default=None, compare=False)  # (133, 3) in the image's pixels
    user_id: str | None = None  # read by the subject-disjoint selection
    hand_boxes: int = 0  # hands annotated beyond the keypoints: the single-person flag reads it as HaGRID's


@dataclass
class SourceIndex:
    """A source's records. `fixed_split`: the records carry their split (an evaluation set), so the
    build takes them as they are instead of selecting N per group. `filtered`: records a source filter
    left out, counted by reason."""

    records: list
    missing: list[tuple[str, Path]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    fixed_split: bool = False
    filtered: dict[str, int] = field(default_factory=dict)

    def by_gesture(self, gesture: str) -> list:
        return [r for r in self.records if r.gesture == gesture]


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HandsynthError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandsynthError(f"cannot read {what} {path}: {exc}") from None


def to_pixels(camera_points: np.ndarray, focal, princpt) -> np.ndarray:
    """(N, 3) camera coordinates -> (N, 3) pixel x, y (pinhole: u = f x / z + c) and the depth z."""
    z = camera_points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):  # z = 0 gives inf, then v = 0 for that point
        xy = camera_points[:, :2] / z[:, None] * np.asarray(focal, np.float64) + np.asarray(
            princpt, np.float64
        )
    return np.c_[xy, z]


def hand_keypoints(points: np.ndarray, labelled: np.ndarray | None = None) -> np.ndarray:
    """(21, 3) x, y, v of a hand from its (21, 3) projected x, y, depth in MediaPipe's order: a point is
    visible when labelled and in front of the camera, absent (0, 0, 0) otherwise."""
    seen = points[:, 2] > 0
    if labelled is not None:
        seen &= labelled
    hand = np.zeros((len(points), 3), np.float32)
    hand[seen, :2] = points[seen, :2]
    hand[seen, 2] = VISIBLE
    return hand


def two_hands_pose(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """A (133, 3) COCO-WholeBody pose holding only two hands, each (21, 3) in MediaPipe's order
    (x, y, v; v = 0 marks an absent point)."""
    pose = empty_pose()
    pose[HANDS["right"]] = right
    pose[HANDS["left"]] = left
    return pose


def sequence_captions(path: str, fmt: str) -> dict[str, str]:
    """`pose.captions`: a JSON object of sequence name -> caption, or {} when not set."""
    if not path:
        return {}
    captions = read_json(Path(path), f"the {fmt} captions file (pose.captions)")
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise HandsynthError(
            f"pose.captions {path} must be a JSON object of sequence name -> caption, as a string"
        )
    return captions


def hands_caption(hand_type: str) -> str:
    """The caption when the user gives none: a template naming the hand(s)."""
    if hand_type in ("right", "left"):
        return f"a photo of a person's {hand_type} hand"
    return "a photo of a person's two hands interacting"


def array(value, shape: tuple[int, ...], path: Path, record: str, what: str) -> np.ndarray:
    """`value` as a finite float64 array of `shape`, or the malformed-record error naming `what`."""
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != shape or not np.isfinite(out).all():
        got = (
            "not numbers"
            if out is None
            else f"shape {out.shape}" + ("" if np.isfinite(out).all() else ", not finite")
        )
        raise malformed(
            path, record, f"{what} must be {' x '.join(map(str, shape))} finite numbers, got {got}"
        )
    return out


def malformed(path: Path, record: str, problem: str) -> HandsynthError:
    return HandsynthError(f"{path}: {record} is malformed: {problem}; fix or remove that record")
