"""Finger heatmaps (TWOSTAGE.md §2) and the COCO-WholeBody tables they index."""

from __future__ import annotations

import numpy as np
import pytest

from handsynth.errors import HandsynthError
from handsynth.perception import wholebody
from handsynth.twostage.data.heatmaps import dequantize, finger_heatmaps, quantize


def spread_hand(cx: float, cy: float) -> np.ndarray:
    """21 keypoints (v = 2): the wrist at (cx, cy), each finger a column of 4 points above it."""
    hand = np.zeros((21, 3), dtype=np.float32)
    hand[0] = (cx, cy, 2)
    for f in range(5):
        for j in range(4):
            hand[1 + 4 * f + j] = (cx - 40 + 20 * f, cy - 20 - 12 * j, 2)
    return hand


def test_each_channel_peaks_at_its_fingers_joints_in_the_documented_order():
    size = 256
    hands = np.concatenate([spread_hand(70, 200), spread_hand(180, 200)])
    maps = finger_heatmaps(hands, size)
    assert maps.shape == (10, size, size) and maps.dtype == np.float32
    sigma = 0.02 * size
    for h, side in enumerate(("left", "right")):
        hand = hands[21 * h : 21 * h + 21]
        for f, (finger, joints) in enumerate(wholebody.FINGERS.items()):
            channel = maps[5 * h + f]
            for x, y, _ in hand[[0, *joints]]:  # the wrist and the finger's 4 joints
                assert channel[int(y), int(x)] > 0.97, f"{side} {finger} at ({x}, {y})"
            # another finger's tip is far from this finger: nearly zero there
            other = hand[wholebody.FINGERS["pinky" if finger != "pinky" else "thumb"][-1]]
            assert channel[int(other[1]), int(other[0])] < np.exp(-(20**2) / (2 * sigma**2)) + 1e-6
    # channel 0 is the left thumb: its tip lies at x = 70 - 40 = 30, channel 5's at 180 - 40 = 140
    tip_y = int(200 - 20 - 36)
    assert maps[0, tip_y, 30] > 0.97 and maps[0, tip_y, 140] < 1e-6
    assert maps[5, tip_y, 140] > 0.97 and maps[5, tip_y, 30] < 1e-6


def test_a_gaussian_has_the_documented_width():
    hands = np.zeros((42, 3), dtype=np.float32)
    hands[0] = (100.5, 100.5, 2)  # only the left wrist, on a pixel centre
    maps = finger_heatmaps(hands, 200)
    sigma = 0.02 * 200
    assert maps[0, 100, 100] == pytest.approx(1.0)
    assert maps[0, 100, 104] == pytest.approx(np.exp(-(4**2) / (2 * sigma**2)), rel=1e-5)
    assert np.array_equal(maps[0], maps[4])  # the wrist belongs to every finger of the hand


def test_a_missing_hand_gives_zero_channels_and_bad_input_a_clear_error():
    hands = np.concatenate([spread_hand(60, 120), np.zeros((21, 3), np.float32)])
    maps = finger_heatmaps(hands, 128)
    assert maps[:5].max() > 0.9 and not maps[5:].any()
    with pytest.raises(HandsynthError, match=r"\(42, 3\) hand keypoints"):
        finger_heatmaps(np.zeros((21, 3)), 64)


def test_quantized_maps_round_trip_within_half_a_step():
    maps = finger_heatmaps(np.concatenate([spread_hand(50, 100)] * 2), 128)
    stored = quantize(maps)
    assert stored.dtype == np.uint8
    assert np.abs(dequantize(stored) - maps).max() <= 0.5 / 255 + 1e-7


def test_wholebody_tables_have_the_documented_sizes():
    assert wholebody.SIGMAS.shape == (133,) and wholebody.HAND_SIGMAS.shape == (42,)
    assert wholebody.SIGMAS[0] == 0.026 and wholebody.SIGMAS[22] == 0.094 and wholebody.SIGMAS[132] == 0.031
    assert np.array_equal(wholebody.SIGMAS[91:], wholebody.HAND_SIGMAS)
    assert len(wholebody.FACE_FROM_MESH) == 68 and len(wholebody.POSE_FROM_MEDIAPIPE) == 23
    assert len(wholebody.OPENPOSE_FROM_COCO) == 18 == len(wholebody.OPENPOSE_COLORS)
    assert len(wholebody.OPENPOSE_LIMBS) == 17 and len(wholebody.HAND_EDGES) == 20
    pose = wholebody.empty_pose()
    pose[wholebody.RIGHT_HAND] = spread_hand(50, 60)
    assert wholebody.hand_box(pose, "left") is None
    assert wholebody.hand_box(pose, "right") == (10.0, 4.0, 90.0, 60.0)
    with pytest.raises(HandsynthError, match="133 COCO-WholeBody"):
        wholebody.check_pose(np.zeros((17, 3)), "poses.jsonl line 3")
