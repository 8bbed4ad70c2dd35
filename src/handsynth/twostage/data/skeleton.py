"""OpenPose condition images drawn from a 133-keypoint pose, in the format the v1.1 OpenPose ControlNet
was trained on (TWOSTAGE.md, "The OpenPose condition image"); drawn here with cv2, not controlnet_aux.

Sizes are given at 512 px and scale with the image's shorter side.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import (
    FACE,
    HAND_EDGES,
    HANDS,
    OPENPOSE_COLORS,
    OPENPOSE_FROM_COCO,
    OPENPOSE_LIMBS,
    check_pose,
)

VARIANTS = ("body", "body_hands", "full")  # body; body and hands; body, hands and face
REFERENCE_SIZE = 512
LIMB_HALF_WIDTH, BODY_RADIUS, HAND_LINE, HAND_RADIUS, FACE_RADIUS = 4, 4, 2, 4, 3
LIMB_SHADE = 0.6  # limbs are drawn at 60% of their colour, joints at full colour
HAND_POINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)


def openpose_body(pose: np.ndarray) -> np.ndarray:
    """(18, 3): the OpenPose body keypoints x, y, v from COCO-WholeBody (the neck is the shoulders' mean)."""
    body = np.zeros((18, 3), dtype=np.float32)
    for i, coco in enumerate(OPENPOSE_FROM_COCO):
        if coco >= 0:
            body[i] = pose[coco]
        elif pose[5, 2] > 0 and pose[6, 2] > 0:
            body[i, :2] = (pose[5, :2] + pose[6, :2]) / 2
            body[i, 2] = min(pose[5, 2], pose[6, 2])
    return body


def _scaled(size_at_512: int, scale: float) -> int:
    return max(1, round(size_at_512 * scale))


def draw_openpose(pose: np.ndarray, width: int, height: int, variant: str = "full") -> np.ndarray:
    """(height, width, 3) uint8 RGB on black: body limbs and joints, then hands, then face points."""
    if variant not in VARIANTS:
        raise HandsynthError(f"unknown skeleton variant '{variant}'; use one of {', '.join(VARIANTS)}")
    pose = check_pose(pose)
    scale = min(width, height) / REFERENCE_SIZE
    canvas = np.zeros((height, width, 3), dtype=np.uint8)

    body = openpose_body(pose)
    half_width = _scaled(LIMB_HALF_WIDTH, scale)
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        if body[a, 2] <= 0 or body[b, 2] <= 0:
            continue
        (xa, ya), (xb, yb) = body[a, :2], body[b, :2]
        length = float(np.hypot(xa - xb, ya - yb))
        angle = float(np.degrees(np.arctan2(ya - yb, xa - xb)))
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), half_width), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, OPENPOSE_COLORS[i])
    canvas = (canvas * LIMB_SHADE).astype(np.uint8)
    for i, (x, y, v) in enumerate(body):
        if v > 0:
            radius = _scaled(BODY_RADIUS, scale)
            cv2.circle(canvas, (int(x), int(y)), radius, OPENPOSE_COLORS[i], thickness=-1)

    if variant in ("body_hands", "full"):
        line, radius = _scaled(HAND_LINE, scale), _scaled(HAND_RADIUS, scale)
        for side in HANDS.values():
            hand = pose[side]
            for e, (a, b) in enumerate(HAND_EDGES):
                if hand[a, 2] > 0 and hand[b, 2] > 0:
                    r, g, bl = colorsys.hsv_to_rgb(e / len(HAND_EDGES), 1.0, 1.0)
                    color = (round(r * 255), round(g * 255), round(bl * 255))
                    cv2.line(canvas, _point(hand[a]), _point(hand[b]), color, thickness=line)
            for point in hand:
                if point[2] > 0:
                    cv2.circle(canvas, _point(point), radius, HAND_POINT_COLOR, thickness=-1)

    if variant == "full":
        radius = _scaled(FACE_RADIUS, scale)
        for point in pose[FACE]:
            if point[2] > 0:
                cv2.circle(canvas, _point(point), radius, FACE_COLOR, thickness=-1)
    return canvas


def _point(keypoint: np.ndarray) -> tuple[int, int]:
    return int(keypoint[0]), int(keypoint[1])
