"""HandGeneratorPipeline on a tiny hand generator: the folder, guidance that keeps the pose, the masks,
pinned pixels and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from handsynth.errors import HandsynthError
from handsynth.training.diffusion import PromptEncoder, encode_text
from handsynth.twostage.data.heatmaps import finger_heatmaps
from handsynth.twostage.handgen.model import build_mask_head, widen_conv_in
from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline, save_hand_generator

PROMPTS = ["a hand with a red ring", "a tanned hand"]
STEPS = 4  # few steps keep the test fast; the loop is the same at 50
SIZE = 64


def spread_hand(cx: float, cy: float) -> np.ndarray:
    """21 keypoints (v = 2): the wrist at (cx, cy), each finger a column of 4 points above it."""
    hand = np.zeros((21, 3), np.float32)
    hand[0] = (cx, cy, 2)
    for f in range(5):
        for j in range(4):
            hand[1 + 4 * f + j] = (cx - 12 + 6 * f, cy - 8 - 6 * j, 2)
    return hand


KEYPOINTS = [
    np.concatenate([spread_hand(22, 56), np.zeros((21, 3), np.float32)]),  # a left hand only
    np.concatenate([spread_hand(20, 58), spread_hand(44, 58)]),  # both hands
]


@pytest.fixture(scope="module")
def handgen_folder(tiny_sd_path, tmp_path_factory) -> Path:
    """An untrained hand generator on the tiny SD, written as `handsynth handgen train` writes it."""
    unet = widen_conv_in(
        UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet"),
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    head = build_mask_head(unet, vae_scale=2)
    folder = tmp_path_factory.mktemp("models") / "handgen"
    settings = {"resolution": SIZE, "steps": 50, "guidance": 7.5, "mask_loss_weight": 0.05}
    return save_hand_generator(folder, str(tiny_sd_path), unet, head, settings)


@pytest.fixture(scope="module")
def pipe(handgen_folder) -> HandGeneratorPipeline:
    return HandGeneratorPipeline.from_pretrained(handgen_folder, device="cpu")


def record_unet_calls(pipe: HandGeneratorPipeline) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    return calls, pipe.model.unet.register_forward_pre_hook(hook, with_kwargs=True)


def expected_condition(hands: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """c_p computed independently: the heatmaps and the mask resized with PIL's bilinear."""
    maps = [*finger_heatmaps(hands, SIZE), mask if mask is not None else np.zeros((SIZE, SIZE), np.float32)]
    latent = SIZE // 2
    return np.stack(
        [np.asarray(Image.fromarray(m).resize((latent, latent), Image.Resampling.BILINEAR)) for m in maps]
    )


def test_guidance_keeps_the_same_heatmaps_and_mask_in_both_branches(pipe):
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[20:60, 10:50] = 1.0
    calls, handle = record_unet_calls(pipe)
    batches = []
    text_handle = pipe.text_encoder.register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    try:
        pipe(PROMPTS, keypoints=KEYPOINTS, mask=[mask, None], num_inference_steps=STEPS, guidance_scale=5.0)
    finally:
        handle.remove()
        text_handle.remove()
    assert len(calls) == STEPS
    assert batches == [3]  # the empty prompt once for both hands, and the two prompts, in one batch
    empty = encode_text(pipe.tokenizer, pipe.text_encoder, ["", ""])
    text = encode_text(pipe.tokenizer, pipe.text_encoder, PROMPTS)
    conditions = [expected_condition(KEYPOINTS[0], mask), expected_condition(KEYPOINTS[1], None)]
    for sample, embeddings in calls:
        assert sample.shape == (4, 15, 32, 32)
        uncond, cond = sample.chunk(2)
        assert torch.equal(uncond, cond)  # the same latents and the same c_p in both branches
        np.testing.assert_allclose(cond[:, 4:].numpy(), np.stack(conditions), atol=1e-6)
        assert torch.equal(embeddings[:2], empty) and torch.equal(embeddings[2:], text)
    assert np.abs(conditions[0][10]).max() > 0.9 and np.abs(conditions[1][10]).max() == 0


