"""twostage.crops: square boxes, overlap sharing, and placing a crop back where it came from."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from handsynth.twostage.data.crops import (
    crop_hands,
    cut_mask,
    cut_square,
    from_box,
    image_box,
    plan_crops,
    split_hand_mask,
    square_box,
    to_box,
)
from handsynth.twostage.data.heatmaps import dequantize


def _pose_with_hands(left_box=None, right_box=None, seed=0):
    """A (133, 3) pose whose hands spread over the given boxes, x0, y0, x1, y1."""
    rng = np.random.default_rng(seed)
    pose = np.zeros((133, 3), np.float32)
    for start, box in ((91, left_box), (112, right_box)):
        if box is not None:
            pose[start : start + 21, 0] = rng.uniform(box[0], box[2], 21)
            pose[start : start + 21, 1] = rng.uniform(box[1], box[3], 21)
            pose[start, :2], pose[start + 1, :2] = box[:2], box[2:]  # the box's corners are keypoints
            pose[start : start + 21, 2] = 2
    return pose


def test_overlapping_hands_share_one_crop_and_apart_they_get_one_each():
    together = plan_crops(_pose_with_hands((100, 100, 200, 180), (180, 150, 260, 240)), 400, 300)
    assert len(together) == 1 and together[0].sides == ("left", "right")
    x0, y0, x1, y1 = together[0].box
    assert x1 - x0 == y1 - y0 == 240  # the union's longer side (160) widened by 25% per side
    assert x0 <= 100 and y0 <= 100 and x1 >= 260 and y1 >= 240
    apart = plan_crops(_pose_with_hands((20, 20, 80, 100), (250, 150, 320, 220)), 400, 300)
    assert [p.sides for p in apart] == [("left",), ("right",)]
    assert [p.box[2] - p.box[0] for p in apart] == [120, 105]
    # touching boxes overlap too; a hand with a single present point has no box to crop
    assert len(plan_crops(_pose_with_hands((10, 10, 50, 50), (50, 10, 90, 50)), 100, 100)) == 1
    lone = _pose_with_hands((10, 10, 50, 50))
    lone[92:112, 2] = 0
    assert plan_crops(lone, 100, 100) == []


def test_square_boxes_hold_their_box_and_stay_inside_where_they_fit():
    assert square_box((40, 40, 60, 60), 100, 100, 30) == (35, 35, 65, 65)
    assert square_box((0, 80, 20, 100), 100, 100, 30) == (0, 70, 30, 100)  # slid in, still holding it
    assert square_box((10, 10, 90, 20), 100, 50, 80) == (10, -25, 90, 55)  # taller than the image: centred
    # a whole image: its shorter side, nearest the centre holding both hands
    pose = _pose_with_hands((10, 40, 40, 90), (60, 50, 90, 80))
    assert image_box(pose, 200, 100) == (10, 0, 110, 100)
    assert image_box(None, 200, 100) == (50, 0, 150, 100)
    assert image_box(_pose_with_hands((10, 10, 190, 60)), 200, 100) == (
        10,
        -40,
        190,
        140,
    )  # centred on the image


def test_cut_square_is_black_past_the_edge():
    image = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    cut = np.asarray(cut_square(image, (-10, 0, 10, 20), 20, Image.NEAREST))
    assert (cut[:, :10] == 0).all() and (cut[:, 10:] == 200).all()


def _dots(points, width, height, radius=3):
    """An image with one coloured dot at each point, each its own colour."""
    canvas = np.zeros((height, width, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    yy, xx = np.mgrid[:height, :width] + 0.5  # pixel centres
    for (x, y), colour in zip(points, colours, strict=False):
        canvas[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = colour
    return canvas, colours


def _centroid(image, colour):
    near = np.abs(image.astype(int) - colour).sum(axis=2) < 60
    ys, xs = np.nonzero(near)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


@pytest.mark.parametrize("size", [64, 256])
def test_a_crop_placed_back_puts_its_keypoints_within_1px(size):
    """Dots drawn at six keypoints are found in the crop's pixels, and carried back with its box they
    land within 1 px of where they were drawn: the crop's pixels, keypoints and box agree."""
    pose = _pose_with_hands((130.3, 90.7, 205.1, 170.2), (300.6, 200.2, 360.9, 280.4), seed=3)
    chosen = [91, 95, 103, 112, 120, 132]
    image, colours = _dots(pose[chosen, :2], 420, 330)
    crops = crop_hands(Image.fromarray(image), {}, pose, size)
    assert len(crops) == 2
    found = 0
    for crop in crops:
        pixels = np.asarray(crop.image)
        for index, colour in zip(chosen, colours, strict=True):
            side = "left" if index < 112 else "right"
            if side not in crop.plan.sides:
                continue
            seen = _centroid(pixels, colour)  # where the dot is in the crop
            row = index - 91
            np.testing.assert_allclose(seen, crop.hands[row, :2], atol=1.0 * max(1, size / 80))
            back = from_box(seen[None], crop.plan.box, size)[0]
            assert np.abs(back - pose[index, :2]).max() <= 1.0, (index, back, pose[index, :2])
            found += 1
        other = slice(21, 42) if crop.plan.sides == ("left",) else slice(0, 21)
        assert (crop.hands[other] == 0).all()  # the hand not in this crop has v = 0
    assert found == 6


