"""COCO-WholeBody: the 133-keypoint order the two-stage method speaks, and how MediaPipe maps onto it.

A pose is a (133, 3) float32 array of x, y in pixels and a COCO visibility v (0: absent, 1: labelled
but not visible, 2: visible). The facts below are from ../shared/docs/TWOSTAGE.md ("Reference facts").
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 133
# nose, l/r eye, l/r ear, l/r shoulder, l/r elbow, l/r wrist, l/r hip, l/r knee, l/r ankle
BODY = slice(0, 17)
FEET = slice(17, 23)  # l big toe, l small toe, l heel, r big toe, r small toe, r heel
FACE = slice(23, 91)  # the 68 iBUG points
LEFT_HAND = slice(91, 112)  # the subject's left hand, 21 points in MediaPipe's order
RIGHT_HAND = slice(112, 133)
HANDS = {"left": LEFT_HAND, "right": RIGHT_HAND}
HAND_INDICES = np.r_[91:133]  # the 42 hand keypoints, left then right
LEFT_WRIST, RIGHT_WRIST = 9, 10  # body indices

# OKS sigmas, in COCO-WholeBody order.
_BODY_SIGMAS = [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089]  # fmt: skip  # noqa: E501
_FEET_SIGMAS = [0.068, 0.066, 0.066, 0.092, 0.094, 0.094]
_FACE_SIGMAS = [
    .042, .043, .044, .043, .040, .035, .031, .025, .020, .023, .029, .032, .037, .038, .043, .041, .045,
    .013, .012, .011, .011, .012, .012, .011, .011, .013, .015, .009, .007, .007, .007, .012, .009, .008,
    .016, .010, .017, .011, .009, .011, .009, .007, .013, .008, .011, .012, .010, .034, .008, .008, .009,
    .008, .008, .007, .010, .008, .009, .009, .009, .007, .007, .008, .011, .008, .008, .008, .010, .008,
]  # fmt: skip
_HAND_SIGMAS = [.029, .022, .035, .037, .047, .026, .025, .024, .035, .018, .024, .022, .026, .017, .021, .021, .032, .020, .019, .022, .031]  # fmt: skip  # noqa: E501
SIGMAS = np.array(_BODY_SIGMAS + _FEET_SIGMAS + _FACE_SIGMAS + _HAND_SIGMAS * 2, dtype=np.float64)
HAND_SIGMAS = np.array(_HAND_SIGMAS * 2, dtype=np.float64)

# MediaPipe Pose landmark index for COCO-WholeBody points 0-22; -1: MediaPipe has no such point.
POSE_FROM_MEDIAPIPE = np.array(
    [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]  # COCO body 0-16
    + [31, -1, 29, 32, -1, 30]  # feet: big toe, small toe (none), heel; left then right
)

# Face mesh (468 points) -> the 68 iBUG points; a pair means the mean of the two mesh points.
FACE_FROM_MESH: list[tuple[int, ...]] = [
    # jaw 0-16
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose 27-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lips 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
]  # fmt: skip

# The 18 OpenPose body keypoints the v1.1 OpenPose ControlNet was trained on, from COCO indices;
# -1 is the neck, the mean of the shoulders (5, 6).
OPENPOSE_FROM_COCO = [0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
OPENPOSE_LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]  # fmt: skip
OPENPOSE_COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]  # fmt: skip
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]  # fmt: skip  # noqa: E501

# Hand points of each finger in MediaPipe's order (the wrist, 0, belongs to every finger's heatmap).
FINGERS = {
    "thumb": (1, 2, 3, 4),
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "pinky": (17, 18, 19, 20),
}


def empty_pose() -> np.ndarray:
    """A (133, 3) pose with every keypoint absent (v = 0)."""
    return np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)


def check_pose(keypoints: np.ndarray, name: str = "pose") -> np.ndarray:
    """`keypoints` as a (133, 3) float32 array, or a HandsynthError naming `name`."""
    from handsynth.errors import HandsynthError

    array = np.asarray(keypoints, dtype=np.float32)
    if array.shape != (NUM_KEYPOINTS, 3) or not np.isfinite(array).all():
        raise HandsynthError(
            f"{name}: a pose is 133 COCO-WholeBody keypoints of [x, y, v], got shape {array.shape}"
            + ("" if np.isfinite(array).all() else " with NaN/inf")
        )
    return array


def hand_box(keypoints: np.ndarray, side: str) -> tuple[float, float, float, float] | None:
    """x0, y0, x1, y1 of one hand's present keypoints (v > 0), or None when the hand is absent."""
    hand = keypoints[HANDS[side]]
    present = hand[hand[:, 2] > 0]
    if len(present) == 0:
        return None
    (x0, y0), (x1, y1) = present[:, :2].min(axis=0), present[:, :2].max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)
