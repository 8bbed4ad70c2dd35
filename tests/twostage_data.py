"""Test data for the outpainter: poses and a small `images.jsonl` built from real HaGRID photos, laid
out as `handsynth pose build` writes it (DESIGN.md, "The two-stage dataset")."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from handsynth.data.hagrid import read_hagrid
from handsynth.files import load_rgb
from handsynth.perception.wholebody import HANDS, RIGHT_WRIST, empty_pose

# A person facing the camera, in [0, 1] of a square image: COCO body points 0-16.
BODY = [
    (0.50, 0.22), (0.47, 0.19), (0.53, 0.19), (0.44, 0.21), (0.56, 0.21), (0.38, 0.36), (0.62, 0.36),
    (0.33, 0.52), (0.67, 0.52), (0.30, 0.66), (0.70, 0.66), (0.42, 0.70), (0.58, 0.70), (0.42, 0.85),
    (0.58, 0.85), (0.42, 0.98), (0.58, 0.98),
]  # fmt: skip


def body_pose(size: int) -> np.ndarray:
    """The template body at `size` px, every body point visible, no hands."""
    pose = empty_pose()
    pose[:17, :2] = np.array(BODY) * size
    pose[:17, 2] = 2
    return pose


def spread_hand(wrist: tuple[float, float], span: float) -> np.ndarray:
    """(21, 3): a wrist and five straight fingers fanned upwards, `span` px tall."""
    hand = np.zeros((21, 3), dtype=np.float32)
    hand[0] = (*wrist, 2)
    for f in range(5):
        angle = np.radians(-150 + 30 * f)
        for j in range(4):
            r = span * (0.35 + 0.17 * j)
            hand[1 + 4 * f + j] = (wrist[0] + r * np.cos(angle), wrist[1] + r * np.sin(angle), 2)
    return hand


def toy_pose(size: int) -> np.ndarray:
    """The template body with both hands fanned out above its wrists, each a fifth of the image tall."""
    pose = body_pose(size)
    for side, wrist in (("left", pose[9, :2]), ("right", pose[10, :2])):
        pose[HANDS[side]] = spread_hand(tuple(wrist), 0.2 * size)
    return pose


def landmark_mask(hand: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 0/255: the hull of the hand's points, dilated (an offline landmark mask)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(hand[:, :2].round().astype(np.int32)), 255)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8))


def write_images_jsonl(folder: Path, hagrid: Path, count: int, size: int = 64) -> Path:
    """`<folder>/images.jsonl` with `count` rows from real HaGRID photos (gesture "call"): a square crop
    around the gesture, resized to `size`; the annotated hand as the right hand of the template body
    (its wrist moved to the hand's); the hand mask drawn from the landmarks. Returns the folder."""
    records = [r for r in read_hagrid(hagrid, ["call", "palm", "like"]).records if r.landmarks is not None]
    records = records[:count]
    rows = []
    for n, record in enumerate(records):
        image = load_rgb(record.image_path)
        h, w = image.shape[:2]
        side = min(h, w)
        x, y, bw, bh = np.array(record.gesture_box) * [w, h, w, h]
        x0 = int(np.clip(x + bw / 2 - side / 2, 0, w - side))
        y0 = int(np.clip(y + bh / 2 - side / 2, 0, h - side))
        square = cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)
        hand = np.c_[(record.landmarks * [w, h] - [x0, y0]) * size / side, np.full(21, 2.0)]
        pose = body_pose(size)
        pose[HANDS["right"]] = hand
        pose[RIGHT_WRIST, :2] = hand[0, :2]
        pose[8, :2] = (pose[6, :2] + hand[0, :2]) / 2  # the right elbow between shoulder and wrist
        key = f"{record.gesture}-{n}"
        paths = {"image": f"images/{key}.png", "hand_mask": f"masks/{key}.png"}
        for name, pixels in (("image", square), ("hand_mask", landmark_mask(hand, size))):
            (folder / paths[name]).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / paths[name]), pixels[..., ::-1] if pixels.ndim == 3 else pixels)
        rows.append(
            {
                "key": key,
                "split": "train",
                "gesture": record.gesture,
                "image": paths["image"],
                "width": size,
                "height": size,
                "keypoints": pose.tolist(),
                "caption": f"a person number {n} making a {record.gesture} hand gesture",
                "hand_mask": paths["hand_mask"],
                "person_mask": None,
                "mask_source": "landmarks",
                "hand_sources": {"left": None, "right": "hands"},
            }
        )
    (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