def test_crop_carries_mask_and_heatmaps_at_crop_resolution():
    pose = _pose_with_hands((40, 40, 100, 110))
    mask = np.zeros((200, 200), bool)
    mask[40:110, 40:100] = True
    (crop,) = crop_hands(Image.new("RGB", (200, 200)), {"left": mask}, pose, 32)
    assert crop.image.size == (32, 32) and crop.mask.shape == (32, 32) and crop.heatmaps.shape == (10, 32, 32)
    assert crop.heatmaps.dtype == np.uint8 and crop.heatmaps[5:].max() == 0  # no right hand
    # the mask's box, carried into the crop
    x0, y0, x1, y1 = to_box(np.array([[40, 40], [100, 110]], np.float32), crop.plan.box, 32).reshape(-1)
    ys, xs = np.nonzero(crop.mask)
    assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    # each finger channel peaks at its tip
    tip = crop.hands[8, :2]  # index fingertip
    channel = dequantize(crop.heatmaps[1])
    assert channel[int(tip[1]), int(tip[0])] > 0.9


def test_a_one_hand_crop_masks_its_own_hand_only():
    """The hands' boxes are apart, so each has its own crop, yet the left crop (its 60 px hand widened
    by 25% per side) also shows part of the right hand: its mask target must not take those pixels,
    as its heatmaps hold the left hand only. A crop of both hands keeps both."""
    pose = _pose_with_hands((40, 40, 100, 110), (105, 40, 165, 110))
    left, right = np.zeros((200, 200), bool), np.zeros((200, 200), bool)
    left[40:110, 40:100], right[40:110, 105:165] = True, True
    crops = crop_hands(Image.new("RGB", (200, 200)), {"left": left, "right": right}, pose, 64)
    assert [c.plan.sides for c in crops] == [("left",), ("right",)]
    first = crops[0]
    assert first.plan.box[2] > 105, "the left crop must show some of the right hand for this test"
    shown = cut_mask(right, first.plan.box, 64)  # the right hand's pixels in the left crop
    assert shown.sum() > 100 and not (first.mask & shown).any()
    np.testing.assert_array_equal(first.mask, cut_mask(left, first.plan.box, 64))
    np.testing.assert_array_equal(crops[1].mask, cut_mask(right, crops[1].plan.box, 64))
    overlapping = _pose_with_hands((40, 40, 100, 110), (90, 40, 150, 110))
    (shared,) = crop_hands(Image.new("RGB", (200, 200)), {"left": left, "right": right}, overlapping, 64)
    assert shared.plan.sides == ("left", "right")
    np.testing.assert_array_equal(shared.mask, cut_mask(left | right, shared.plan.box, 64))


def test_a_mask_of_both_hands_is_split_by_the_nearer_hand():
    pose = np.zeros((133, 3), np.float32)
    grid = np.stack(np.meshgrid(np.linspace(0, 60, 7), np.linspace(0, 70, 3)), -1).reshape(-1, 2)
    pose[91:112] = np.c_[grid + [40, 40], np.full(21, 2.0)]  # a 7 x 3 grid over each hand's box
    pose[112:133] = np.c_[grid + [105, 40], np.full(21, 2.0)]
    both = np.zeros((200, 200), bool)
    both[40:110, 40:165] = True  # one region across both hands and the gap between them
    split = split_hand_mask(both, pose)
    assert set(split) == {"left", "right"}
    assert not (split["left"] & split["right"]).any() and np.array_equal(split["left"] | split["right"], both)
    assert split["left"][40:110, 40:100].all() and split["right"][40:110, 106:165].all()
    one = pose.copy()
    one[112:, 2] = 0
    assert set(split_hand_mask(both, one)) == {"left"} and split_hand_mask(both, one)["left"] is both
