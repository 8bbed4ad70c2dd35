"""The canvas (TWOSTAGE.md §7): similarity fits, hands warped onto a uniform background, masks."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from handsynth.data.hagrid import read_hagrid
from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.wholebody import HAND_INDICES, empty_pose
from handsynth.twostage.outpaint.canvas import (
    BACKGROUND,
    DrawnHand,
    canvas_from_mask,
    fit_similarity,
    latent_mask,
    place_hands,
    small_hands,
)


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def pose_with_hands(hands: np.ndarray) -> np.ndarray:
    pose = empty_pose()
    pose[HAND_INDICES] = hands
    return pose


@pytest.fixture(scope="module")
def real_crop(hagrid_mini) -> DrawnHand:
    """A 256 px square crop of a real HaGRID photo around its annotated hand, the landmarks' hull as
    its mask and the landmarks (right-hand slot) as its keypoints."""
    record = read_hagrid(hagrid_mini, ["call"]).records[0]
    image = load_rgb(record.image_path)
    h, w = image.shape[:2]
    x, y, bw, bh = np.array(record.bbox) * [w, h, w, h]
    side = int(max(bw, bh) * 1.2)
    x0, y0 = int(x + bw / 2 - side / 2), int(y + bh / 2 - side / 2)
    padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_REFLECT)
    crop = cv2.resize(padded[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side], (256, 256))
    points = (record.landmarks * [w, h] - [x0, y0]) * 256 / side
    mask = np.zeros((256, 256), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.round().astype(np.int32)), 1)
    keypoints = np.zeros((42, 3))
    keypoints[21:] = np.c_[points, np.full(21, 2.0)]
    return DrawnHand(crop, mask.astype(bool), keypoints)


def test_umeyama_recovers_a_known_similarity_exactly():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 512, (21, 2))
    truth = similarity(0.37, 0.6, (100.5, 42.25))
    np.testing.assert_allclose(fit_similarity(source, apply(truth, source)), truth, atol=1e-10)


def test_umeyama_is_the_least_squares_similarity_and_never_mirrors():
    """With noise, the fit equals an independent linear least squares over (a, b, tx, ty), where the
    similarity is [[a, −b, tx], [b, a, ty]]."""
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 256, (30, 2))
    target = apply(similarity(1.7, -2.2, (-30, 80)), source) + rng.normal(0, 3, (30, 2))
    rows = np.concatenate(
        [np.c_[source[:, 0], -source[:, 1], np.ones(30), np.zeros(30)],
         np.c_[source[:, 1], source[:, 0], np.zeros(30), np.ones(30)]]
    )  # fmt: skip
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.r_[target[:, 0], target[:, 1]], rcond=None)
    np.testing.assert_allclose(fit_similarity(source, target), [[a, -b, tx], [b, a, ty]], atol=1e-9)

    mirrored = source * [-1, 1]
    assert np.linalg.det(fit_similarity(source, mirrored)[:, :2]) > 0


def test_a_real_crop_placed_with_a_known_similarity_is_recovered(real_crop):
    truth = similarity(0.45, 0.35, (210.0, 140.0))
    hands = real_crop.keypoints.copy()
    hands[21:, :2] = apply(truth, real_crop.keypoints[21:, :2])
    canvas = place_hands([real_crop], pose_with_hands(hands), 512, 384)
    (matrix,) = canvas.transforms
    np.testing.assert_allclose(matrix, truth, atol=1e-4)
    assert canvas.image.shape == (384, 512, 3) and canvas.size == (512, 384)
    # the hand lands where the transform sends it: area scales by s², centroid moves with the points
    ys, xs = np.nonzero(real_crop.mask)
    centre = apply(truth, np.array([[xs.mean(), ys.mean()]]))[0]
    ys, xs = np.nonzero(canvas.mask)
    assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 1.0
    assert canvas.mask.sum() / (real_crop.mask.sum() * 0.45**2) == pytest.approx(1.0, abs=0.03)
    # outside the hand the canvas is the uniform background; inside, the crop's (area-reduced) pixels
    assert (canvas.image[~canvas.mask] == BACKGROUND).all()
    assert np.abs(canvas.image[canvas.mask].astype(float) - BACKGROUND).mean() > 10
    assert canvas.box.sum() == pytest.approx((256 * 0.45) ** 2, rel=0.03)
    assert (canvas.box | ~canvas.mask).all(), "the hand must lie inside its crop's square"


def test_a_shift_by_whole_pixels_copies_the_crop_pixels_exactly(real_crop):
    hands = real_crop.keypoints.copy()
    hands[21:, :2] += [40, 17]
    canvas = place_hands([real_crop], pose_with_hands(hands), 320, 300)
    expected = np.full((300, 320, 3), BACKGROUND, np.uint8)
    region = expected[17 : 17 + 256, 40 : 40 + 256]
    region[real_crop.mask] = real_crop.image[real_crop.mask]
    np.testing.assert_array_equal(canvas.image, expected)
    assert canvas.mask[17 : 17 + 256, 40 : 40 + 256].sum() == real_crop.mask.sum() == canvas.mask.sum()


@pytest.mark.parametrize(
    ("truth", "rows", "cols"),
    [
        ([[2, 0, 4], [0, 2, 3]], [13, 14], [18, 19]),  # x in [7, 8] -> [18, 20], y in [5, 6] -> [13, 15]
        ([[-1, 0, 30], [0, -1, 30]], [24], [22]),  # turned half round: x [7, 8] -> [22, 23]
        ([[0, -2, 30], [2, 0, 0]], [14, 15], [18, 19]),  # a quarter turn at 2x: x' = 30 - 2y, y' = 2x
    ],
)
def test_a_one_pixel_mask_lands_on_the_pixels_its_square_maps_to(truth, rows, cols):
    """Keypoints are continuous (pixel i spans [i, i + 1]), warpAffine works on pixel indices. The mask
    pixel at row 5, column 7 covers [7, 8] x [5, 6]; each similarity maps that square onto whole
    pixels, and exactly those must be the hand. Placed on indices, it lands half a pixel to a pixel off."""
    truth = np.array(truth, dtype=np.float64)
    mask = np.zeros((16, 16), bool)
    mask[5, 7] = True
    image = np.full((16, 16, 3), 200, np.uint8)
    grid = np.stack(np.meshgrid(np.arange(0, 16, 3.0), np.arange(0, 16, 5.0)), -1).reshape(-1, 2)[:21]
    keypoints = np.zeros((42, 3))
    keypoints[21:] = np.c_[grid, np.full(21, 2.0)]
    target = keypoints.copy()
    target[21:, :2] = apply(truth, grid)
    canvas = place_hands([DrawnHand(image, mask, keypoints)], pose_with_hands(target), 64, 64)
    np.testing.assert_allclose(canvas.transforms[0], truth, atol=1e-5)
    expected = np.zeros((64, 64), bool)
    expected[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(canvas.mask, expected)


def test_two_hands_in_one_crop_move_together_and_separate_crops_move_apart():
    rng = np.random.default_rng(2)
    both = np.c_[rng.uniform(20, 100, (42, 2)), np.full(42, 2.0)]
    mask = np.zeros((128, 128), bool)
    mask[20:100, 20:100] = True
    image = np.full((128, 128, 3), 200, np.uint8)
    truth = similarity(1.5, 0.2, (60, 30))
    target = both.copy()
    target[:, :2] = apply(truth, both[:, :2])
    canvas = place_hands([DrawnHand(image, mask, both)], pose_with_hands(target), 320, 320)
    np.testing.assert_allclose(canvas.transforms[0], truth, atol=1e-4)  # float32 pose

    left, right = both.copy(), both.copy()
    left[21:, 2] = 0  # each crop holds one hand
    right[:21, 2] = 0
    other = similarity(0.5, -1.0, (10, 200))
    target[21:, :2] = apply(other, both[21:, :2])
    crops = [DrawnHand(image, mask, left), DrawnHand(image, mask, right)]
    canvas = place_hands(crops, pose_with_hands(target), 320, 320)
    np.testing.assert_allclose(canvas.transforms[0], truth, atol=1e-4)  # float32 pose
    np.testing.assert_allclose(canvas.transforms[1], other, atol=1e-4)  # float32 pose


def test_bad_crops_get_clear_errors():
    image, mask = np.zeros((64, 64, 3), np.uint8), np.ones((64, 64), bool)
    one_point = np.zeros((42, 3))
    one_point[0] = (10, 10, 2)
    pose = pose_with_hands(np.c_[np.ones((42, 2)), np.full(42, 2.0)])
    with pytest.raises(HandsynthError, match="hand crop 0: only 1 of its keypoints"):
        place_hands([DrawnHand(image, mask, one_point)], pose, 64, 64)
    with pytest.raises(HandsynthError, match=r"hand crop 0: the image must be \(S, S, 3\)"):
        place_hands([DrawnHand(image, mask[:10], one_point)], pose, 64, 64)
    with pytest.raises(HandsynthError, match="at least 2 distinct source points"):
        fit_similarity(np.ones((5, 2)), np.zeros((5, 2)))


def test_latent_mask_keeps_pixels_that_are_at_least_half_hand():
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:1] = True  # half of the first 2×2 block
    mask[0:1, 2:3] = True  # a quarter of the second
    mask[4:8, 4:8] = True
    got = latent_mask(mask, 2)
    expected = cv2.resize(mask.astype(np.float32), (4, 4), interpolation=cv2.INTER_AREA) >= 0.5
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] and not got[0, 1] and got[2:, 2:].all() and got.sum() == 5
    with pytest.raises(HandsynthError, match="multiple of 8"):
        latent_mask(np.zeros((60, 64)), 8)


def test_canvas_from_a_real_image_and_its_hand_mask(real_crop):
    mask = np.zeros((256, 256), np.uint8)
    mask[real_crop.mask] = 255
    canvas = canvas_from_mask(real_crop.image, mask)
    np.testing.assert_array_equal(canvas.mask, real_crop.mask)
    np.testing.assert_array_equal(canvas.image[canvas.mask], real_crop.image[real_crop.mask])
    assert (canvas.image[~canvas.mask] == BACKGROUND).all()
    ys, xs = np.nonzero(canvas.box)
    assert xs.max() - xs.min() == ys.max() - ys.min() and canvas.box.sum() == (xs.ptp() + 1) ** 2  # a square
    assert (canvas.box | ~canvas.mask).all()
    np.testing.assert_array_equal(canvas.latent_mask(2), latent_mask(canvas.mask, 2))


def test_small_hands_are_named_in_a_warning(caplog):
    pose = empty_pose()
    pose[91:112] = (100, 100, 2)
    pose[91, :2] = (100 + 40, 100 + 20)  # left hand: 40 px across
    pose[112:133] = (300, 300, 2)
    pose[112, :2] = (300 + 120, 300)  # right hand: 120 px across
    with caplog.at_level(logging.WARNING, logger="handsynth.twostage.outpaint.canvas"):
        assert small_hands(pose, 512, 512, 0.1) == ["left"]
    assert "left hand spans 40 px, under 10% of the 512 px image" in caplog.text
    assert small_hands(pose, 512, 512, 0.05) == []
