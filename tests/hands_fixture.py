"""A small `hands.jsonl` in the layout `handsynth pose build` writes (DESIGN: two-stage data contracts),
made from synthetic renders: the gesture hand cropped square, its 21 drawn landmarks as the hand's
keypoints, a mask drawn from them (finger segments and the palm polygon), heatmaps and a caption."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handsynth.data.synthetic import SYNTHETIC_GESTURES, render_sample
from handsynth.perception.wholebody import HAND_EDGES
from handsynth.twostage.data.dataset import SETTINGS_FILE
from handsynth.twostage.data.heatmaps import finger_heatmaps, quantize

CROP_MARGIN = 0.15  # each crop's side is 1.3 times the hand's: 0.15 of it added on either side

RENDER = 256
PALM = [0, 1, 5, 9, 13, 17]


def landmark_mask(hand: np.ndarray, size: int) -> np.ndarray:
    """0/255 (size, size): thick segments along the hand's edges plus the filled palm polygon."""
    mask = np.zeros((size, size), np.uint8)
    points = np.round(hand[:, :2]).astype(np.int32)
    cv2.fillPoly(mask, [points[PALM]], 255)
    for a, b in HAND_EDGES:
        cv2.line(mask, tuple(points[a]), tuple(points[b]), 255, max(2, size // 12))
    return mask


def write_hands_manifest(
    folder: Path, n: int = 8, crop: int = 64, seed: int = 0, split: str = "train"
) -> Path:
    """`<folder>/hands.jsonl` with `n` crops of `crop` px; the gesture hand goes in the left slot for even
    rows and the right slot for odd ones (the other hand absent, v = 0), so both slots are exercised."""
    rows = []
    for i in range(n):
        gesture = SYNTHETIC_GESTURES[i % len(SYNTHETIC_GESTURES)]
        image, annotation = render_sample(seed, gesture, i, RENDER)
        xy = np.asarray(annotation["hand_landmarks"][0], np.float32) * RENDER
        centre, side = (xy.min(0) + xy.max(0)) / 2, (xy.max(0) - xy.min(0)).max() * (1 + 2 * CROP_MARGIN)
        x0, y0 = np.round(centre - side / 2).astype(int)
        box = [int(x0), int(y0), int(x0 + round(side)), int(y0 + round(side))]
        scale = crop / (box[2] - box[0])
        hand = np.zeros((21, 3), np.float32)
        hand[:, :2] = (xy - [box[0], box[1]]) * scale
        hand[:, 2] = 2
        hands = np.zeros((42, 3), np.float32)
        hands[21 * (i % 2) : 21 * (i % 2) + 21] = hand
        key = f"hand{i:03d}"
        paths = {"image": f"crops/{key}.png", "mask": f"masks/{key}.png", "heatmaps": f"heatmaps/{key}.npz"}
        for rel in paths.values():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image.crop(box).resize((crop, crop), Image.Resampling.LANCZOS).save(folder / paths["image"])
        Image.fromarray(landmark_mask(hand, crop)).save(folder / paths["mask"])
        np.savez_compressed(folder / paths["heatmaps"], heatmaps=quantize(finger_heatmaps(hands, crop)))
        rows.append(
            {
                "key": key,
                "source": f"img{i:03d}",
                "split": split,
                **paths,
                "hands": hands.tolist(),
                "box": box,
                "caption": f"a hand of {annotation['caption']}",
            }
        )
    manifest = folder / "hands.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / SETTINGS_FILE).write_text(json.dumps({"crop_margin": CROP_MARGIN}))  # as `pose build` does
    return manifest
