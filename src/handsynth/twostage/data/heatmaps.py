"""The hand generator's pose input: 10 finger heatmaps (TWOSTAGE.md §2).

Channels 0-4 are the left hand's thumb, index, middle, ring and pinky, 5-9 the right hand's. A channel
is the per-pixel max of Gaussians at its finger's 4 joints and at the wrist, σ = 2% of the crop side.
A missing hand (every v = 0) gives zero channels. Maps are made at crop resolution; the model resizes
them bilinearly to its latent.
"""

from __future__ import annotations

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import FINGERS

NUM_CHANNELS = 2 * len(FINGERS)
SIGMA_FRACTION = 0.02


def finger_heatmaps(hands: np.ndarray, size: int, sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """(10, size, size) float32 in [0, 1] from `hands`, (42, 3): the left then the right hand's 21
    keypoints as x, y in the crop's pixels and v (points with v = 0 are left out)."""
    hands = np.asarray(hands, dtype=np.float32)
    if hands.shape != (42, 3):
        raise HandsynthError(
            f"finger heatmaps need (42, 3) hand keypoints, left then right; got {hands.shape}"
        )
    sigma = sigma_fraction * size
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    maps = np.zeros((NUM_CHANNELS, size, size), dtype=np.float32)
    for h in range(2):
        hand = hands[21 * h : 21 * (h + 1)]
        for f, joints in enumerate(FINGERS.values()):
            points = hand[[0, *joints]]
            for x, y, v in points:
                if v <= 0:
                    continue
                gx = np.exp(-((grid - x) ** 2) / (2 * sigma**2))
                gy = np.exp(-((grid - y) ** 2) / (2 * sigma**2))
                np.maximum(maps[5 * h + f], np.outer(gy, gx), out=maps[5 * h + f])
    return maps


def quantize(maps: np.ndarray) -> np.ndarray:
    """uint8 maps for a compact file (`np.savez_compressed`): value × 255, rounded."""
    return np.round(np.clip(maps, 0.0, 1.0) * 255.0).astype(np.uint8)


def dequantize(maps: np.ndarray) -> np.ndarray:
    return maps.astype(np.float32) / 255.0
