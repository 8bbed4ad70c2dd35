"""Rule-based gesture classifier from MediaPipe hand landmarks: the gesture-accuracy metric.

No reference metric checks that a generated hand shows the gesture asked for; this one does, for
the six Hand1000 gestures (call, four, like, mute, ok, palm), and says "unknown" for anything else.

Every measure is free of image scale and in-plane rotation, and most of the hand's turn in depth:

- a finger's bend is the sum of the turning angles along wrist -> MCP -> PIP -> DIP -> tip, in 3-D;
- distances are in palm sizes (the longest wrist-to-knuckle distance, which stays near the hand's
  length when the palm is foreshortened): the thumb counts as extended when its tip is far from the
  ring-finger knuckle (a thumb folded across the palm, as in `four`, ends there);
- the palm's facing is the angle between its plane (wrist, index and little-finger knuckles) and
  the image plane.

`ok` is thumb-tip-index-tip contact with the other three fingers up, seen from any side.
`palm` and `four` are shown to the camera: a palm turned edge-on, or two palms pressed together
that MediaPipe takes for one hand (`holy`), is not read as either. Two gestures are defined by
direction as well as shape: `like` needs the thumb to point up (a thumb pointing down is
`dislike`), and `mute` needs the index fingertip at the mouth. The mouth is estimated at 70% down
the face box; without a face box, `mute` falls back to a documented approximation: a lone extended
index finger pointing up, the thumb tucked.

An image is read from both hands when MediaPipe finds two. Two hands that touch make a two-hand
gesture (holy, hand_heart, timeout, ...), which is none of the six; two hands apart show the target
gesture one of them makes.

Generated people are whole bodies in rooms, their hands small in the frame, where MediaPipe's palm
detector, which sees the whole image at 192 px, misses them or places them loosely. An image without
a hand found is searched again in four overlapping tiles. A small hand is read three times: from the
whole image, and again from an upscaled crop around it, as it is and mirrored. A target is the answer
only when every reading that finds the hand names it: rather than guess between two targets (or a
target and none), the classifier says "unknown".
"""

from __future__ import annotations

import cv2
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
PALM = (0, 1, 5, 9, 13, 17)  # the palm's outline: wrist, thumb base, the four knuckles
BONES = [(a, b) for chain in FINGER_JOINTS.values() for a, b in zip((WRIST, *chain), chain, strict=False)]
BONES += [(5, 9), (9, 13), (13, 17)]  # across the knuckles

# Total bend, degrees: a straight finger turns < 65, a curled one > 100 (measured on HaGRID);
# in between a finger is "bent" and no target gesture accepts it.
STRAIGHT_MAX_DEG = 65.0
CURLED_MIN_DEG = 100.0
# Thumb tip to ring MCP, in palm sizes: extended thumbs measure 1.2-1.6, folded ones 0.2-0.4.
THUMB_OUT_MIN = 0.95
THUMB_IN_MAX = 0.65
# Thumb tip to index tip, in palm sizes, in the image plane: tips that touch are within a fingertip's
# thickness (about 0.2 palm sizes) plus landmark error. Depth is left out of this one distance: it is
# MediaPipe's least certain coordinate, and tips that meet also meet in projection.
OK_CONTACT_MAX = 0.35
UPRIGHT_MIN_COS = 0.5  # within 60 degrees of straight up
# A palm shown to the camera faces it within 45 degrees (cos 0.71): turned further, it is seen more
# edge-on than face-on, the fingers overlap in the image and cannot be counted.
FACING_MIN_COS = np.cos(np.radians(45.0))
# Two hands touch when their skeletons (the landmarks sit on the bones' axes) come within half a
# palm's thickness on each side (0.15 palm sizes each; a finger is thinner) plus a finger's thickness
# (0.2) of landmark error: 0.5 palm sizes. The same hand found twice has its landmarks within a
# finger's thickness plus that error, 0.3 palm sizes, of their copies on average.
TOUCH_MAX = 0.5
COPY_MAX = 0.3
MOUTH_DEPTH = 0.7  # mouth height, as a fraction of the face box from its top
MOUTH_REACH = 0.5  # index tip to mouth, in face widths
# A hand whose landmark box is under SMALL_HAND_PX on its longer side is read again from a square
# crop reaching CROP_CONTEXT hand sizes past the box on every side (the palm detector finds a hand by
# its arm and surroundings too), upscaled to CROP_SIDE px, MediaPipe's landmark input being 224 px.
SMALL_HAND_PX = 100
CROP_CONTEXT = 1.0
CROP_SIDE = 256
# An image where no hand is found is searched again in four overlapping tiles of TILE of its width and
# height; two hands found in two tiles whose boxes share over half of the smaller are one hand.
TILE = 0.6
TILE_SAME_OVERLAP = 0.5


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


