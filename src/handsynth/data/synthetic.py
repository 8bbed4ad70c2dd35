"""The embedded default data: rendered figures making gestures, written in HaGRID v2 layout.

Each image is a person (head, torso, a raised arm) in front of a plain room, holding up a hand in
the gesture's pose. The hand is a 21-joint kinematic model: per-gesture finger flexion angles,
with random rotation, scale, skin tone, clothing and background. Its joints are the MediaPipe
landmarks, so the annotation carries exactly the landmarks that were drawn.

Everything is a pure function of (seed, gesture, index): any subset, at any size, is reproducible.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handsynth import files
from handsynth.data.gestures import NO_GESTURE, check_gesture
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

SYNTHETIC_GESTURES = ["call", "four", "like", "mute", "ok", "palm"]
_KEY_NAMESPACE = uuid.UUID("6f1d3a52-8c1b-4f6e-9d0e-5b3c1a7e2f10")
_RENDER_SIZE = 512  # drawn at this size (or the output size if larger), then resampled
_TUBE_STROKES = 6

# Joint chains in MediaPipe order: thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20.
FINGERS = {"thumb": [1, 2, 3, 4], "index": [5, 6, 7, 8], "middle": [9, 10, 11, 12],
           "ring": [13, 14, 15, 16], "pinky": [17, 18, 19, 20]}  # fmt: skip
# Hand frame: x towards the thumb side, y along the fingers, z out of the palm; 1.0 ~ 19 cm.
_MCP = {"index": (0.10, 0.42), "middle": (0.0, 0.45), "ring": (-0.09, 0.42), "pinky": (-0.17, 0.36)}
_SEGMENTS = {"index": (0.22, 0.13, 0.10), "middle": (0.25, 0.15, 0.11), "ring": (0.23, 0.14, 0.10),
             "pinky": (0.18, 0.10, 0.09), "thumb": (0.17, 0.14, 0.11)}  # fmt: skip
_SPREAD = {"index": 7.0, "middle": 0.0, "ring": -7.0, "pinky": -16.0}  # degrees, in the palm plane
_WRIST_SIDES = np.array([[0.13, 0.03, 0.0], [-0.14, 0.05, 0.0]])  # radial, ulnar
_WIDTH = {"thumb": 0.095, "index": 0.085, "middle": 0.088, "ring": 0.082, "pinky": 0.07}
_EXTENDED = (4.0, 6.0, 4.0)
_CURLED = (80.0, 100.0, 55.0)

# Per gesture: finger flexion (MCP, PIP, DIP) in degrees, the thumb pose, and the hand's roll.
# Thumb: (yaw in the palm plane from +y towards +x, elevation out of the palm, MCP flex, IP flex).
_THUMB_OPEN = (55.0, 25.0, 5.0, 5.0)
_THUMB_TUCKED = (-25.0, 55.0, 35.0, 40.0)  # curled over the middle finger
_THUMB_FOLDED = (10.0, 30.0, 30.0, 30.0)  # bent in front of the palm
_THUMB_SIDEWAYS = (80.0, 10.0, 0.0, 0.0)
POSES = {
    "palm": {"fingers": dict.fromkeys(_SPREAD, _EXTENDED), "thumb": _THUMB_OPEN, "roll": 0.0},
    "four": {"fingers": dict.fromkeys(_SPREAD, _EXTENDED), "thumb": _THUMB_FOLDED, "roll": 0.0},
    "call": {
        "fingers": {"index": _CURLED, "middle": _CURLED, "ring": _CURLED, "pinky": _EXTENDED},
        "thumb": _THUMB_SIDEWAYS,
        "roll": -60.0,
    },
    "like": {"fingers": dict.fromkeys(_SPREAD, _CURLED), "thumb": _THUMB_SIDEWAYS, "roll": -85.0},
    "mute": {
        "fingers": {"index": _EXTENDED, "middle": _CURLED, "ring": _CURLED, "pinky": _CURLED},
        "thumb": _THUMB_TUCKED,
        "roll": 0.0,
    },
    "ok": {
        "fingers": {
            "index": (35.0, 70.0, 45.0),
            "middle": _EXTENDED,
            "ring": _EXTENDED,
            "pinky": _EXTENDED,
        },  # fmt: skip
        "thumb": None,  # the thumb tip meets the index tip
        "roll": 0.0,
    },
    "idle": {"fingers": dict.fromkeys(_SPREAD, (30.0, 40.0, 20.0)), "thumb": _THUMB_OPEN, "roll": 180.0},
}

_SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 135), (198, 134, 96), (161, 102, 70), (110, 70, 48)]
_COLOURS = {
    "red": (196, 40, 44), "blue": (40, 80, 190), "green": (46, 140, 70), "yellow": (228, 200, 60),
    "black": (30, 30, 34), "white": (236, 236, 232), "grey": (128, 128, 134), "pink": (232, 140, 170),
    "purple": (120, 60, 150), "orange": (235, 130, 40), "brown": (120, 80, 50), "maroon": (120, 30, 40),
}  # fmt: skip
_WALLS = {"white": (225, 222, 214), "beige": (214, 200, 170), "grey": (160, 162, 166),
          "blue": (150, 175, 205), "green": (165, 190, 160), "purple": (170, 150, 190)}  # fmt: skip
_HAIR = [(30, 22, 18), (80, 50, 30), (150, 110, 60), (200, 170, 110), (120, 120, 120)]
_GARMENTS = ["shirt", "t-shirt", "sweater", "jacket", "dress", "hoodie"]
_PLACES = ["in a room", "in front of a {wall} wall", "in a living room", "in front of a door", "in an office"]


@dataclass
class Subject:
    """A person's fixed appearance; several images share one, as HaGRID's user_id does."""

    user_id: str
    woman: bool
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    clothing: str
    garment: str
    right_handed: bool


def _subject(seed: int, gesture: str, number: int) -> Subject:
    rng = np.random.default_rng([seed, SYNTHETIC_GESTURES.index(gesture), number, 1])
    woman = bool(rng.random() < 0.5)
    garments = _GARMENTS if woman else [g for g in _GARMENTS if g != "dress"]
    return Subject(
        user_id=f"synthetic-{gesture}-{number:04d}",
        woman=woman,
        skin=_SKIN[rng.integers(len(_SKIN))],
        hair=_HAIR[rng.integers(len(_HAIR))],
        clothing=list(_COLOURS)[rng.integers(len(_COLOURS))],
        garment=garments[rng.integers(len(garments))],
        right_handed=bool(rng.random() < 0.8),
    )


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _chain(base: np.ndarray, direction: np.ndarray, normal: np.ndarray, lengths, flexion) -> list:
    """Joints along a finger: each flexion bends the remaining segments from `direction` to `normal`."""
    joints, point, angle = [], base, 0.0
    for length, flex in zip(lengths, flexion, strict=True):
        angle += np.radians(flex)
        point = point + length * (np.cos(angle) * direction + np.sin(angle) * normal)
        joints.append(point)
    return joints


def hand_joints(gesture_pose: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """21 joints of a right hand in the hand frame; `rng` adds natural variation to every angle."""
    noise = 0.0 if rng is None else 1.0
    rng = rng or np.random.default_rng(0)
    joints = np.zeros((21, 3))
    normal = np.array([0.0, 0.0, 1.0])
    for name, (mcp, *rest) in FINGERS.items():
        if name == "thumb":
            continue
        spread = np.radians(_SPREAD[name] + noise * rng.normal(0, 2.5))
        direction = np.array([np.sin(spread), np.cos(spread), 0.0])
        flexion = [f + noise * rng.normal(0, 4) for f in gesture_pose["fingers"][name]]
        joints[mcp] = [*_MCP[name], 0.0]
        joints[rest] = _chain(joints[mcp], direction, normal, _SEGMENTS[name], flexion)
    cmc = np.array([0.11, 0.09, 0.03])
    joints[1] = cmc
    if gesture_pose["thumb"] is None:  # ok: a smooth arc from the CMC to the index fingertip
        target = joints[8] + np.array([0.0, -0.015, 0.02])
        control = cmc + np.array([0.22, 0.18, 0.12])
        for joint, s in zip((2, 3, 4), (0.45, 0.78, 1.0), strict=True):
            joints[joint] = (1 - s) ** 2 * cmc + 2 * (1 - s) * s * control + s**2 * target
    else:
        yaw, elevation, mcp_flex, ip_flex = (v + noise * rng.normal(0, 3) for v in gesture_pose["thumb"])
        in_plane = np.array([np.sin(np.radians(yaw)), np.cos(np.radians(yaw)), 0.0])
        direction = np.cos(np.radians(elevation)) * in_plane + np.sin(np.radians(elevation)) * normal
        bend = np.cross(direction, np.cross(normal, direction))  # bends the thumb towards the palm
        bend = bend / (np.linalg.norm(bend) + 1e-9)
        joints[2:5] = _chain(cmc, direction, bend, _SEGMENTS["thumb"], (0.0, mcp_flex, ip_flex))
    return joints


@dataclass
class _Scene:
    wall_rgb: np.ndarray
    floor_rgb: np.ndarray
    place: str


def _scene(rng: np.random.Generator) -> _Scene:
    wall = list(_WALLS)[rng.integers(len(_WALLS))]
    wall_rgb = np.array(_WALLS[wall], float) * rng.uniform(0.85, 1.05)
    floor_rgb = np.array(list(_COLOURS.values())[rng.integers(len(_COLOURS))], float) * 0.6
    place = _PLACES[rng.integers(len(_PLACES))].format(wall=wall)
    return _Scene(np.clip(wall_rgb, 0, 255), floor_rgb, place)


def _draw_background(canvas: np.ndarray, scene: _Scene, rng: np.random.Generator) -> None:
    s = canvas.shape[0]
    shade = np.linspace(1.05, 0.85, s)[:, None, None]
    canvas[:] = np.clip(scene.wall_rgb * shade, 0, 255)
    floor = int(s * rng.uniform(0.82, 0.92))
    canvas[floor:] = scene.floor_rgb
    for _ in range(rng.integers(0, 3)):  # furniture, frames, a door
        x0, y0 = int(rng.uniform(0, 0.8) * s), int(rng.uniform(0.05, 0.6) * s)
        w, h = int(rng.uniform(0.08, 0.25) * s), int(rng.uniform(0.1, 0.35) * s)
        colour = tuple(int(c) for c in np.array(list(_COLOURS.values())[rng.integers(len(_COLOURS))]) * 0.8)
        cv2.rectangle(canvas, (x0, y0), (x0 + w, y0 + h), colour, -1, cv2.LINE_AA)


def _tube(canvas: np.ndarray, p: np.ndarray, q: np.ndarray, width: float, skin: np.ndarray) -> None:
    """A finger segment as a shaded cylinder: concentric strokes, dark rim to lit centre."""
    p, q = tuple(int(round(v)) for v in p[:2]), tuple(int(round(v)) for v in q[:2])
    for k in range(_TUBE_STROKES):
        colour = np.clip(skin * (0.55 + 0.5 * (k / _TUBE_STROKES) ** 0.7), 0, 255)
        thickness = max(1, int(width * (1 - k / _TUBE_STROKES)))
        cv2.line(canvas, p, q, tuple(int(c) for c in colour), thickness, cv2.LINE_AA)


def _draw_hand(canvas: np.ndarray, points: np.ndarray, wrist_sides: np.ndarray, scale: float,
               skin: np.ndarray, hand_mask: np.ndarray) -> None:  # fmt: skip
    """Painter's algorithm over the palm and the finger segments, far to near (z towards the viewer).

    Every pixel drawn is also set in `hand_mask` (uint8, 255 = hand, anti-aliased as the drawing).
    """
    palm = np.vstack([wrist_sides, points[[1, 2, 5, 9, 13, 17]]])
    parts = [(palm[:, 2].mean(), "palm", palm)]
    for name, chain in FINGERS.items():
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            parts.append(((points[a, 2] + points[b, 2]) / 2, name, points[[a, b]]))
    for _, name, pts in sorted(parts, key=lambda part: part[0]):
        if name != "palm":
            _tube(canvas, pts[0], pts[1], scale * _WIDTH[name], skin)
            _line_footprint(hand_mask, pts[0], pts[1], scale * _WIDTH[name], 255)
            continue
        hull = cv2.convexHull(pts[:, :2].astype(np.float32)).astype(np.int32)
        mask = np.zeros(canvas.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, hull, 255, cv2.LINE_AA)
        # lit in the middle, darker towards the edges, like the fingers
        core = cv2.erode(mask, np.ones((max(1, int(scale * 0.06)),) * 2, np.uint8))
        light = cv2.GaussianBlur(core.astype(np.float32) / 255, (0, 0), scale * 0.04)
        lit = np.clip(skin[None, None] * (0.72 + 0.36 * light[..., None]), 0, 255)
        alpha = mask[..., None].astype(np.float32) / 255
        canvas[:] = (canvas * (1 - alpha) + lit * alpha).astype(np.uint8)
        np.maximum(hand_mask, mask, out=hand_mask)


def _pose_hand(joints: np.ndarray, roll: float, yaw: float, pitch: float, mirror: bool) -> np.ndarray:
    """Hand frame to camera frame: x right, y down, z towards the camera (palm faces the camera)."""
    if mirror:  # a left hand is the mirror image of a right one
        joints = joints * np.array([-1.0, 1.0, 1.0])
        roll = -roll
    flip = np.diag([1.0, -1.0, 1.0])  # y up in the hand frame, down in the image
    rotation = _rotation("z", -roll) @ _rotation("y", yaw) @ _rotation("x", pitch)
    return (flip @ rotation @ joints.T).T


def _posed_hand(joints, roll, yaw, pitch, mirror, scale) -> tuple[np.ndarray, np.ndarray]:
    """Scaled camera-frame joints, and the two sides of the wrist that give the palm its width."""
    posed = _pose_hand(np.vstack([joints, _WRIST_SIDES]), roll, yaw, pitch, mirror) * scale
    return posed[:21], posed[21:]


def _line_footprint(mask: np.ndarray, p: np.ndarray, q: np.ndarray, width: float, value: int) -> None:
    """The pixels `_tube` covers (its widest stroke), set to `value` in `mask`."""
    p, q = tuple(int(round(v)) for v in p[:2]), tuple(int(round(v)) for v in q[:2])
    cv2.line(mask, p, q, value, max(1, int(width)), cv2.LINE_AA)


def _wrist_cap(hand_mask: np.ndarray, wrist: np.ndarray, forearm_width: float) -> None:
    """The wrist joint is the forearm's rounded end, under the palm's edge: the hand's mask takes that
    end (a disc of the forearm's width, all of it drawn skin), as a mask prompted at the wrist would."""
    centre = tuple(int(round(v)) for v in wrist[:2])
    cv2.circle(hand_mask, centre, max(1, int(forearm_width / 2)), 255, -1, cv2.LINE_AA)


def _draw_arm(canvas, shoulder, elbow, wrist, width: float, clothing, skin: np.ndarray,
              hand_mask: np.ndarray) -> None:  # fmt: skip
    """Sleeve from shoulder to elbow, bare forearm from elbow to wrist; what it covers of a hand drawn
    before it leaves `hand_mask`."""
    shoulder, elbow, wrist = (tuple(int(v) for v in p[:2]) for p in (shoulder, elbow, wrist))
    cv2.line(canvas, shoulder, elbow, tuple(int(c) for c in np.array(clothing) * 0.7), int(width * 1.3) + 4,
             cv2.LINE_AA)  # fmt: skip
    cv2.line(canvas, shoulder, elbow, clothing, int(width * 1.3), cv2.LINE_AA)
    _tube(canvas, np.array(elbow), np.array(wrist), width, skin)
    # what the anti-aliased strokes touch, and a pixel more: no arm pixel stays in the hand's mask
    cv2.line(hand_mask, shoulder, elbow, 0, int(width * 1.3) + 6)
    _line_footprint(hand_mask, np.array(elbow), np.array(wrist), width + 2, 0)


def _check_synthetic(gesture: str) -> None:
    check_gesture(gesture)
    if gesture not in SYNTHETIC_GESTURES:
        raise HandsynthError(
            f"the synthetic dataset has no pose for '{gesture}'; it renders: {', '.join(SYNTHETIC_GESTURES)}"
        )


@dataclass
class Figure:
    """One render: the image, its HaGRID v2 annotation entry, and what the two-stage method needs."""

    image: Image.Image
    entry: dict
    keypoints: np.ndarray  # (133, 3) COCO-WholeBody x, y in the image's pixels, v (0: not drawn)
    hand_mask: np.ndarray  # (size, size) bool: the pixels of the drawn hands, exactly


def render_sample(seed: int, gesture: str, index: int, size: int) -> tuple[Image.Image, dict]:
    """One image and its HaGRID v2 annotation entry (plus `hand_landmarks_3d` and `caption`)."""
    figure = render_figure(seed, gesture, index, size)
    return figure.image, figure.entry


def render_figure(seed: int, gesture: str, index: int, size: int) -> Figure:
    """`render_sample`, with the figure's whole-body keypoints and its exact hand mask."""
    _check_synthetic(gesture)
    rng = np.random.default_rng([seed, SYNTHETIC_GESTURES.index(gesture), index, 0])
    subject = _subject(seed, gesture, int(rng.integers(0, 8)))
    s = max(size, _RENDER_SIZE)
    canvas = np.zeros((s, s, 3), np.uint8)
    scene = _scene(rng)
    _draw_background(canvas, scene, rng)
    skin = np.array(subject.skin, float)
    clothing = _COLOURS[subject.clothing]
    hand_mask = np.zeros((s, s), np.uint8)
    joints: dict[int, np.ndarray] = {}  # COCO-WholeBody index -> (x, y) of what was drawn there

    # body: torso, neck, head with hair and a face
    cx = s * rng.uniform(0.45, 0.55)
    head_y, head_r = s * rng.uniform(0.24, 0.3), s * rng.uniform(0.085, 0.1)
    shoulder_y = head_y + head_r * 2.0
    shoulder_w = head_r * rng.uniform(2.0, 2.4)
    torso = np.array([[cx - shoulder_w, shoulder_y], [cx + shoulder_w, shoulder_y],
                      [cx + shoulder_w * 0.95, s], [cx - shoulder_w * 0.95, s]], np.int32)  # fmt: skip
    cv2.fillConvexPoly(canvas, torso, clothing, cv2.LINE_AA)
    cv2.line(canvas, (int(cx), int(head_y)), (int(cx), int(shoulder_y)), tuple(subject.skin),
             int(head_r * 0.8), cv2.LINE_AA)  # fmt: skip
    if subject.woman:
        cv2.ellipse(canvas, (int(cx), int(head_y + head_r * 0.3)), (int(head_r * 1.25), int(head_r * 1.5)),
                    0, 0, 360, subject.hair, -1, cv2.LINE_AA)  # fmt: skip
    cv2.ellipse(canvas, (int(cx), int(head_y)), (int(head_r * 0.85), int(head_r)), 0, 0, 360,
                tuple(subject.skin), -1, cv2.LINE_AA)  # fmt: skip
    cv2.ellipse(canvas, (int(cx), int(head_y - head_r * 0.55)), (int(head_r * 0.9), int(head_r * 0.55)),
                0, 180, 360, subject.hair, -1, cv2.LINE_AA)  # fmt: skip
    for side in (-1, 1):
        eye = (int(cx + side * head_r * 0.35), int(head_y - head_r * 0.1))
        cv2.circle(canvas, eye, max(1, int(head_r * 0.09)), (40, 30, 30), -1, cv2.LINE_AA)
        joints[_LEFT_EYE if side == 1 else _RIGHT_EYE] = np.array(eye, float)  # facing us: left is right
    mouth = np.array([cx, head_y + head_r * 0.5])
    cv2.ellipse(canvas, tuple(int(v) for v in mouth), (int(head_r * 0.28), int(head_r * 0.1)), 0, 0, 180,
                (150, 60, 60), max(1, int(head_r * 0.06)), cv2.LINE_AA)  # fmt: skip

    # the gesturing hand, posed in 3-D and projected orthographically
    pose = POSES[gesture]
    side = 1 if subject.right_handed else -1  # facing the camera, a right hand is on the image's left
    hand_scale = s * rng.uniform(0.42, 0.52)
    points, wrist_sides = _posed_hand(
        hand_joints(pose, rng),
        roll=pose["roll"] + rng.normal(0, 12),
        yaw=rng.normal(0, 15),
        pitch=rng.normal(0, 10),
        mirror=not subject.right_handed,
        scale=hand_scale,
    )
    if gesture == "mute":  # the index fingertip rests on the lips
        offset = np.array([*mouth, 0.0]) - points[8] + np.array([0, head_r * 0.1, 0])
    else:
        wrist = np.array([cx - side * shoulder_w * rng.uniform(0.9, 1.4), s * rng.uniform(0.66, 0.76)])
        offset = np.array([*wrist, 0.0]) - points[0]
    # keep the whole hand in frame
    lo, hi = (points[:, :2] + offset[:2]).min(0), (points[:, :2] + offset[:2]).max(0)
    offset[:2] += np.clip(s * 0.04 - lo, 0, None) - np.clip(hi - s * 0.96, 0, None)
    points, wrist_sides = points + offset, wrist_sides + offset
    shoulder = np.array([cx - side * shoulder_w * 0.85, shoulder_y + head_r * 0.3])
    elbow = np.array([shoulder[0] - side * head_r * 0.6, s * 0.98])
    _draw_arm(canvas, shoulder, elbow, points[0], hand_scale * 0.26, clothing, skin, hand_mask)
    _draw_hand(canvas, points, wrist_sides, hand_scale, skin, hand_mask)
    _wrist_cap(hand_mask, points[0], hand_scale * 0.26)
    near, far = ("right", "left") if subject.right_handed else ("left", "right")
    other_shoulder = np.array([cx + side * shoulder_w * 0.85, shoulder_y + head_r * 0.3])
    joints.update({_ARM[near][0]: shoulder, _ARM[near][1]: elbow, _ARM[far][0]: other_shoulder})
    hand_points = {near: points}

    hands = [(gesture, points)]
    if rng.random() < 0.3:  # the other hand hangs idle at the side, labelled no_gesture
        idle_scale = hand_scale * 0.8
        idle, idle_sides = _posed_hand(hand_joints(POSES["idle"], rng), 180 + rng.normal(0, 10), 0, 0,
                                       subject.right_handed, idle_scale)  # fmt: skip
        offset = np.array([cx + side * shoulder_w * 1.2, s * 0.84, 0.0]) - idle[0]
        idle, idle_sides = idle + offset, idle_sides + offset
        other_elbow = (other_shoulder + idle[0, :2]) / 2
        _draw_arm(canvas, other_shoulder, other_elbow, idle[0], idle_scale * 0.26, clothing, skin, hand_mask)
        _draw_hand(canvas, idle, idle_sides, idle_scale, skin, hand_mask)
        _wrist_cap(hand_mask, idle[0], idle_scale * 0.26)
        joints[_ARM[far][1]] = other_elbow
        hand_points[far] = idle
        hands.append((NO_GESTURE, idle))

    # a camera's softness and sensor noise: flat cartoon edges are far from HaGRID's photos
    canvas = cv2.GaussianBlur(canvas, (0, 0), s / 420)
    canvas = np.clip(canvas + rng.normal(0, 3.5, canvas.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas)
    if s != size:
        image = image.resize((size, size), Image.LANCZOS)
        hand_mask = cv2.resize(hand_mask, (size, size), interpolation=cv2.INTER_AREA)
    return Figure(
        image=image,
        entry=_annotation(hands, s, subject, scene),
        keypoints=_wholebody(joints, hand_points, size / s, size),
        hand_mask=hand_mask >= 128,
    )


# COCO-WholeBody indices of what the renderer draws: eyes, and shoulder and elbow per side (the wrists
# are the hands' point 0). Nose, ears, face, hips, legs and feet are not drawn and keep v = 0.
_LEFT_EYE, _RIGHT_EYE = 1, 2
_ARM = {"left": (5, 7), "right": (6, 8)}  # shoulder, elbow
_WRIST = {"left": 9, "right": 10}
_HAND_START = {"left": 91, "right": 112}


def _wholebody(
    joints: dict[int, np.ndarray], hands: dict[str, np.ndarray], scale: float, size: int
) -> np.ndarray:
    """(133, 3) keypoints in output pixels; a point drawn outside the image gets v = 0, as MediaPipe's."""
    keypoints = np.zeros((133, 3), np.float32)
    for index, point in joints.items():
        keypoints[index, :2] = point[:2] * scale
    for side, points in hands.items():
        keypoints[_HAND_START[side] : _HAND_START[side] + 21, :2] = points[:, :2] * scale
        keypoints[_WRIST[side], :2] = points[0, :2] * scale
    drawn = np.zeros(133, bool)
    drawn[list(joints)] = True
    for side in hands:
        drawn[_HAND_START[side] : _HAND_START[side] + 21] = drawn[_WRIST[side]] = True
    inside = (keypoints[:, :2] >= 0).all(axis=1) & (keypoints[:, :2] <= size).all(axis=1)
    keypoints[:, 2] = np.where(drawn & inside, 2.0, 0.0)
    return keypoints


def _annotation(hands, s: int, subject: Subject, scene: _Scene) -> dict:
    bboxes, labels, landmarks_2d, landmarks_3d = [], [], [], []
    for label, points in hands:
        xy = points[:, :2] / s
        # MediaPipe's z: depth relative to the wrist on the x scale, smaller is nearer the camera
        z = -(points[:, 2] - points[0, 2]) / s
        lo, hi = xy.min(0), xy.max(0)
        pad = (hi - lo) * 0.1  # hagrid-mini pads boxes 10% around the landmarks, as HaGRID v2 does
        lo, hi = np.clip(lo - pad, 0, 1), np.clip(hi + pad, 0, 1)
        bboxes.append([float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])])
        labels.append(label)
        landmarks_2d.append(xy.round(6).tolist())
        landmarks_3d.append(np.column_stack([xy, z]).round(6).tolist())
    person = "woman" if subject.woman else "man"
    caption = f"a {person} in a {subject.clothing} {subject.garment} {scene.place}"
    return {
        "bboxes": bboxes,
        "labels": labels,
        "united_bbox": None,
        "united_label": None,
        "user_id": subject.user_id,
        "hand_landmarks": landmarks_2d,
        "hand_landmarks_3d": landmarks_3d,
        "caption": caption,
    }


