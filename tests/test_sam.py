"""SAM masks: the tiny SAM through the real processor path on the real photos, the prompts TWOSTAGE.md §8
asks for, the 5×5 dilation, batching and errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.sam import HAND_DILATION, SamSegmenter
from handsynth.perception.wholebody import BODY, FEET, LEFT_HAND, RIGHT_HAND, empty_pose
from handsynth.tiny.sam import IMAGE_SIZE, write_tiny_sam


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny-sam", seed=0)


@pytest.fixture
def segmenter(tiny_sam) -> SamSegmenter:
    return SamSegmenter.from_pretrained(str(tiny_sam), device="cpu")


def _photo(hagrid_mini: Path, gesture: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """A real photo and its annotated hands as (21, 3) pixel keypoints with v = 2."""
    annotations = json.loads((hagrid_mini / "annotations" / "test" / f"{gesture}.json").read_text())
    key, entry = next(iter(annotations.items()))
    image = load_rgb(hagrid_mini / "images" / gesture / f"{key}.jpg")
    height, width = image.shape[:2]
    hands = [
        np.c_[np.asarray(hand) * [width, height], np.full(21, 2.0)]
        for hand in entry["hand_landmarks"]
        if hand
    ]
    return image, hands


@pytest.fixture(scope="module")
def wide_photo(hagrid_mini) -> tuple[np.ndarray, list[np.ndarray]]:
    """hand_heart (two hands) squeezed to 300×180, keypoints scaled with it: a non-square image."""
    image, hands = _photo(hagrid_mini, "hand_heart")
    height, width = image.shape[:2]
    wide = cv2.resize(image, (300, 180), interpolation=cv2.INTER_AREA)
    return wide, [hand * [300 / width, 180 / height, 1] for hand in hands]


class _Spy:
    """Records every call of `target`'s method `name` (args, kwargs and result), then calls through."""

    def __init__(self, target, name: str) -> None:
        self.calls: list[tuple[tuple, dict, object]] = []
        method = getattr(target, name)

        def spy(*args, **kwargs):
            result = method(*args, **kwargs)
            self.calls.append((args, kwargs, result))
            return result

        setattr(target, name, spy)


