"""The project's one door to MediaPipe Holistic: a whole-body pose in COCO-WholeBody order.

`PoseDetector.detect(rgb)` gives a `WholeBody`: 133 keypoints (x, y in pixels, COCO visibility v),
MediaPipe's score for each, where each hand came from, and (optionally) Holistic's person
segmentation. The index tables are in `perception.wholebody` (TWOSTAGE.md, "Reference facts").

Visibility rule: a point gets v = 2 when MediaPipe's own drawing code would draw it, that is when it
lies inside the image and its visibility (given for the 33 body points only) is at least 0.5
(`drawing_utils._VISIBILITY_THRESHOLD`); every other point gets v = 0. Holistic gives no
"labelled but occluded" signal, so v = 1 is never produced. x, y stay MediaPipe's estimate even
where v = 0; points MediaPipe has no estimate for (the small toes, parts not found) are (0, 0, 0).

Scores: the body and feet points carry MediaPipe's visibility; the face and hand points, for which
its landmark models give no per-point score, carry 1.0 where their part was found and 0.0 elsewhere.

Hands (TWOSTAGE.md §9): Holistic finds hands through the body's wrists and misses many in close-ups.
Its hands are kept; a missing one is filled from MediaPipe Hands, matched to the nearer wrist of the
body, or, with no body, by handedness. `hand_sources` records "holistic", "hands" or None per side.

Holistic keeps state between images even with static_image_mode (mediapipe#4981: the same photo can
give a hand or not depending on the photos before it). A frame with no person before each image
clears it: every result then equals a fresh graph's on that image alone, whatever the order, worker
or shard (tests/test_pose.py checks this against a fresh graph per photo). The documented
`reset()` does the same but restarts the graph, 3-4 times Holistic's own time per image
(benchmarks/pose_data.py); the empty frame costs a pose-detector pass, about a fifth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.hands import Detection, HandDetector, import_mediapipe
from handsynth.perception.wholebody import (
    FACE,
    FACE_FROM_MESH,
    HANDS,
    LEFT_WRIST,
    NUM_KEYPOINTS,
    POSE_FROM_MEDIAPIPE,
    RIGHT_WRIST,
    empty_pose,
)

VISIBILITY_THRESHOLD = 0.5  # MediaPipe drawing_utils: a point under it is not drawn
HOLISTIC_COMPLEXITY = 1  # the only model_complexity whose model ships with the wheel (0 and 2 download)
HANDS_FILL = dict(max_num_hands=2, min_detection_confidence=0.5)
DUPLICATE_IOU = 0.5  # a Hands detection this much over a Holistic hand is that same hand
PERSON_THRESHOLD = 0.5  # segmentation probability above which a pixel is the person
SIDES = ("left", "right")
_EMPTY_FRAME = np.zeros((32, 32, 3), np.uint8)
_WRISTS = {"left": LEFT_WRIST, "right": RIGHT_WRIST}
# MediaPipe Hands assumes a mirrored (selfie) image: on an ordinary photo its "Left" is the subject's right.
_SUBJECT_SIDE = {"Left": "right", "Right": "left"}


@dataclass
class WholeBody:
    keypoints: np.ndarray  # (133, 3) float32: x, y in pixels, v
    scores: np.ndarray  # (133,) float32
    hand_sources: dict[str, str | None]
    width: int
    height: int
    body: bool  # Holistic found a body (pose landmarks)
    segmentation: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 in [0, 1]

    @property
    def found(self) -> bool:
        """Some part of a person was found: a body, a face or a hand."""
        return bool((self.keypoints[:, 2] > 0).any() or self.body)

    @property
    def hands_found(self) -> list[str]:
        return [side for side in SIDES if self.hand_sources[side] is not None]

    def person_mask(self) -> np.ndarray | None:
        """(H, W) bool: Holistic's person segmentation above 0.5; None without a body or segmentation."""
        return None if self.segmentation is None else self.segmentation > PERSON_THRESHOLD

    def record(self) -> dict:
        """The poses.jsonl fields (all but "image"): keypoints and scores are null with no person."""
        found = self.found
        return {
            "width": self.width,
            "height": self.height,
            "keypoints": self.keypoints.astype(np.float64).round(3).tolist() if found else None,
            "scores": self.scores.astype(np.float64).round(4).tolist() if found else None,
            "hand_sources": dict(self.hand_sources),
            "body": self.body,
        }

    @classmethod
    def from_record(cls, record: dict) -> WholeBody:
        """A pose read back from a poses.jsonl line (without the segmentation)."""
        keypoints = record.get("keypoints")
        scores = record.get("scores")
        return cls(
            keypoints=empty_pose() if keypoints is None else np.asarray(keypoints, dtype=np.float32),
            scores=np.zeros(NUM_KEYPOINTS, np.float32) if scores is None else np.asarray(scores, np.float32),
            hand_sources={side: record["hand_sources"].get(side) for side in SIDES},
            width=int(record["width"]),
            height=int(record["height"]),
            body=bool(record.get("body", False)),
        )


def _inside(x: float, y: float) -> bool:
    """drawing_utils._normalized_to_pixel_coordinates: within [0, 1], ends included up to float noise."""

    def ok(value: float) -> bool:
        return (value > 0 or math.isclose(0, value)) and (value < 1 or math.isclose(1, value))

    return ok(x) and ok(y)


def _set(pose: np.ndarray, scores: np.ndarray, index: int, x: float, y: float, score: float, size) -> None:
    width, height = size
    visible = _inside(x, y) and score >= VISIBILITY_THRESHOLD
    pose[index] = (x * width, y * height, 2.0 if visible else 0.0)
    scores[index] = score


