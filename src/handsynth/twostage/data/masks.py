"""Hand masks for the two-stage dataset (TWOSTAGE.md §8), behind one small interface.

A `HandMasker` turns an RGB image and its hands' (21, 3) pixel keypoints into one bool mask per hand,
dilated 5×5 as the paper does to SAM's masks (§IV-A). `make_masker(pose.sam_model)` picks:
- SAM (`handsynth.perception.sam.SamSegmenter`, prompted with each hand's keypoints and box) when an
  id or folder is set;
- masks drawn from the landmarks (thick finger segments plus the palm polygon) when it is empty.
Synthetic data needs neither: its renderer writes the exact mask, read with `read_mask`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handsynth import files
from handsynth.errors import HandsynthError
from handsynth.perception.sam import dilate_mask
from handsynth.perception.wholebody import HAND_EDGES

PALM = [0, 1, 2, 5, 9, 13, 17]  # wrist, thumb base and the finger bases: the palm's outline
FINGER_WIDTH = 0.25  # finger thickness as a share of the palm's longest side (wrist to middle base ~ 1)


def _palm_size(hand: np.ndarray) -> float:
    """The longest present side of the palm (wrist-middle base, index-pinky base, wrist-index/pinky base):
    a hand's scale that survives foreshortening in any one direction."""
    sizes = [
        float(np.linalg.norm(hand[a, :2] - hand[b, :2]))
        for a, b in ((0, 9), (5, 17), (0, 5), (0, 17))
        if hand[a, 2] > 0 and hand[b, 2] > 0
    ]
    if sizes:
        return max(sizes)
    present = hand[hand[:, 2] > 0, :2]
    return float(np.ptp(present, axis=0).max()) if len(present) else 0.0


def landmark_mask(hand: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) bool: the hand drawn from its (21, 3) pixel keypoints (points with v = 0 left out).

    Each bone is a line FINGER_WIDTH × the palm size thick with a disc at every joint, and the palm is
    the convex hull of its base points, so every present keypoint is covered.
    """
    hand = np.asarray(hand, dtype=np.float64)
    mask = np.zeros((height, width), np.uint8)
    present = hand[:, 2] > 0
    if not present.any():
        return mask.astype(bool)
    thickness = max(2, round(FINGER_WIDTH * _palm_size(hand)))
    points = np.round(hand[:, :2]).astype(np.int32)
    palm = points[[i for i in PALM if present[i]]]
    if len(palm) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(palm), 1)
    for a, b in HAND_EDGES:
        if present[a] and present[b]:
            cv2.line(mask, tuple(map(int, points[a])), tuple(map(int, points[b])), 1, thickness)
    for point in points[present]:
        cv2.circle(mask, tuple(map(int, point)), max(1, thickness // 2), 1, -1)
    return mask.astype(bool)


class HandMasker:
    """One bool (H, W) mask per hand, dilated 5×5; `source` names the method in the manifests."""

    source = ""

    def __init__(self) -> None:
        self.calls = 0  # images masked, so callers (and tests) can see that resume did no work

    def hand_masks(self, rgb: np.ndarray, hands: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class LandmarkMasker(HandMasker):
    source = "landmarks"

    def hand_masks(self, rgb: np.ndarray, hands: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        height, width = rgb.shape[:2]
        return [dilate_mask(landmark_mask(hand, height, width)) for hand in hands]


class SamMasker(HandMasker):
    """SAM prompted with each hand's keypoints and box, the hands of one image in one batch; the
    segmenter dilates its masks itself."""

    source = "sam"

    def __init__(self, model: str, device: str = "auto") -> None:
        super().__init__()
        from handsynth.perception.sam import SamSegmenter

        self.model = model
        self.segmenter = SamSegmenter.from_pretrained(model, device, config_key="pose.sam_model")

    def hand_masks(self, rgb: np.ndarray, hands: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        return [np.asarray(mask, dtype=bool) for mask in self.segmenter.segment_hands(rgb, hands)]


def make_masker(sam_model: str, device: str = "auto") -> HandMasker:
    """SAM for a model id or folder, landmark masks for an empty one."""
    return SamMasker(sam_model, device) if sam_model else LandmarkMasker()


def read_mask(path: Path, width: int, height: int, image: str | Path) -> np.ndarray:
    """A 0/255 mask file as a (height, width) bool array; a HandsynthError naming both files when it
    cannot be read or its size is not its image's."""
    again = "(a synthetic source writes its masks again on the next run)"
    try:
        with Image.open(path) as file:
            mask = np.asarray(files.to_gray(file)) > 127
    except FileNotFoundError:
        raise HandsynthError(f"mask file {path} for {image} is missing {again}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise HandsynthError(f"cannot read mask file {path}: {exc}; delete it {again}") from None
    if mask.shape != (height, width):
        raise HandsynthError(
            f"mask file {path} is {mask.shape[1]}x{mask.shape[0]}, but its image {image} is "
            f"{width}x{height}; a mask must have its image's size: delete it {again}"
        )
    return mask