class _ProcessorSpy:
    """Stands in for the SamProcessor: records each call's keyword arguments and output."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.calls: list[tuple[dict, dict]] = []

    def __call__(self, **kwargs):
        out = self.processor(**kwargs)
        self.calls.append((kwargs, out))
        return out

    def __getattr__(self, name):
        return getattr(self.processor, name)


def _independent_mask(logits: torch.Tensor, reshaped: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """SAM's post-processing written out: low-res logits -> padded input size, crop the padding,
    -> the image's size, threshold at 0."""
    up = F.interpolate(
        logits[None, None].float(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    up = up[..., : reshaped[0], : reshaped[1]]
    return (F.interpolate(up, size, mode="bilinear", align_corners=False) > 0)[0, 0].numpy()


def test_tiny_sam_runs_the_real_processor_path_on_a_non_square_photo(segmenter, wide_photo):
    from transformers import SamImageProcessorPil

    image, hands = wide_photo
    assert isinstance(segmenter.processor.image_processor, SamImageProcessorPil)
    processor = segmenter.processor = _ProcessorSpy(segmenter.processor)
    forward = _Spy(segmenter.model, "forward")

    masks = segmenter.segment_hands(image, hands, dilate=0)
    assert len(masks) == 2 and all(m.shape == (180, 300) and m.dtype == bool for m in masks)
    # one processor call and one decoder call for both hands (both have 21 points)
    ((sent, inputs),) = processor.calls
    assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert inputs["original_sizes"].tolist() == [[180, 300]]
    reshaped = (int(180 * IMAGE_SIZE / 300 + 0.5), IMAGE_SIZE)  # longest side to 64: 38 × 64
    assert inputs["reshaped_input_sizes"].tolist() == [list(reshaped)]
    ((_, kwargs, out),) = forward.calls
    # the model gets the keypoints and their box, rescaled to the resized image (computed here)
    scale = np.array([reshaped[1] / 300, reshaped[0] / 180])
    for i, hand in enumerate(hands):
        np.testing.assert_allclose(kwargs["input_points"][0, i].numpy(), hand[:, :2] * scale, rtol=1e-6)
        box = np.r_[hand[:, :2].min(axis=0), hand[:, :2].max(axis=0)] * np.tile(scale, 2)
        np.testing.assert_allclose(kwargs["input_boxes"][0, i].numpy(), box, rtol=1e-6)
    assert kwargs["input_labels"].tolist() == [[[1] * 21, [1] * 21]]
    assert kwargs["multimask_output"] is False and out.pred_masks.shape == (1, 2, 1, 32, 32)
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(mask, _independent_mask(out.pred_masks[0, i, 0], reshaped, (180, 300)))


def test_prompts_are_the_present_keypoints_and_their_box(segmenter, wide_photo):
    image, (hand, _) = wide_photo
    partial = hand.copy()
    partial[[4, 8, 12, 20], 2] = 0  # fingertips absent
    partial[[3, 7], 2] = 1  # labelled, not visible: still a prompt
    processor = segmenter.processor = _ProcessorSpy(segmenter.processor)
    segmenter.segment_hands(image, [partial])
    ((sent, _),) = processor.calls
    present = hand[partial[:, 2] > 0, :2]
    np.testing.assert_array_equal(np.array(sent["input_points"]), present[None, None])
    assert sent["input_labels"] == [[[1] * 17]]
    np.testing.assert_array_equal(
        np.array(sent["input_boxes"]), np.r_[present.min(axis=0), present.max(axis=0)][None, None]
    )


def test_hand_masks_are_dilated_5x5(segmenter, wide_photo):
    image, hands = wide_photo
    plain = segmenter.segment_hands(image, hands, dilate=0)
    dilated = segmenter.segment_hands(image, hands)
    assert HAND_DILATION == 5
    for raw, mask in zip(plain, dilated, strict=True):
        expected = cv2.dilate(raw.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        np.testing.assert_array_equal(mask, expected)
        assert mask.sum() > raw.sum() and (mask | raw).sum() == mask.sum()
    three = segmenter.segment_hands(image, hands, dilate=3)[0]
    assert plain[0].sum() < three.sum() < dilated[0].sum()


def test_pinned_masks_of_the_seeded_tiny_sam(segmenter, hagrid_mini):
    """Pixel counts and IoU predictions from the seed-0 tiny SAM on the 'call' photo (296×296):
    pins the writer's config, the processor settings and the post-processing."""
    image, hands = _photo(hagrid_mini, "call")
    forward = _Spy(segmenter.model, "forward")
    raw = segmenter.segment_hands(image, hands, dilate=0)[0]
    dilated = segmenter.segment_hands(image, hands)[0]
    assert raw.shape == (296, 296)
    assert (int(raw.sum()), int(dilated.sum())) == (EXPECTED_RAW, EXPECTED_DILATED)
    assert raw[::37, 150].tolist() == EXPECTED_COLUMN
    iou = forward.calls[0][2].iou_scores.flatten().tolist()
    np.testing.assert_allclose(iou, EXPECTED_IOU, rtol=1e-4)


EXPECTED_RAW, EXPECTED_DILATED = 35901, 53280  # random masks are ragged: 5×5 dilation adds half
EXPECTED_COLUMN = [True, False, False, False, False, True, True, True]
EXPECTED_IOU = [0.0008103115]


def test_batched_images_give_the_one_at_a_time_masks(segmenter, hagrid_mini, capsys):
    photos = [_photo(hagrid_mini, g) for g in ("call", "hand_heart", "like", "take_photo", "ok")]
    one_by_one = [segmenter.segment_hands(image, hands) for image, hands in photos]
    encoder = _Spy(segmenter.model, "get_image_embeddings")
    # generators in, as the dataset build passes them
    batched = segmenter.segment_hands_batch(
        (image for image, _ in photos), (hands for _, hands in photos), batch_size=3, total=len(photos)
    )
    batched = list(batched)
    assert [len(args[0]) for args, _, _ in encoder.calls] == [3, 2]
    assert [len(masks) for masks in batched] == [1, 2, 1, 2, 1]
    for single, many in zip(one_by_one, batched, strict=True):
        for a, b in zip(single, many, strict=True):
            np.testing.assert_array_equal(a, b)
    err = capsys.readouterr().err
    assert "SAM hand masks" in err and "5/5" in err


def test_hands_with_different_point_counts_get_their_own_decoder_call(segmenter, wide_photo):
    image, (left, right) = wide_photo
    partial = left.copy()
    partial[15:, 2] = 0
    forward = _Spy(segmenter.model, "forward")
    together = segmenter.segment_hands(image, [left, partial, right])
    assert [kwargs["input_points"].shape[1:3] for _, kwargs, _ in forward.calls] == [(2, 21), (1, 15)]
    alone = [segmenter.segment_hands(image, [hand])[0] for hand in (left, partial, right)]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a, b)
    assert segmenter.segment_hands(image, []) == []


def test_multimask_takes_the_mask_with_the_best_predicted_iou(tiny_sam, wide_photo):
    image, hands = wide_photo
    segmenter = SamSegmenter.from_pretrained(str(tiny_sam), device="cpu", multimask=True)
    forward = _Spy(segmenter.model, "forward")
    masks = segmenter.segment_hands(image, hands, dilate=0)
    ((_, kwargs, out),) = forward.calls
    assert kwargs["multimask_output"] is True and out.pred_masks.shape[2] == 3
    reshaped = (38, IMAGE_SIZE)
    for i, mask in enumerate(masks):
        best = int(out.iou_scores[0, i].argmax())
        np.testing.assert_array_equal(
            mask, _independent_mask(out.pred_masks[0, i, best], reshaped, (180, 300))
        )


def test_person_mask_is_prompted_with_the_body_and_boxed_around_everything(segmenter, wide_photo):
    image, (left, right) = wide_photo
    pose = empty_pose()
    rng = np.random.default_rng(0)
    pose[BODY] = np.c_[rng.uniform(100, 200, (17, 2)), np.full(17, 2)]
    pose[BODY][[13, 14], 2] = 0  # knees absent
    pose[FEET] = 0
    pose[LEFT_HAND], pose[RIGHT_HAND] = left, right
    processor = segmenter.processor = _ProcessorSpy(segmenter.processor)
    mask = segmenter.segment_person(image, pose)
    assert mask.shape == (180, 300) and mask.dtype == bool
    ((sent, _),) = processor.calls
    body = pose[BODY][pose[BODY][:, 2] > 0, :2]
    np.testing.assert_allclose(np.array(sent["input_points"])[0, 0], body, rtol=1e-6)
    everything = pose[pose[:, 2] > 0, :2]
    np.testing.assert_allclose(
        np.array(sent["input_boxes"])[0, 0], np.r_[everything.min(axis=0), everything.max(axis=0)], rtol=1e-6
    )
    batched = list(segmenter.segment_person_batch([image, image[:, ::-1].copy()], [pose, pose], batch_size=2))
    np.testing.assert_array_equal(batched[0], mask)
    assert batched[1].shape == (180, 300)


def test_bad_inputs_get_clear_errors(segmenter, wide_photo):
    image, (hand, _) = wide_photo
    with pytest.raises(HandsynthError, match=r"photo\.jpg: SAM takes an \(H, W, 3\) uint8 RGB array"):
        segmenter.segment_hands(image.astype(np.float32), [hand], name="photo.jpg")
    with pytest.raises(HandsynthError, match="uint8 RGB"):
        segmenter.segment_hands(image[..., 0], [hand])
    absent = hand.copy()
    absent[:, 2] = 0
    with pytest.raises(HandsynthError, match="image, hand 1 has no present keypoints"):
        segmenter.segment_hands(image, [hand, absent])
    with pytest.raises(HandsynthError, match=r"hand 0: a hand is 21 keypoints.*\(42, 3\)"):
        segmenter.segment_hands(image, [np.zeros((42, 3))])
    with pytest.raises(HandsynthError, match="b.jpg, hand 0 has no present"):
        list(segmenter.segment_hands_batch([image, image], [[hand], [absent]], names=["a.jpg", "b.jpg"]))
    with pytest.raises(HandsynthError, match="the body has no present keypoints"):
        segmenter.segment_person(image, empty_pose())
    with pytest.raises(HandsynthError, match="133 COCO-WholeBody"):
        segmenter.segment_person(image, np.zeros((17, 3)))


def test_an_unloadable_sam_names_the_setting(tmp_path):
    with pytest.raises(HandsynthError) as err:
        SamSegmenter.from_pretrained("facebook/sam-vit-does-not-exist", device="cpu")
    message = str(err.value)
    assert "facebook/sam-vit-does-not-exist" in message and "HF_HUB_OFFLINE" in message
    assert "set pose.sam_model to its folder" in message and "empty pose.sam_model" in message
    with pytest.raises(HandsynthError, match="local folder"):
        SamSegmenter.from_pretrained(str(tmp_path), device="cpu", config_key="eval.sam_model")


def test_half_precision_runs_the_same_path(tiny_sam, segmenter, wide_photo):
    """fp16 (the default on CUDA) casts pixels, points and boxes to the model's dtype; its masks
    agree with fp32's on nearly every pixel."""
    image, hands = wide_photo
    half = SamSegmenter.from_pretrained(str(tiny_sam), device="cpu", dtype="float16")
    assert half.model.dtype == torch.float16 and segmenter.model.dtype == torch.float32
    for a, b in zip(half.segment_hands(image, hands), segmenter.segment_hands(image, hands), strict=True):
        assert a.shape == b.shape == (180, 300) and (a == b).mean() > 0.95
    with pytest.raises(HandsynthError, match="unknown dtype 'fp8'"):
        SamSegmenter.from_pretrained(str(tiny_sam), device="cpu", dtype="fp8")
