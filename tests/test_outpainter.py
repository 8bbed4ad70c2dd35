"""Stage 2 on tiny models: the blending sampler, the paste, and the reference it must agree with."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from twostage_data import toy_pose

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HAND_INDICES
from handsynth.twostage.data.skeleton import draw_openpose
from handsynth.twostage.outpaint import sampler
from handsynth.twostage.outpaint.blending import blend_masks
from handsynth.twostage.outpaint.canvas import Canvas, DrawnHand, latent_mask, place_hands
from handsynth.twostage.outpaint.outpainter import Outpainter
from handsynth.twostage.outpaint.sampler import preview_steps

PROMPT = "a man in a blue shirt raising both hands"
SIZE = 64


@pytest.fixture(scope="module")
def outpainter(tiny_inpaint_path, tiny_controlnet_path) -> Outpainter:
    return Outpainter.from_pretrained(tiny_inpaint_path, tiny_controlnet_path, device="cpu")


@pytest.fixture(scope="module")
def pose() -> np.ndarray:
    return toy_pose(SIZE)


@pytest.fixture(scope="module")
def canvas(pose):
    return hand_canvas(pose)


def hand_canvas(pose):
    """Two 32 px hand crops (a skin-coloured disc on a striped background) placed on the toy pose."""
    yy, xx = np.mgrid[:32, :32]
    disc = (xx - 16) ** 2 + (yy - 13) ** 2 < 12**2
    image = np.where(disc[..., None], np.uint8([220, 170, 140]), np.uint8([40, 90, 40]))
    image[(yy % 4 == 0) & ~disc] = 255  # a striped background, which must not reach the canvas
    crops = []
    for side in (0, 1):
        keypoints = np.zeros((42, 3))
        hand = pose[HAND_INDICES][21 * side : 21 * side + 21].copy()
        lo, hi = hand[:, :2].min(axis=0), hand[:, :2].max(axis=0)
        keypoints[21 * side : 21 * side + 21] = np.c_[
            (hand[:, :2] - lo) / (hi - lo).max() * 24 + 4, hand[:, 2]
        ]
        crops.append(DrawnHand(image, disc, keypoints))
    return place_hands(crops, pose, SIZE, SIZE)


def run(outpainter, pose, canvas, seed=0, **settings):
    settings = {"steps": 6, "previews": 2, **settings}
    return outpainter(
        PROMPT, pose, canvas, generator=torch.Generator().manual_seed(seed), progress=False, **settings
    )


def test_stage2_is_deterministic_for_a_seed_and_pinned(outpainter, pose, canvas):
    first, again, other = (
        run(outpainter, pose, canvas),
        run(outpainter, pose, canvas),
        run(outpainter, pose, canvas, 1),
    )
    np.testing.assert_array_equal(first.image, again.image)
    assert np.abs(first.image.astype(int) - other.image).mean() > 1
    assert first.image.shape == (SIZE, SIZE, 3) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.condition, draw_openpose(pose, SIZE, SIZE, "full"))
    assert sorted(first.previews) == [2, 5] and first.previews[5].shape == (SIZE, SIZE, 3)
    assert canvas.mask.sum() == 545 and latent_mask(canvas.mask, 2).sum() == 142
    assert not (canvas.image == 255).all(axis=-1).any(), "the crops' backgrounds reached the canvas"
    assert [int(m.sum()) for m in first.blend_masks] == [282, 224, 188, 142, 0, 0]
    expected_slice = np.array([102, 112, 159, 125, 119, 164, 172, 151, 113])
    np.testing.assert_allclose(first.image[-3:, -3:, 0].flatten(), expected_slice, atol=1)
    expected_latent = torch.tensor([-7.1674, -7.4170, 5.0845, -12.1571])
    torch.testing.assert_close(first.latents[0, :, 0, 0], expected_latent, atol=1e-3, rtol=0)


def test_the_paste_puts_back_every_canvas_pixel_inside_m_c_exactly(outpainter, pose, canvas):
    result = run(outpainter, pose, canvas)
    strip = result.strip(masks=2)  # canvas, m_c, condition, 2 blend masks, 2 previews, decoded, image
    assert strip.shape == (SIZE, 9 * SIZE, 3)
    np.testing.assert_array_equal(strip[:, :SIZE], canvas.image)
    np.testing.assert_array_equal(strip[::2, 3 * SIZE : 4 * SIZE : 2, 0] > 0, result.blend_masks[1])
    np.testing.assert_array_equal(strip[:, -SIZE:], result.image)
    inside = canvas.mask
    np.testing.assert_array_equal(result.image[inside], canvas.image[inside])
    np.testing.assert_array_equal(result.image[~inside], result.decoded[~inside])
    assert np.abs(result.decoded[inside].astype(int) - canvas.image[inside]).mean() > 5, "nothing to paste"
    unpasted = run(outpainter, pose, canvas, paste=False)
    np.testing.assert_array_equal(unpasted.image, result.decoded)


@pytest.mark.parametrize("blending", ["sequential", "naive", "bbox", "none"])
def test_the_loop_blends_with_the_documented_masks(outpainter, pose, canvas, blending):
    result = run(outpainter, pose, canvas, blending=blending)
    expected = blend_masks(canvas.mask, 6, blending, 2, canvas.box, factor=2)
    assert len(result.blend_masks) == 6
    for got, want in zip(result.blend_masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not result.blend_masks[-1].any() and not result.blend_masks[-2].any()
    if blending == "sequential":
        np.testing.assert_array_equal(result.blend_masks[3], latent_mask(canvas.mask, 2))
        assert result.blend_masks[0].sum() > result.blend_masks[1].sum() > result.blend_masks[3].sum()


def test_known_region_is_the_canvas_latent_noised_to_the_next_step(outpainter, pose, canvas, monkeypatch):
    """With `noised`, what goes into the mask after step i is √ᾱ·x_c + √(1−ᾱ)·ε at the next step's t,
    checked against ᾱ from SD's scaled-linear betas computed here and the seed's own noise; with
    `clean` it is x_c itself, and a last masked step leaves x_c in the final latent."""
    calls = []
    real_blend = sampler.blend
    monkeypatch.setattr(sampler, "blend", lambda x, known, m: calls.append(known) or real_blend(x, known, m))
    run(outpainter, pose, canvas, steps=4, unmasked_steps=1, blending="naive")
    models = outpainter.models
    canvas_pixels = torch.from_numpy(canvas.image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        x_c = models.vae.encode(canvas_pixels).latent_dist.mean * models.vae.config.scaling_factor
    noise = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    assert len(calls) == 3  # steps 0-2 masked, step 3 not
    for i, known in enumerate(calls):
        t = [751, 501, 251, 1][i + 1]  # DDIM's 4 timesteps with SD's steps_offset = 1
        expected = alphas[t].sqrt() * x_c + (1 - alphas[t]).sqrt() * noise
        torch.testing.assert_close(known, expected.float(), atol=1e-5, rtol=1e-5)

    calls.clear()
    result = run(outpainter, pose, canvas, steps=4, unmasked_steps=0, blending="naive", blend_noise="clean")
    assert len(calls) == 4 and all(torch.allclose(known, x_c, atol=1e-6, rtol=0) for known in calls)
    inside = torch.from_numpy(latent_mask(canvas.mask, 2)).expand(1, 4, 32, 32)
    torch.testing.assert_close(result.latents[inside], x_c[inside], atol=1e-6, rtol=0)


def test_without_blending_the_loop_is_diffusers_controlnet_inpainting(outpainter, pose, canvas):
    """`blending = "none"` and no paste: the same image as diffusers' StableDiffusionControlNetInpaintPipeline
    on the same models, seed and inputs (its VAE encode made the posterior mean, as ours)."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    models = outpainter.models
    pipe = StableDiffusionControlNetInpaintPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=models.unet,
        controlnet=models.controlnet,
        scheduler=models.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe._encode_vae_image = lambda image, generator: (
        models.vae.encode(image).latent_dist.mode() * models.vae.config.scaling_factor
    )
    # A mask made of whole 2×2 blocks: diffusers reduces masks to the latent by nearest sampling, the
    # outpainter by area; the two agree on such a mask.
    aligned = np.kron(latent_mask(canvas.mask, 2), np.ones((2, 2), dtype=bool))
    canvas = Canvas(np.where(aligned[..., None], canvas.image, np.uint8(127)), aligned, canvas.box)
    ours = run(outpainter, pose, canvas, steps=5, blending="none", paste=False)
    theirs = pipe(
        PROMPT,
        image=Image.fromarray(canvas.image),
        mask_image=Image.fromarray(np.uint8(~canvas.mask) * 255),
        control_image=Image.fromarray(ours.condition),
        num_inference_steps=5,
        guidance_scale=7.5,
        controlnet_conditioning_scale=1.0,  # this pipeline's default is 0.5
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    difference = np.abs(ours.decoded.astype(float) - np.round(theirs * 255))
    assert difference.max() <= 1, f"differs from diffusers by up to {difference.max()} levels"


def test_a_plain_4_channel_unet_is_accepted(tiny_sd_path, tiny_controlnet_path, outpainter, pose, canvas):
    plain = Outpainter.from_pretrained(tiny_sd_path, tiny_controlnet_path, device="cpu")
    assert not plain.models.inpainting and outpainter.models.inpainting
    result = run(plain, pose, canvas)
    np.testing.assert_array_equal(result.image[canvas.mask], canvas.image[canvas.mask])
    assert np.abs(result.image.astype(int) - run(outpainter, pose, canvas).image).mean() > 1


def test_bad_inputs_and_small_hands(outpainter, pose, canvas, caplog, tiny_sd_path):
    with pytest.raises(HandsynthError, match="unknown outpaint setting"):
        run(outpainter, pose, canvas, stepz=3)
    with pytest.raises(HandsynthError, match="outpaint.blending must be one of"):
        run(outpainter, pose, canvas, blending="soft")
    with pytest.raises(HandsynthError, match="needs its hand mask"):
        outpainter(PROMPT, pose, canvas.image)
    with pytest.raises(HandsynthError, match="multiples of 2"):
        outpainter(PROMPT, pose, canvas.image[:63], canvas.mask[:63])
    with pytest.raises(HandsynthError, match="a pose is 133 COCO-WholeBody keypoints"):
        outpainter(PROMPT, pose[:10], canvas)
    with pytest.raises(HandsynthError, match="no outpainter LoRA"):
        Outpainter.from_pretrained(tiny_sd_path, tiny_sd_path / "unet", lora=tiny_sd_path, device="cpu")
    with caplog.at_level(logging.WARNING):
        run(outpainter, pose, canvas, steps=1, small_hand_fraction=0.5)
    assert "left hand spans" in caplog.text and "right hand spans" in caplog.text


def test_preview_steps_are_evenly_spaced_and_end_with_the_last():
    assert preview_steps(50, 4) == [11, 24, 37, 49]
    assert preview_steps(6, 2) == [2, 5] and preview_steps(3, 5) == [0, 1, 2] and preview_steps(9, 0) == []
