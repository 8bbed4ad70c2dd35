"""The tiny SD-inpainting and OpenPose-ControlNet folders load with the real checkpoints' classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

PROMPT = "a man in a blue shirt raising his hand"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def inpaint(tiny_inpaint_path):
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpaint_path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint_once(pipe, mask: Image.Image, seed: int = 0) -> np.ndarray:
    image = Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8))
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        PROMPT, image=image, mask_image=mask, num_inference_steps=3, generator=generator, output_type="np"
    ).images[0]


def test_tiny_inpainting_pipeline_runs_seeded_and_reads_its_mask(inpaint):
    assert inpaint.unet.config.in_channels == 9 and inpaint.vae_scale_factor == 2
    half = np.zeros((64, 64), np.uint8)
    half[:, 32:] = 255
    first, again = inpaint_once(inpaint, Image.fromarray(half)), inpaint_once(inpaint, Image.fromarray(half))
    np.testing.assert_array_equal(first, again)
    other_mask = inpaint_once(inpaint, Image.fromarray(255 - half))
    assert np.abs(first - other_mask).mean() > 1e-3, "the 9-channel UNet ignores the mask"
    expected_slice = np.array([0.5347, 0.6337, 0.4138, 0.3439, 0.3583, 0.4632, 0.4621, 0.3303, 0.4037])
    np.testing.assert_allclose(first[-3:, -3:, -1].flatten(), expected_slice, atol=1e-4)


def test_tiny_inpainting_shares_the_tiny_sd_parts_and_widens_its_unet(tiny_inpaint_path, tiny_sd_path):
    for part in ("vae/" + WEIGHTS, "text_encoder/model.safetensors"):
        assert (tiny_inpaint_path / part).read_bytes() == (tiny_sd_path / part).read_bytes(), part
    wide = load_file(tiny_inpaint_path / "unet" / WEIGHTS)
    plain = load_file(tiny_sd_path / "unet" / WEIGHTS)
    assert wide["conv_in.weight"].shape == (32, 9, 3, 3)
    assert torch.equal(wide["conv_in.weight"][:, :4], plain["conv_in.weight"])
    ratio = wide["conv_in.weight"][:, 4:].std() / plain["conv_in.weight"].std()
    assert 0.8 < ratio.item() < 1.2
    assert all(torch.equal(wide[k], plain[k]) for k in plain if k != "conv_in.weight")


def test_tiny_controlnet_is_the_tiny_unets_with_trained_zero_convs(tiny_controlnet_path, tiny_sd_path):
    controlnet = ControlNetModel.from_pretrained(tiny_controlnet_path)
    assert controlnet.config.conditioning_embedding_out_channels == [16, 32]
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet")
    fresh = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).state_dict()
    ours = controlnet.state_dict()
    zero_convs = [k for k in ours if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    assert zero_convs and all(not torch.equal(ours[k], fresh[k]) for k in zero_convs)
    copied = [k for k in ours if k.startswith(("down_blocks", "mid_block", "conv_in", "time_embedding"))]
    assert copied and all(torch.equal(ours[k], fresh[k]) for k in copied)

    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 4, 32, 32, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    e = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        down, mid = controlnet(x, torch.tensor([500]), e, controlnet_cond=cond, return_dict=False)
        unchanged = controlnet(x, torch.tensor([500]), e, controlnet_cond=cond, return_dict=False)[1]
        other = controlnet(x, torch.tensor([500]), e, controlnet_cond=1 - cond, return_dict=False)[1]
    assert [tuple(d.shape) for d in down] == [(1, 32, 32, 32)] * 2 + [(1, 32, 16, 16), (1, 64, 16, 16)]
    assert torch.equal(mid, unchanged) and (mid - other).abs().max() > 1e-3, "the condition is ignored"
    assert mid.abs().mean() > 1e-2


def test_tiny_writers_are_deterministic_and_skip_a_complete_folder(tmp_path, tiny_controlnet_path):
    from handsynth.tiny.controlnet import write_tiny_controlnet

    again = write_tiny_controlnet(tmp_path / "cn", seed=0)
    assert (again / WEIGHTS).read_bytes() == (tiny_controlnet_path / WEIGHTS).read_bytes()
    stamp = (again / WEIGHTS).stat().st_mtime_ns
    write_tiny_controlnet(tmp_path / "cn", seed=1)
    assert (again / WEIGHTS).stat().st_mtime_ns == stamp
