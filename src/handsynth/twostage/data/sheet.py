"""The two-stage dataset at a glance: a contact sheet, one row per image.

Columns: the square image | its OpenPose skeleton (body, hands, face) | the hand mask (red) and
person mask (blue) over it | its first hand crop with the finger heatmaps over it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handsynth import files
from handsynth.twostage.data.heatmaps import dequantize
from handsynth.twostage.data.skeleton import draw_openpose

COLUMNS = ("image", "skeleton", "hand / person mask", "crop + heatmaps")
HEADER = 22


def _tile(rgb: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def _mask(folder: Path, rel: str | None, size: int) -> np.ndarray | None:
    if rel is None:
        return None
    with Image.open(folder / rel) as file:
        return np.asarray(files.to_gray(file).resize((size, size), Image.NEAREST)) > 127


def _tint(rgb: np.ndarray, mask: np.ndarray | None, colour) -> np.ndarray:
    if mask is None:
        return rgb
    out = rgb.astype(np.float32)
    out[mask] = out[mask] * 0.45 + np.array(colour, np.float32) * 0.55
    return out.astype(np.uint8)


def _crop_tile(folder: Path, row: dict | None, size: int) -> np.ndarray:
    if row is None:
        return np.zeros((size, size, 3), np.uint8)
    with Image.open(folder / row["image"]) as file:
        crop = np.asarray(files.to_rgb(file).resize((size, size), Image.BILINEAR))
    with np.load(folder / row["heatmaps"]) as data:
        heat = dequantize(data["heatmaps"]).max(axis=0)
    heat = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    alpha = np.clip(heat * 1.5, 0, 0.8)[..., None]
    return (crop * (1 - alpha) + colour * alpha).astype(np.uint8)


def contact_sheet(
    folder: Path, image_rows: list[dict], hand_rows: list[dict], rows: int = 6, tile: int = 160
):
    """A PIL image of the first `rows` images of a built dataset folder."""
    first_crop = {}
    for row in hand_rows:
        first_crop.setdefault(row["source"], row)
    header = np.full((HEADER, tile * len(COLUMNS), 3), 255, np.uint8)
    for i, title in enumerate(COLUMNS):
        cv2.putText(
            header,
            title,
            (i * tile + 4, HEADER - 7),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    lines = [header]
    for row in image_rows[:rows]:
        with Image.open(folder / row["image"]) as file:
            image = np.asarray(files.to_rgb(file))
        size = image.shape[0]
        skeleton = draw_openpose(np.asarray(row["keypoints"], np.float32), size, size, "full")
        base = _tile(image, tile)
        masks = _tint(_tint(base, _mask(folder, row["person_mask"], tile), (40, 90, 255)),
                      _mask(folder, row["hand_mask"], tile), (255, 30, 30))  # fmt: skip
        crop = _crop_tile(folder, first_crop.get(row["key"]), tile)
        lines.append(np.hstack([base, _tile(skeleton, tile), masks, crop]))
    return Image.fromarray(np.vstack(lines))
