"""OpenPose condition images: the documented order, colours and sizes (TWOSTAGE.md)."""

from __future__ import annotations

import numpy as np
import pytest

from handsynth.errors import HandsynthError
from handsynth.perception import wholebody
from handsynth.twostage.data.skeleton import draw_openpose, openpose_body


def standing_pose() -> np.ndarray:
    """A front-facing figure on a 512 canvas, every body point visible, hands and face present."""
    pose = wholebody.empty_pose()
    body = {
        0: (256, 80), 1: (266, 70), 2: (246, 70), 3: (276, 76), 4: (236, 76),  # nose, eyes, ears
        5: (306, 140), 6: (206, 140), 7: (330, 210), 8: (182, 210), 9: (340, 280), 10: (172, 280),
        11: (286, 300), 12: (226, 300), 13: (290, 390), 14: (222, 390), 15: (292, 470), 16: (220, 470),
    }  # fmt: skip
    for i, (x, y) in body.items():
        pose[i] = (x, y, 2)
    for side, (wx, wy) in (("left", (340, 300)), ("right", (172, 300))):
        hand = pose[wholebody.HANDS[side]]
        hand[:] = [(wx + 6 * (k % 5) - 12, wy + 6 * (k // 5), 2) for k in range(21)]
    pose[wholebody.FACE] = [(236 + 2 * k % 40, 60 + k // 20 * 8, 2) for k in range(68)]
    return pose


def test_body_keypoints_follow_the_openpose_order_with_the_neck_between_the_shoulders():
    pose = standing_pose()
    body = openpose_body(pose)
    assert tuple(body[1, :2]) == (256.0, 140.0)  # neck = mean of shoulders 5 and 6
    assert tuple(body[2, :2]) == (206.0, 140.0)  # OpenPose 2 is the right shoulder, COCO 6
    assert tuple(body[7, :2]) == (340.0, 280.0)  # OpenPose 7 is the left wrist, COCO 9
    assert tuple(body[17, :2]) == (276.0, 76.0)  # OpenPose 17 is the left ear, COCO 3
    pose[5, 2] = 0
    assert openpose_body(pose)[1, 2] == 0  # no neck without both shoulders


def test_limb_midpoints_are_60_percent_and_joints_full_colour():
    pose = standing_pose()
    image = draw_openpose(pose, 512, 512, variant="body")
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    # limb 6 joins the neck (256, 140) and the right hip (226, 300): colour 6 is (0, 255, 0)
    assert tuple(image[220, 241]) == (0, 153, 0)
    # limb 9 joins the neck and the left hip (286, 300): colour 9 is (0, 255, 255)
    assert tuple(image[220, 271]) == (0, 153, 153)
    # limb 2 (right shoulder 206,140 -> right elbow 182,210), colour 2 (255, 170, 0)
    assert tuple(image[175, 194]) == (153, 102, 0)
    # joints drawn last at full colour: OpenPose 4 (right wrist, COCO 10) is (170, 255, 0)
    assert tuple(image[280, 172]) == (170, 255, 0)
    assert tuple(image[140, 256]) == (255, 85, 0)  # the neck, OpenPose 1
    assert tuple(image[5, 5]) == (0, 0, 0)  # background stays black
    assert not (image[300, 340] == (0, 0, 255)).all()  # no hands in the body variant


def test_hands_and_face_are_drawn_in_their_variants():
    pose = standing_pose()
    body_only = draw_openpose(pose, 512, 512, variant="body")
    hands = draw_openpose(pose, 512, 512, variant="body_hands")
    full = draw_openpose(pose, 512, 512, variant="full")
    # hand points are blue circles of radius 4: the left hand's point 20 at (352, 324)
    x, y = pose[wholebody.LEFT_HAND][20, :2].astype(int)
    assert tuple(hands[y, x]) == (0, 0, 255)
    # hand edge 0 (wrist -> thumb 1) is drawn in HSV (0, 1, 1) = red, 2 px wide, between the points
    assert not np.array_equal(hands, body_only)
    x, y = pose[wholebody.FACE][0, :2].astype(int)
    assert tuple(full[y, x]) == (255, 255, 255) and tuple(hands[y, x]) != (255, 255, 255)


def test_sizes_scale_with_the_image():
    pose = standing_pose()
    small = draw_openpose(pose * np.array([0.5, 0.5, 1], np.float32), 256, 256, variant="body")
    big = draw_openpose(pose, 512, 512, variant="body")
    # the neck's joint circle: radius 4 at 512, 2 at 256
    assert (big[140, 256 - 4 : 256 + 5] == (255, 85, 0)).all(axis=1).sum() == 9
    assert (small[70, 128 - 2 : 128 + 3] == (255, 85, 0)).all(axis=1).sum() == 5


def test_absent_points_are_skipped_and_bad_input_named():
    pose = wholebody.empty_pose()
    assert not draw_openpose(pose, 64, 64).any()
    with pytest.raises(HandsynthError, match="unknown skeleton variant 'hands'"):
        draw_openpose(pose, 64, 64, variant="hands")
    with pytest.raises(HandsynthError, match="133 COCO-WholeBody"):
        draw_openpose(np.zeros((18, 3)), 64, 64)