def wholebody_from_holistic(result, width: int, height: int) -> WholeBody:
    """Map a Holistic result (normalised landmarks) onto the 133 COCO-WholeBody keypoints."""
    pose, scores = empty_pose(), np.zeros(NUM_KEYPOINTS, np.float32)
    size = (width, height)
    if result.pose_landmarks is not None:
        landmarks = result.pose_landmarks.landmark
        for index, mp_index in enumerate(POSE_FROM_MEDIAPIPE):
            if mp_index >= 0:
                point = landmarks[mp_index]
                _set(pose, scores, index, point.x, point.y, point.visibility, size)
    if result.face_landmarks is not None:
        mesh = np.array([(p.x, p.y) for p in result.face_landmarks.landmark])
        for offset, indices in enumerate(FACE_FROM_MESH):
            x, y = mesh[list(indices)].mean(axis=0)
            _set(pose, scores, FACE.start + offset, x, y, 1.0, size)
    sources: dict[str, str | None] = dict.fromkeys(SIDES)
    for side in SIDES:
        hand = getattr(result, f"{side}_hand_landmarks")  # Holistic's left hand is the subject's left
        if hand is not None:
            for offset, point in enumerate(hand.landmark):
                _set(pose, scores, HANDS[side].start + offset, point.x, point.y, 1.0, size)
            sources[side] = "holistic"
    segmentation = getattr(result, "segmentation_mask", None)
    return WholeBody(
        keypoints=pose,
        scores=scores,
        hand_sources=sources,
        width=width,
        height=height,
        body=result.pose_landmarks is not None,
        segmentation=None if segmentation is None else np.array(segmentation, dtype=np.float32),
    )


def _box(points: np.ndarray) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def fill_missing_hands(pose: WholeBody, detection: Detection) -> WholeBody:
    """Fill the sides Holistic left empty from MediaPipe Hands' detections (in place; returns `pose`).

    A detection over a hand Holistic found (box IoU >= 0.5) is that hand, and is not used again.
    With a body, the rest go to the missing sides by the distance from the detected wrist to the
    body's wrist, nearest pair first. With no body, each goes to the side its handedness names
    (most confident first), or to the other missing side when that one is taken.
    """
    missing = [side for side in SIDES if pose.hand_sources[side] is None]
    size = np.array([pose.width, pose.height], dtype=np.float64)
    kept = [_box(pose.keypoints[HANDS[side], :2]) for side in SIDES if pose.hand_sources[side] is not None]
    candidates = []
    for hand in detection.hands:
        points = hand.landmarks[:, :2] * size
        if all(_iou(_box(points), box) < DUPLICATE_IOU for box in kept):
            candidates.append(hand)
    if not missing or not candidates:
        return pose
    assignment: dict[str, object] = {}
    if pose.body:
        pairs = sorted(
            (float(np.linalg.norm(hand.landmarks[0, :2] * size - pose.keypoints[_WRISTS[side], :2])), i, side)
            for i, hand in enumerate(candidates)
            for side in missing
        )
        used: set[int] = set()
        for _, i, side in pairs:
            if i not in used and side not in assignment:
                assignment[side] = candidates[i]
                used.add(i)
    else:
        for hand in sorted(candidates, key=lambda h: -h.score):
            free = [side for side in missing if side not in assignment]
            if not free:
                break
            named = _SUBJECT_SIDE[hand.handedness]
            assignment[named if named in free else free[0]] = hand
    for side, hand in assignment.items():
        for offset, (x, y, _) in enumerate(hand.landmarks):
            _set(
                pose.keypoints, pose.scores, HANDS[side].start + offset, x, y, 1.0, (pose.width, pose.height)
            )
        pose.hand_sources[side] = "hands"
    return pose


class PoseDetector:
    """MediaPipe Holistic (static images, model_complexity 1), with hands filled from MediaPipe Hands.

    `.calls` counts the images it ran on. `segmentation` also returns Holistic's person mask.
    """

    def __init__(self, fill_hands: bool = True, segmentation: bool = False) -> None:
        mp = import_mediapipe()  # imported here: it takes a second and most commands don't need it

        self.settings = {"model_complexity": HOLISTIC_COMPLEXITY, "fill_hands": fill_hands}
        self.segmentation = segmentation
        self.calls = 0
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=True, model_complexity=HOLISTIC_COMPLEXITY, enable_segmentation=segmentation
        )
        self._hands = HandDetector(**HANDS_FILL) if fill_hands else None

    def detect(self, rgb: np.ndarray) -> WholeBody:
        """The whole-body pose of the person in an (H, W, 3) uint8 RGB image."""
        if not (
            isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
        ):
            raise HandsynthError(
                f"PoseDetector.detect wants an (H, W, 3) uint8 RGB array, got {type(rgb).__name__} with "
                f"shape {getattr(rgb, 'shape', None)}; read files with handsynth.files.load_rgb"
            )
        if self._holistic is None:
            raise HandsynthError("this PoseDetector is closed; create a new one")
        rgb = np.ascontiguousarray(rgb)
        if self.calls:
            self._holistic.process(_EMPTY_FRAME)  # clears what the last image left in the graph
        result = self._holistic.process(rgb)
        self.calls += 1
        pose = wholebody_from_holistic(result, rgb.shape[1], rgb.shape[0])
        if self._hands is not None and len(pose.hands_found) < 2:
            fill_missing_hands(pose, self._hands.detect(rgb))
        return pose

    def close(self) -> None:
        if self._holistic is not None:
            self._holistic.close()
            self._holistic = None
        if self._hands is not None:
            self._hands.close()

    def __enter__(self) -> PoseDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