def palm_facing(landmarks: np.ndarray, aspect: float = 1.0) -> float:
    """|cos| of the angle between the palm's normal and the line of sight: 1 face-on, 0 edge-on."""
    points = _as_points(landmarks, aspect)
    normal = np.cross(points[5] - points[WRIST], points[17] - points[WRIST])
    return float(abs(normal[2]) / max(np.linalg.norm(normal), 1e-12))


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
    """The gesture one hand's 21 landmarks show, or "unknown".

    `landmarks`: (21, 3) or (21, 2), x and y normalised to the image. `face_box`: (x0, y0, x1, y1)
    normalised like the landmarks. `aspect`: image width / height.
    """
    points = _as_points(landmarks, aspect)
    s = finger_states(landmarks, aspect)
    thumb, fingers = s["thumb"], (s["index"], s["middle"], s["ring"], s["pinky"])
    contact = np.linalg.norm(points[4, :2] - points[8, :2]) / palm_size(points) < OK_CONTACT_MAX
    # ok: the other three fingers stand up, one of them perhaps sagging into a bend in a relaxed hand
    if contact and CURLED not in fingers[1:] and fingers[1:].count(EXTENDED) >= 2:
        return "ok"
    if fingers == (EXTENDED,) * 4:
        if palm_facing(landmarks, aspect) < FACING_MIN_COS:
            return UNKNOWN
        return "palm" if thumb == EXTENDED else "four" if thumb == CURLED else UNKNOWN
    if thumb == EXTENDED and fingers == (CURLED, CURLED, CURLED, EXTENDED):
        return "call"
    # like: a fist (a loose one may leave one finger reading as bent) with the thumb out and up
    if thumb == EXTENDED and EXTENDED not in fingers and fingers.count(CURLED) >= 3:
        return "like" if _points_up(points, 2, 4) else UNKNOWN
    if fingers == (EXTENDED, CURLED, CURLED, CURLED):
        if face_box is not None:  # at the lips the thumb may rest anywhere
            return "mute" if _at_mouth(points, face_box, aspect) else UNKNOWN
        # without a face, a lone index up with the thumb tucked (an L with the thumb out is not it)
        return "mute" if thumb != EXTENDED and _points_up(points, 5, 8) else UNKNOWN
    return UNKNOWN


def _distance_to_hand(points: np.ndarray, other: np.ndarray) -> float:
    """The least image-plane distance from any of `points` to the skeleton of `other`: its bones and,
    as a surface, its palm."""
    p = points[:, None, :2]
    a, b = other[[i for i, _ in BONES], :2], other[[j for _, j in BONES], :2]
    t = np.clip(np.sum((p - a) * (b - a), axis=-1) / np.maximum(np.sum((b - a) ** 2, axis=-1), 1e-12), 0, 1)
    nearest = float(np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1).min())
    outline = cv2.convexHull(other[list(PALM), :2].astype(np.float32))
    inside = any(cv2.pointPolygonTest(outline, (float(x), float(y)), False) >= 0 for x, y in points[:, :2])
    return 0.0 if inside else nearest


def two_hands(first: Hand, second: Hand, aspect: float = 1.0) -> str:
    """How two detected hands relate: "same" (one hand found twice), "touching" or "apart"."""
    a, b = _as_points(first.landmarks, aspect), _as_points(second.landmarks, aspect)
    scale = min(palm_size(a), palm_size(b))
    copy = float(np.linalg.norm(a[:, :2] - b[:, :2], axis=1).mean()) / scale < COPY_MAX
    if copy and first.handedness == second.handedness:
        return "same"  # two palms pressed together are a left and a right hand
    gap = min(_distance_to_hand(a, b), _distance_to_hand(b, a)) / scale
    return "touching" if gap < TOUCH_MAX else "apart"


def _is_small(hand: Hand) -> bool:
    x0, y0, x1, y1 = hand.box
    return max(x1 - x0, y1 - y0) < SMALL_HAND_PX


def _from_window(landmarks: np.ndarray, window: tuple[int, int, int, int], width: int, height: int):
    """Landmarks normalised to a window (left, top, window width, window height) of a width x height
    image, normalised to the image (z, on x's scale, as x)."""
    left, top, window_w, window_h = window
    points = np.array(landmarks, dtype=np.float64)
    points[:, 0] = (points[:, 0] * window_w + left) / width
    points[:, 1] = (points[:, 1] * window_h + top) / height
    points[:, 2] *= window_w / width
    return points


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """The share of the smaller box that the two boxes have in common."""
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(inter_w, 0) * max(inter_h, 0) / max(smaller, 1)


