"""Square boxes, square cuts and hand crops for the two-stage dataset (seed 004 §IV-A).

A box is [x0, y0, x1, y1] in an image's pixels (continuous coordinates: pixel i spans [i, i + 1]).
`cut_square` resamples a square box to size × size (black past the image's edge); `to_box` and
`from_box` carry points between the image and the cut, so a cut can be placed back.

Hand crops: a square around each hand's keypoints, widened by `margin` of the hand's longer side on
every side and slid inside the image where it fits; two hands whose keypoint boxes overlap share one
crop. Each crop carries the keypoints of its hands (42, 3) in crop pixels (v = 0 for a hand not in it),
the hand mask and the finger heatmaps at crop resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from handsynth.perception.wholebody import HANDS, hand_box
from handsynth.twostage.data.heatmaps import finger_heatmaps, quantize

CROP_MARGIN = 0.25
MIN_HAND_POINTS = 2  # a hand with fewer present keypoints has no box to crop


def _place(length: int, side: int, lo: float, hi: float, centre: float) -> int:
    """Start of a `side` px window on an axis of `length` px: centred on `centre` as nearly as it can
    while holding [lo, hi], and inside the image where such a window fits."""
    hold_lo, hold_hi = math.ceil(hi - side - 1e-6), math.floor(lo + 1e-6)
    lo_s, hi_s = max(hold_lo, 0), min(hold_hi, length - side)
    if lo_s > hi_s:  # no window both holds and fits: hold
        lo_s, hi_s = hold_lo, hold_hi
    return min(max(round(centre - side / 2), lo_s), hi_s)


def square_box(
    hold: tuple[float, float, float, float], width: int, height: int, side: float
) -> tuple[int, int, int, int]:
    """An integer square of `side` px (rounded up) centred on box `hold`, slid inside the image where
    it fits, always holding the box."""
    side = max(1, math.ceil(side - 1e-6))
    x0 = _place(width, side, hold[0], hold[2], (hold[0] + hold[2]) / 2)
    y0 = _place(height, side, hold[1], hold[3], (hold[1] + hold[3]) / 2)
    return x0, y0, x0 + side, y0 + side


def image_box(keypoints: np.ndarray | None, width: int, height: int) -> tuple[int, int, int, int]:
    """The square a whole image is cut to: its shorter side, as near the image's centre as holding
    every hand allows; it grows past the image (black) only when the hands span more than that."""
    boxes = [] if keypoints is None else [b for s in HANDS if (b := hand_box(keypoints, s)) is not None]
    if not boxes:
        boxes = [(width / 2, height / 2, width / 2, height / 2)]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    side = max(min(width, height), math.ceil(x1 - x0), math.ceil(y1 - y0))
    left = _place(width, side, x0, x1, width / 2)
    top = _place(height, side, y0, y1, height / 2)
    return left, top, left + side, top + side


def cut_square(
    image: Image.Image, box: tuple[int, int, int, int], size: int, resample=Image.LANCZOS
) -> Image.Image:
    """The square `box` of `image` resampled to size × size; the part past the image is black."""
    return image.crop(box).resize((size, size), resample)


def cut_mask(mask: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A bool mask cut like its image: bilinear, then the pixels at least half covered."""
    cut = cut_square(Image.fromarray(mask.astype(np.uint8) * 255), box, size, Image.BILINEAR)
    return np.asarray(cut) >= 128


def to_box(points: np.ndarray, box, size: int) -> np.ndarray:
    """(N, 2+) image pixels -> pixels of the size × size cut of `box` (extra columns unchanged)."""
    out = np.array(points, dtype=np.float32)
    scale = size / (box[2] - box[0])
    out[:, 0] = (out[:, 0] - box[0]) * scale
    out[:, 1] = (out[:, 1] - box[1]) * scale
    return out


def from_box(points: np.ndarray, box, size: int) -> np.ndarray:
    """Pixels of the size × size cut of `box` -> the image's pixels: the inverse of `to_box`."""
    out = np.array(points, dtype=np.float32)
    scale = (box[2] - box[0]) / size
    out[:, 0] = out[:, 0] * scale + box[0]
    out[:, 1] = out[:, 1] * scale + box[1]
    return out