def sample_key(seed: int, gesture: str, index: int) -> str:
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{seed}/{gesture}/{index}"))


def write_synthetic_hagrid(
    folder: str | Path,
    gestures: list[str] = SYNTHETIC_GESTURES,
    per_gesture: int = 100,
    size: int = 512,
    seed: int = 0,
    split: str = "train",
    twostage: bool = False,
) -> Path:
    """Write `per_gesture` renders per gesture: `images/<g>/<key>.jpg`, `annotations/<split>/<g>.json`.

    With `twostage`, also what the two-stage method reads instead of running Holistic and SAM:
    `wholebody/<split>/<g>.json` (key -> the figure's 133 COCO-WholeBody keypoints [x, y, v] in image
    pixels) and `masks/<g>/<key>.png` (the exact hand mask, 0/255). A gesture whose files already list
    `per_gesture` images is skipped, so an interrupted run resumes, and a folder written without the
    two-stage files gets them (the renders are a pure function of seed, gesture and index).
    """
    folder = Path(folder)
    for gesture in gestures:
        _check_synthetic(gesture)
    for gesture in gestures:
        annotation_path = folder / "annotations" / split / f"{gesture}.json"
        wholebody_path = folder / "wholebody" / split / f"{gesture}.json"
        masks = folder / "masks" / gesture
        if _lists(annotation_path, per_gesture) and (
            not twostage or _lists(wholebody_path, per_gesture, masks)
        ):
            continue
        entries, poses = {}, {}
        for index in progress_bar(range(per_gesture), desc=f"synthetic {gesture}", unit="img"):
            key = sample_key(seed, gesture, index)
            image_path = folder / "images" / gesture / f"{key}.jpg"
            figure = render_figure(seed, gesture, index, size)
            if not image_path.is_file():
                files.save_image(image_path, figure.image, quality=95)
            if twostage:
                mask_path = folder / "masks" / gesture / f"{key}.png"
                if not mask_path.is_file():
                    files.save_image(mask_path, Image.fromarray(figure.hand_mask.astype(np.uint8) * 255))
                poses[key] = figure.keypoints.astype(np.float64).round(3).tolist()
            entries[key] = figure.entry
        if twostage:
            files.write_text(wholebody_path, json.dumps(poses))
        files.write_json(annotation_path, entries)  # written last: it marks the gesture complete
    return folder


def _lists(path: Path, count: int, masks: Path | None = None) -> bool:
    """`path` holds `count` entries (and, given `masks`, each key has its mask file there)."""
    if not path.is_file():
        return False
    table = json.loads(path.read_text())
    return len(table) == count and (masks is None or all((masks / f"{key}.png").is_file() for key in table))
