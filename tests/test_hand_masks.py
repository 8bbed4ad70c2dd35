"""twostage.masks: landmark masks, the 5×5 dilation, the SAM call site and mask files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from handsynth.errors import HandsynthError
from handsynth.perception.sam import dilate_mask
from handsynth.twostage.data.masks import LandmarkMasker, landmark_mask, make_masker, read_mask


def test_landmark_mask_covers_every_annotated_keypoint_on_the_real_photos(hagrid_mini):
    hands = 0
    for annotation in sorted((hagrid_mini / "annotations" / "test").glob("*.json")):
        for key, entry in json.loads(annotation.read_text()).items():
            path = hagrid_mini / "images" / annotation.stem / f"{key}.jpg"
            with Image.open(path) as image:
                width, height = image.size
            for landmarks in entry["hand_landmarks"]:
                hand = np.column_stack([np.asarray(landmarks) * (width, height), np.full(21, 2.0)])
                mask = landmark_mask(hand, height, width)
                inside = (hand[:, 0] < width) & (hand[:, 1] < height)
                assert mask[hand[inside, 1].astype(int), hand[inside, 0].astype(int)].all(), path
                assert mask.mean() < 0.6  # a hand, not the frame
                hands += 1
    assert hands == 39  # 33 photos, six of them with both hands annotated


def test_landmark_mask_matches_the_drawn_hands_of_synthetic_figures():
    """Against the renderer's exact masks: the landmark mask is the hand's shape (IoU >= 0.7)."""
    from handsynth.data.synthetic import render_figure

    for gesture, index in (("palm", 0), ("mute", 1), ("call", 3), ("ok", 2), ("like", 3)):
        figure = render_figure(0, gesture, index, 256)
        mask = np.zeros((256, 256), bool)
        for start in (91, 112):
            mask |= landmark_mask(figure.keypoints[start : start + 21], 256, 256)
        iou = (mask & figure.hand_mask).sum() / (mask | figure.hand_mask).sum()
        assert iou >= 0.7, (gesture, index, iou)


def test_points_with_v0_are_left_out():
    hand = np.zeros((21, 3))
    hand[:, 0], hand[:, 1], hand[:, 2] = np.linspace(20, 60, 21), 40, 2
    hand[20] = (90, 10, 0)
    mask = landmark_mask(hand, 100, 100)
    assert mask[40, 20:61].all() and not mask[5:15, 85:95].any()
    assert not landmark_mask(np.zeros((21, 3)), 100, 100).any()


def test_dilation_is_5x5():
    single = np.zeros((11, 11), bool)
    single[5, 5] = True
    np.testing.assert_array_equal(np.argwhere(dilate_mask(single)).min(0), (3, 3))
    np.testing.assert_array_equal(np.argwhere(dilate_mask(single)).max(0), (7, 7))
    assert dilate_mask(single).sum() == 25
    # the masker applies it: its masks equal scipy's binary dilation of the drawn mask
    rng = np.random.default_rng(0)
    hand = np.column_stack([rng.uniform(30, 90, (21, 2)), np.full(21, 2.0)])
    (masked,) = LandmarkMasker().hand_masks(np.zeros((120, 130, 3), np.uint8), [hand])
    expected = ndimage.binary_dilation(landmark_mask(hand, 120, 130), np.ones((5, 5), bool))
    np.testing.assert_array_equal(masked, expected)
    assert masked.sum() > landmark_mask(hand, 120, 130).sum()


def test_no_sam_id_means_landmark_masks():
    assert make_masker("").source == "landmarks"


def test_tiny_sam_through_the_masker(tmp_path):
    """The SAM call site against the SAM wrapper: the masks are the segmenter's own, dilated 5x5."""
    from handsynth.perception import sam
    from handsynth.tiny.sam import write_tiny_sam

    folder = write_tiny_sam(tmp_path / "sam")
    masker = make_masker(str(folder), "cpu")
    assert isinstance(masker.segmenter, sam.SamSegmenter) and masker.source == "sam"
    rng = np.random.default_rng(0)
    hands = [np.column_stack([rng.uniform(20, 60, (21, 2)), np.full(21, 2.0)]) for _ in range(2)]
    image = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    masks = masker.hand_masks(image, hands)
    assert len(masks) == 2 and all(m.shape == (80, 96) and m.dtype == bool for m in masks)
    direct = masker.segmenter.segment_hands(image, hands)  # dilated 5x5 by default
    assert all(np.array_equal(a, b) for a, b in zip(masks, direct, strict=True))
    assert masker.calls == 1


def test_mask_file_of_the_wrong_size_names_both_files(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(path)
    assert read_mask(path, 40, 30, "image.jpg").all()
    with pytest.raises(HandsynthError, match=r"mask\.png is 40x30, but its image image\.jpg is 64x64"):
        read_mask(path, 64, 64, "image.jpg")
    with pytest.raises(HandsynthError, match="missing.mask.png for image.jpg is missing"):
        read_mask(tmp_path / "missing.mask.png", 64, 64, "image.jpg")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(HandsynthError, match="cannot read mask file .*bad.png"):
        read_mask(tmp_path / "bad.png", 64, 64, "image.jpg")