def box_in(box, outer, size: int) -> list[float]:
    """`box` (in an image's pixels) in the pixels of the size × size cut of `outer`."""
    corners = to_box(np.array([[box[0], box[1]], [box[2], box[3]]], dtype=np.float64), outer, size)
    return [round(float(v), 3) for v in corners.reshape(-1)]


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) >= max(a[0], b[0]) and min(a[3], b[3]) >= max(a[1], b[1])


@dataclass(frozen=True)
class CropPlan:
    sides: tuple[str, ...]  # ("left",), ("right",) or ("left", "right")
    box: tuple[int, int, int, int]  # square, in the image's pixels


def plan_crops(keypoints: np.ndarray, width: int, height: int, margin: float = CROP_MARGIN) -> list[CropPlan]:
    """One square per hand, or one for both when their keypoint boxes overlap; hands with fewer than
    MIN_HAND_POINTS present keypoints are left out."""
    boxes = {}
    for side, part in HANDS.items():
        if (keypoints[part, 2] > 0).sum() >= MIN_HAND_POINTS:
            boxes[side] = hand_box(keypoints, side)
    if len(boxes) == 2 and _overlap(boxes["left"], boxes["right"]):
        a, b = boxes["left"], boxes["right"]
        groups = [(("left", "right"), (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))]
    else:
        groups = [((side,), box) for side, box in boxes.items()]
    plans = []
    for sides, box in groups:
        side = max(box[2] - box[0], box[3] - box[1], 1.0) * (1 + 2 * margin)
        plans.append(CropPlan(sides, square_box(box, width, height, side)))
    return plans


@dataclass
class HandCrop:
    plan: CropPlan
    image: Image.Image  # size × size RGB
    mask: np.ndarray  # (size, size) bool
    hands: np.ndarray  # (42, 3) float32, crop pixels; v = 0 for a hand not in this crop
    heatmaps: np.ndarray  # (10, size, size) uint8, quantised finger heatmaps


def hand_keypoints(pose: np.ndarray, plan: CropPlan, size: int) -> np.ndarray:
    """(42, 3): the plan's hands in the pixels of its crop drawn at `size`; v = 0 for the other hand."""
    hands = np.zeros((42, 3), np.float32)
    for i, side in enumerate(HANDS):
        if side in plan.sides:
            hands[21 * i : 21 * (i + 1)] = to_box(pose[HANDS[side]], plan.box, size)
    return hands


def split_hand_mask(mask: np.ndarray, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """A mask of both hands split into one mask per hand present in the pose (133, 3): each mask pixel
    goes to the hand with the nearer present keypoint."""
    sides = [side for side, part in HANDS.items() if (keypoints[part, 2] > 0).any()]
    if len(sides) < 2:
        return {side: mask for side in sides}
    ys, xs = np.nonzero(mask)
    centres = np.c_[xs, ys] + 0.5  # keypoints are continuous: pixel i spans [i, i + 1]
    distances = []
    for side in sides:
        points = keypoints[HANDS[side]]
        points = points[points[:, 2] > 0, :2]
        distances.append(np.linalg.norm(centres[:, None] - points[None], axis=2).min(axis=1))
    nearest = np.argmin(distances, axis=0)
    split = {side: np.zeros(mask.shape, bool) for side in sides}
    for n, side in enumerate(sides):
        split[side][ys[nearest == n], xs[nearest == n]] = True
    return split


def crop_hands(
    image: Image.Image,
    hand_masks: dict[str, np.ndarray],
    keypoints: np.ndarray,
    size: int,
    margin: float = CROP_MARGIN,
) -> list[HandCrop]:
    """The hand crops of one image, given its pose (133, 3) and one mask per hand ("left", "right"), in
    its pixels. A crop's mask holds only its own hands, as its heatmaps do: a one-hand crop that also
    shows the other hand does not take that hand's pixels."""
    crops = []
    empty = np.zeros((image.height, image.width), bool)
    for plan in plan_crops(keypoints, image.width, image.height, margin):
        hands = hand_keypoints(keypoints, plan, size)
        mask = np.logical_or.reduce([hand_masks.get(side, empty) for side in plan.sides])
        crops.append(
            HandCrop(
                plan=plan,
                image=cut_square(image, plan.box, size),
                mask=cut_mask(mask, plan.box, size),
                hands=hands,
                heatmaps=quantize(finger_heatmaps(hands, size)),
            )
        )
    return crops
