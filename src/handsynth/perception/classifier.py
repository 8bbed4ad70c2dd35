"""Rule-based gesture classifier from 21 MediaPipe landmarks: the gesture-accuracy metric.

No reference metric checks that a generated hand shows the gesture asked for; this one does, for
the six Hand1000 gestures (call, four, like, mute, ok, palm), and says "unknown" for anything else.

Finger states come from joint angles, which do not change with image scale or in-plane rotation:
a finger's bend is the sum of the turning angles along wrist -> MCP -> PIP -> DIP -> tip. The
thumb counts as extended when its tip is far from the ring-finger knuckle, relative to the palm
size (a thumb folded across the palm, as in `four`, ends there). `ok` is thumb-tip-index-tip
contact with the other three fingers extended. Two gestures are defined by direction as well as
shape: `like` needs the thumb to point up (a thumb pointing down is `dislike`), and `mute` needs
the index fingertip at the mouth. The mouth is estimated at 70% down the face box; without a face
box, `mute` falls back to a documented approximation: a lone extended index finger pointing up.
"""

from __future__ import annotations

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.hands import Hand, HandDetector, import_mediapipe

TARGET_GESTURES = ("call", "four", "like", "mute", "ok", "palm")
UNKNOWN = "unknown"

WRIST = 0
FINGER_JOINTS = {  # MCP (thumb: CMC), PIP (MCP), DIP (IP), tip
    "thumb": (1, 2, 3, 4),
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "pinky": (17, 18, 19, 20),
}
EXTENDED, CURLED, BENT = "extended", "curled", "bent"

# Total bend, degrees: a straight finger turns < 65, a curled one > 100 (measured on HaGRID);
# in between a finger is "bent" and no target gesture accepts it.
STRAIGHT_MAX_DEG = 65.0
CURLED_MIN_DEG = 100.0
# Thumb tip to ring MCP, in palm sizes: extended thumbs measure 1.2-1.6, folded ones 0.2-0.4.
THUMB_OUT_MIN = 0.95
THUMB_IN_MAX = 0.65
OK_CONTACT_MAX = 0.35  # thumb tip to index tip, in palm sizes
UPRIGHT_MIN_COS = 0.5  # within 60 degrees of straight up
MOUTH_DEPTH = 0.7  # mouth height, as a fraction of the face box from its top
MOUTH_REACH = 0.5  # index tip to mouth, in face widths


def _as_points(landmarks: np.ndarray, aspect: float) -> np.ndarray:
    """(21, 3) in units of the image height, so angles are true on non-square images."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape not in ((21, 2), (21, 3)):
        raise HandsynthError(f"a hand has 21 landmarks of (x, y) or (x, y, z); got shape {points.shape}")
    points = np.pad(points, ((0, 0), (0, 3 - points.shape[1])))
    points[:, 0] *= aspect
    points[:, 2] *= aspect  # MediaPipe z is on the scale of x
    return points


def _turn_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def palm_size(points: np.ndarray) -> float:
    """Longest wrist-to-knuckle distance: stays near the hand's length when the palm is foreshortened."""
    return float(max(np.linalg.norm(points[k] - points[WRIST]) for k in (5, 9, 17)))


def finger_states(landmarks: np.ndarray, aspect: float = 1.0) -> dict[str, str]:
    """ "extended", "curled" or "bent" per finger; `aspect` is image width / height."""
    points = _as_points(landmarks, aspect)
    states = {}
    for name, (mcp, pip, dip, tip) in FINGER_JOINTS.items():
        if name == "thumb":
            reach = np.linalg.norm(points[tip] - points[13]) / palm_size(points)
            states[name] = EXTENDED if reach > THUMB_OUT_MIN else CURLED if reach < THUMB_IN_MAX else BENT
            continue
        chain = points[[WRIST, mcp, pip, dip, tip]]
        segments = np.diff(chain, axis=0)
        bend = sum(_turn_deg(segments[i], segments[i + 1]) for i in range(3))
        states[name] = EXTENDED if bend < STRAIGHT_MAX_DEG else CURLED if bend > CURLED_MIN_DEG else BENT
    return states


