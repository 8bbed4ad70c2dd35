"""Blend masks per step (TWOSTAGE.md §6): sequential expansion, naive, bbox, none."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from handsynth.errors import HandsynthError
from handsynth.twostage.outpaint.blending import blend, blend_masks, dilate


@pytest.fixture
def hand() -> torch.Tensor:
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 10:14, 12:15] = 1
    mask[0, 0, 20, 5] = 1
    return mask


@pytest.mark.parametrize("steps", [3, 10, 20])
def test_sequential_masks_are_nested_largest_first_and_end_with_the_original(hand, steps):
    masks = blend_masks(hand, steps, "sequential", unmasked_steps=2)
    assert len(masks) == steps
    masked = masks[: steps - 2]
    assert torch.equal(masked[-1], hand), "the last masked step must use the hand mask itself"
    for bigger, smaller in zip(masked, masked[1:], strict=False):
        assert (bigger >= smaller).all(), "masks must be nested"
        # each is exactly one 3×3 dilation of the next (checked against OpenCV)
        expected = cv2.dilate(smaller[0, 0].numpy(), np.ones((3, 3), np.uint8), borderValue=0)
        np.testing.assert_array_equal(bigger[0, 0].numpy(), expected)
    sizes = [int(m.sum()) for m in masked]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == max(sizes)
    assert all(not m.any() for m in masks[steps - 2 :]), "the last 2 steps must be unmasked"
    # k dilations grow the 4×3 block and the single pixel into boxes k pixels wider on each side
    assert sizes == [union_area(k) for k in range(steps - 3, -1, -1)]


def union_area(k: int) -> int:
    def box(r0, r1, c0, c1):
        return max(r0 - k, 0), min(r1 + k, 31), max(c0 - k, 0), min(c1 + k, 31)

    def area(r0, r1, c0, c1):
        return max(r1 - r0 + 1, 0) * max(c1 - c0 + 1, 0)

    a, b = box(10, 13, 12, 14), box(20, 20, 5, 5)
    both = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return area(*a) + area(*b) - area(*both)


def test_naive_uses_the_original_every_masked_step_and_bbox_the_box(hand):
    masks = blend_masks(hand, 6, "naive", unmasked_steps=2)
    assert all(torch.equal(m, hand) for m in masks[:4]) and all(not m.any() for m in masks[4:])
    box = torch.zeros_like(hand)
    box[0, 0, 8:16, 9:17] = 1
    masks = blend_masks(hand, 6, "bbox", unmasked_steps=2, box=box)
    assert all(torch.equal(m, box) for m in masks[:4]) and all(not m.any() for m in masks[4:])
    assert all(not m.any() for m in blend_masks(hand, 6, "none", unmasked_steps=0))
    assert torch.equal(blend_masks(hand, 4, "sequential", unmasked_steps=0)[-1], hand)
    assert all(not m.any() for m in blend_masks(hand, 2, "sequential", unmasked_steps=2))


def test_bad_settings_are_clear_errors(hand):
    with pytest.raises(HandsynthError, match="outpaint.blending must be one of sequential, naive"):
        blend_masks(hand, 4, "soft")
    with pytest.raises(HandsynthError, match="needs the hand crops' squares"):
        blend_masks(hand, 4, "bbox")
    with pytest.raises(HandsynthError, match="unmasked_steps must be >= 0"):
        blend_masks(hand, 4, "naive", unmasked_steps=-1)


def test_blend_takes_the_known_latent_inside_the_mask(hand):
    g = torch.Generator().manual_seed(0)
    latents, known = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)
    out = blend(latents, known, dilate(hand))
    inside = dilate(hand).expand_as(out).bool()
    assert torch.equal(out[inside], known[inside]) and torch.equal(out[~inside], latents[~inside])