class GestureClassifier:
    """Image -> gesture, from up to two MediaPipe hands, and for `mute` the face nearest the index tip."""

    def __init__(
        self, min_detection_confidence: float = 0.5, model_complexity: int = 1, face_confidence: float = 0.5
    ) -> None:
        mp = import_mediapipe()

        self.hands = HandDetector(
            max_num_hands=2,
            min_detection_confidence=min_detection_confidence,
            model_complexity=model_complexity,
        )
        # the short-range face model (faces within about 2 m), then the full-range one (within 5 m:
        # whole people in a room); both ship with the wheel
        self._faces = [
            mp.solutions.face_detection.FaceDetection(
                model_selection=m, min_detection_confidence=face_confidence
            )
            for m in (0, 1)
        ]

    def face_boxes(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Normalised (x0, y0, x1, y1) of every face MediaPipe finds: with the short-range model, or when
        it finds none, the full-range one."""
        for model in self._faces:
            detections = model.process(np.ascontiguousarray(rgb)).detections or []
            if detections:
                boxes = [d.location_data.relative_bounding_box for d in detections]
                return [(b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height) for b in boxes]
        return []

    def classify(self, rgb: np.ndarray) -> str:
        return self.classify_with_hand(rgb)[0]

    def classify_with_hand(self, rgb: np.ndarray) -> tuple[str, Hand | None]:
        """The gesture, and the hand it was read from (the first hand when it is "unknown"; None when
        MediaPipe finds no hand, in the whole image or its tiles)."""
        hands = self.hands.detect(rgb).hands or self._search_tiles(rgb)
        if not hands:
            return UNKNOWN, None
        aspect = rgb.shape[1] / rgb.shape[0]
        if len(hands) == 2:
            relation = two_hands(hands[0], hands[1], aspect)
            if relation == "touching":
                return UNKNOWN, hands[0]  # a two-hand gesture: none of the six
            if relation == "same":
                hands = hands[:1]
        labels = [self._hand_label(rgb, hand, aspect) for hand in hands]
        targets = {label for label in labels if label != UNKNOWN}
        if len(targets) != 1:  # no target, or two hands showing different ones
            return UNKNOWN, hands[0]
        label = targets.pop()
        return label, hands[labels.index(label)]

    def _search_tiles(self, rgb: np.ndarray) -> list[Hand]:
        """Up to two hands found in the image's four overlapping tiles (TILE of its sides each), where
        a hand is a larger part of the palm detector's view; a hand found in two tiles counts once."""
        height, width = rgb.shape[:2]
        tile_w, tile_h = round(width * TILE), round(height * TILE)
        found: list[Hand] = []
        for top in (0, height - tile_h):
            for left in (0, width - tile_w):
                tile = np.ascontiguousarray(rgb[top : top + tile_h, left : left + tile_w])
                for hand in self.hands.detect(tile).hands:
                    points = _from_window(hand.landmarks, (left, top, tile_w, tile_h), width, height)
                    x0, y0, x1, y1 = hand.box
                    box = (x0 + left, y0 + top, x1 + left, y1 + top)
                    found.append(Hand(points, hand.handedness, hand.score, box))
        kept: list[Hand] = []
        for hand in sorted(found, key=lambda h: -h.score):
            if not any(_overlap(hand.box, other.box) > TILE_SAME_OVERLAP for other in kept):
                kept.append(hand)
        return kept[:2]

    def _hand_label(self, rgb: np.ndarray, hand: Hand, aspect: float) -> str:
        """The hand's gesture; a small hand's only when all its readings agree."""
        if not _is_small(hand):
            return self._reading(rgb, hand, aspect)
        readings = [hand, *(self._reread(rgb, hand, mirrored) for mirrored in (False, True))]
        labels = {self._reading(rgb, h, aspect) for h in readings if h is not None}
        return labels.pop() if len(labels) == 1 else UNKNOWN  # readings that differ: no guess

    def _reread(self, rgb: np.ndarray, hand: Hand, mirrored: bool) -> Hand | None:
        """The hand's landmarks from an upscaled crop around it (mirrored before detection, and the
        landmarks back after), in the whole image's coordinates; None when the crop shows no hand."""
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = hand.box
        side = max(1, round(max(x1 - x0, y1 - y0) * (1 + 2 * CROP_CONTEXT)))
        left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
        padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_REPLICATE)  # at the image edge
        crop = padded[top + side : top + 2 * side, left + side : left + 2 * side]
        crop = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_CUBIC)
        found = self.hands.detect(np.ascontiguousarray(crop[:, ::-1] if mirrored else crop)).hands
        if not found:
            return None
        nearest = min(found, key=lambda h: np.hypot(*(h.landmarks[:, :2].mean(axis=0) - 0.5)))
        points = nearest.landmarks.copy()
        if mirrored:
            points[:, 0] = 1 - points[:, 0]  # depth is the same in a mirror
        points = _from_window(points, (left, top, side, side), width, height)
        return Hand(landmarks=points, handedness=hand.handedness, score=nearest.score, box=hand.box)

    def _reading(self, rgb: np.ndarray, hand: Hand, aspect: float) -> str:
        states = finger_states(hand.landmarks, aspect)
        lone_index = [states[f] for f in ("index", "middle", "ring", "pinky")] == [EXTENDED, *[CURLED] * 3]
        faces = self.face_boxes(rgb) if lone_index else []  # only `mute` needs the face
        if not faces:
            return classify_landmarks(hand.landmarks, aspect=aspect)  # without one: the pointing-up rule
        tip = hand.landmarks[8, :2]
        nearest = min(faces, key=lambda b: np.hypot((b[0] + b[2]) / 2 - tip[0], (b[1] + b[3]) / 2 - tip[1]))
        return classify_landmarks(hand.landmarks, face_box=nearest, aspect=aspect)

    def close(self) -> None:
        self.hands.close()
        for model in self._faces:
            model.close()

    def __enter__(self) -> GestureClassifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