def _points_up(points: np.ndarray, start: int, end: int) -> bool:
    direction = points[end, :2] - points[start, :2]
    return -direction[1] / max(np.linalg.norm(direction), 1e-12) > UPRIGHT_MIN_COS  # image y grows down


def _at_mouth(points: np.ndarray, face_box: tuple[float, float, float, float], aspect: float) -> bool:
    x0, y0, x1, y1 = face_box
    mouth = np.array([(x0 + x1) / 2 * aspect, y0 + MOUTH_DEPTH * (y1 - y0)])
    face_width = (x1 - x0) * aspect
    return float(np.linalg.norm(points[8, :2] - mouth)) < MOUTH_REACH * face_width


def classify_landmarks(
    landmarks: np.ndarray,
    face_box: tuple[float, float, float, float] | None = None,
    aspect: float = 1.0,
) -> str:
    """The gesture 21 landmarks show, or "unknown".

    `landmarks`: (21, 3) or (21, 2), x and y normalised to the image. `face_box`: (x0, y0, x1, y1)
    normalised like the landmarks. `aspect`: image width / height.
    """
    points = _as_points(landmarks, aspect)
    s = finger_states(landmarks, aspect)
    thumb, fingers = s["thumb"], (s["index"], s["middle"], s["ring"], s["pinky"])
    contact = np.linalg.norm(points[4] - points[8]) / palm_size(points) < OK_CONTACT_MAX
    if contact and fingers[1:] == (EXTENDED,) * 3:
        return "ok"
    if fingers == (EXTENDED,) * 4:
        return "palm" if thumb == EXTENDED else "four" if thumb == CURLED else UNKNOWN
    if thumb == EXTENDED and fingers == (CURLED, CURLED, CURLED, EXTENDED):
        return "call"
    if thumb == EXTENDED and fingers == (CURLED,) * 4:
        return "like" if _points_up(points, 2, 4) else UNKNOWN
    if fingers == (EXTENDED, CURLED, CURLED, CURLED) and thumb != EXTENDED:
        if face_box is not None:
            return "mute" if _at_mouth(points, face_box, aspect) else UNKNOWN
        return "mute" if _points_up(points, 5, 8) else UNKNOWN
    return UNKNOWN


class GestureClassifier:
    """Image -> gesture: the first MediaPipe hand, and for `mute` the face nearest its index tip."""

    def __init__(
        self, min_detection_confidence: float = 0.5, model_complexity: int = 1, face_confidence: float = 0.5
    ) -> None:
        mp = import_mediapipe()

        self.hands = HandDetector(
            max_num_hands=1,
            min_detection_confidence=min_detection_confidence,
            model_complexity=model_complexity,
        )
        # model 0: the short-range face model, for faces within about 2 m; it ships with the wheel
        self._faces = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=face_confidence
        )

    def face_boxes(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Normalised (x0, y0, x1, y1) of every face MediaPipe finds."""
        result = self._faces.process(np.ascontiguousarray(rgb))
        boxes = []
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            boxes.append((box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height))
        return boxes

    def classify(self, rgb: np.ndarray) -> str:
        return self.classify_with_hand(rgb)[0]

    def classify_with_hand(self, rgb: np.ndarray) -> tuple[str, Hand | None]:
        """The gesture, and the hand it was read from (None when MediaPipe finds no hand)."""
        hand = self.hands.detect(rgb).first
        if hand is None:
            return UNKNOWN, None
        aspect = rgb.shape[1] / rgb.shape[0]
        label = classify_landmarks(hand.landmarks, aspect=aspect)
        if label != "mute":
            return label, hand
        faces = self.face_boxes(rgb)
        if not faces:
            return label, hand  # no face: the pointing-up approximation stands
        tip = hand.landmarks[8, :2]
        nearest = min(faces, key=lambda b: np.hypot((b[0] + b[2]) / 2 - tip[0], (b[1] + b[3]) / 2 - tip[1]))
        return classify_landmarks(hand.landmarks, face_box=nearest, aspect=aspect), hand

    def close(self) -> None:
        self.hands.close()
        self._faces.close()

    def __enter__(self) -> GestureClassifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
