"""Blend masks per step (TWOSTAGE.md §6): sequential expansion, naive, bbox, none."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from handsynth.errors import HandsynthError
from handsynth.twostage.outpaint.blending import blend, blend_masks
from handsynth.twostage.outpaint.canvas import latent_mask


@pytest.fixture
def hand() -> np.ndarray:
    """A 64 px image-resolution hand mask: an 8x6 block and a lone pixel."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:28, 24:30] = True
    mask[41, 10] = True
    return mask


def grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated `pixels` times with a 3x3 square, by OpenCV."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=pixels).astype(bool)


@pytest.mark.parametrize("steps", [3, 10, 20])
def test_sequential_masks_dilate_the_image_mask_and_reduce_each_to_the_latent(hand, steps):
    masks = blend_masks(hand, steps, "sequential", unmasked_steps=2, factor=2)
    assert len(masks) == steps and all(m.shape == (32, 32) and m.dtype == bool for m in masks)
    masked = masks[: steps - 2]
    np.testing.assert_array_equal(masked[-1], latent_mask(hand, 2), "the last masked step is m_c itself")
    for i, m in enumerate(masked):  # masked step i: m_c grown by T - U - 1 - i image pixels
        np.testing.assert_array_equal(m, latent_mask(grown(hand, steps - 3 - i), 2))
    for bigger, smaller in zip(masked, masked[1:], strict=False):
        assert (bigger >= smaller).all(), "masks must be nested"
    assert all(not m.any() for m in masks[steps - 2 :]), "the last 2 steps must be unmasked"


def test_at_512_px_and_50_steps_the_expansion_stays_local():
    """TWOSTAGE.md §6: the first blend mask is a small hand grown by 47 image pixels, not 47 latent
    pixels (376 image pixels), so no step blends the whole latent."""
    hand = np.zeros((512, 512), dtype=bool)
    hand[236:276, 240:272] = True  # a 32 x 40 px hand in the middle
    masks = blend_masks(hand, 50, "sequential", unmasked_steps=2, factor=8)
    assert len(masks) == 50 and masks[0].shape == (64, 64)
    largest = max(masks, key=lambda m: int(m.sum()))
    assert largest is masks[0]
    rows, cols = np.nonzero(np.kron(largest, np.ones((8, 8), dtype=bool)))  # back at image size
    growth = [236 - rows.min(), rows.max() - 275, 240 - cols.min(), cols.max() - 271]
    assert all(abs(g - 47) <= 8 for g in growth), f"grown by {growth} px, not 47 ± 8"
    assert growth == [44, 44, 48, 48]  # 47 px, rounded to the 8 px latent grid by latent_mask
    assert not any(m.all() for m in masks), "a step blends the whole latent"
    assert int(masks[0].sum()) == 16 * 16  # latent rows and columns 24 to 39 of 64


def test_naive_uses_the_original_every_masked_step_and_bbox_the_box(hand):
    masks = blend_masks(hand, 6, "naive", unmasked_steps=2, factor=2)
    original = latent_mask(hand, 2)
    assert all(np.array_equal(m, original) for m in masks[:4]) and all(not m.any() for m in masks[4:])
    box = np.zeros_like(hand)
    box[16:32, 18:34] = True
    masks = blend_masks(hand, 6, "bbox", unmasked_steps=2, box=box, factor=2)
    assert all(np.array_equal(m, latent_mask(box, 2)) for m in masks[:4]) and all(
        not m.any() for m in masks[4:]
    )
    assert all(not m.any() for m in blend_masks(hand, 6, "none", unmasked_steps=0, factor=2))
    assert np.array_equal(blend_masks(hand, 4, "sequential", unmasked_steps=0, factor=2)[-1], original)
    assert all(not m.any() for m in blend_masks(hand, 2, "sequential", unmasked_steps=2, factor=2))


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
    mask = torch.from_numpy(latent_mask(grown(hand, 3), 2)).float()
    out = blend(latents, known, mask)
    inside = mask.bool().expand_as(out)
    assert torch.equal(out[inside], known[inside]) and torch.equal(out[~inside], latents[~inside])