def test_without_guidance_there_is_one_branch(pipe):
    calls, handle = record_unet_calls(pipe)
    try:
        pipe(PROMPTS[0], keypoints=KEYPOINTS[0], num_inference_steps=2, guidance_scale=1.0)
    finally:
        handle.remove()
    assert [tuple(s.shape) for s, _ in calls] == [(1, 15, 32, 32)] * 2
    assert torch.equal(calls[0][1], encode_text(pipe.tokenizer, pipe.text_encoder, PROMPTS[:1]))


def test_images_and_masks_are_pinned_and_the_mask_is_the_last_steps_conditional_one(pipe):
    masks_seen = []
    handle = pipe.model.mask_head.register_forward_hook(lambda m, args, out: masks_seen.append(out.clone()))
    try:
        out = pipe(
            PROMPTS,
            keypoints=KEYPOINTS,
            num_inference_steps=STEPS,
            generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        )
    finally:
        handle.remove()
    assert [image.size for image in out.images] == [(SIZE, SIZE)] * 2
    assert all(m.shape == (SIZE, SIZE) and m.dtype == np.float32 for m in out.masks)
    assert all(
        np.array_equal(b, m > 0.5) and b.dtype == bool
        for b, m in zip(out.masks_binary, out.masks, strict=True)
    )
    last = masks_seen[-1]
    assert last.shape == (4, 1, SIZE, SIZE)
    np.testing.assert_array_equal(np.stack(out.masks), last[2:, 0].numpy())
    pixels = np.asarray(out.images[0]).astype(int)
    np.testing.assert_allclose(
        pixels[-3:, -3:, 0].flatten(), [102, 112, 148, 133, 126, 157, 169, 151, 114], atol=1
    )
    expected_mask = [0.488550, 0.505130, 0.525838, 0.528336, 0.393220, 0.504258, 0.526513, 0.407605, 0.538758]
    np.testing.assert_allclose(out.masks[0][-3:, -3:].flatten(), expected_mask, atol=1e-4)
    assert [m.mean() for m in out.masks] == pytest.approx([0.482305, 0.481222], abs=1e-4)
    again = pipe(
        PROMPTS[1],
        keypoints=KEYPOINTS[1],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1),
    )
    # alone, with its own generator, the second hand comes out the same (to batch-size rounding)
    np.testing.assert_allclose(np.asarray(again.images[0]).astype(int), np.asarray(out.images[1]), atol=1)


def test_the_folder_settings_give_the_defaults(pipe, handgen_folder):
    assert pipe.resolution == SIZE and pipe.settings["steps"] == 50
    assert pipe.scheduler.config.clip_sample is False and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_bad_input_is_a_clear_error(pipe, tmp_path):
    with pytest.raises(HandsynthError, match=r"keypoints must be \(42, 3\).*got shape \(1, 21, 3\)"):
        pipe("a hand", keypoints=np.zeros((21, 3)))
    with pytest.raises(HandsynthError, match="NaN or inf"):
        pipe("a hand", keypoints=np.full((42, 3), np.nan))
    with pytest.raises(HandsynthError, match="mask 0 is 48x32 but the image is 64x64"):
        pipe("a hand", keypoints=KEYPOINTS[0], mask=np.zeros((32, 48), np.float32))
    with pytest.raises(HandsynthError, match=r"must hold values in \[0, 1\]"):
        pipe("a hand", keypoints=KEYPOINTS[0], mask=np.full((SIZE, SIZE), 2.0, np.float32))
    with pytest.raises(HandsynthError, match="3 prompts for 2 keypoint sets"):
        pipe(["a", "b", "c"], keypoints=KEYPOINTS)
    with pytest.raises(HandsynthError, match="multiples of 4, got 62x64"):
        pipe("a hand", keypoints=KEYPOINTS[0], height=62, width=64)
    with pytest.raises(HandsynthError, match="another text encoder than the hand generator's"):
        pipe("a hand", keypoints=KEYPOINTS[0], prompt_encoder=PromptEncoder(pipe.model))
    with pytest.raises(HandsynthError, match="not a hand-generator folder.*handgen train"):
        HandGeneratorPipeline.from_pretrained(tmp_path, device="cpu")
