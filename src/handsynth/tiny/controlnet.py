"""A tiny OpenPose-style ControlNet, standing in for `lllyasviel/control_v11p_sd15_openpose`.

It is `ControlNetModel.from_unet` of the tiny SD's UNet, as the real one was made from SD 1.5's. Its
condition encoder ends at 32 channels after one ×2 downsampling, to match the tiny VAE's ×2 (the
default config downsamples ×8, STACK.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from handsynth.tiny.sd import TINY_UNET, write_model

CONDITION_CHANNELS = (16, 32)
ZERO_CONV_SCALE = 0.05


def build_tiny_controlnet(seed: int = 0) -> ControlNetModel:
    """The ControlNet of the tiny SD's UNet (seed `seed`), its zero convolutions given seeded weights.

    A released ControlNet's "zero" convolutions are trained and far from zero. Left at zero, the tiny
    ControlNet would add nothing to the UNet and pass no gradient back to a LoRA inside it.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)  # the same weights as the tiny SD's UNet for this seed
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITION_CHANNELS)
    generator = torch.Generator().manual_seed(seed + 2)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(ZERO_CONV_SCALE * torch.randn(conv.weight.shape, generator=generator))
            conv.bias.copy_(ZERO_CONV_SCALE * torch.randn(conv.bias.shape, generator=generator))
    return controlnet


def write_tiny_controlnet(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny ControlNet to `folder` (skipped if already complete); return the folder."""
    return write_model(folder, build_tiny_controlnet, seed)
