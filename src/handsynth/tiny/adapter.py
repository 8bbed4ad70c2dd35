"""A tiny OpenPose T2I-Adapter, standing in for `TencentARC/t2iadapter_openpose_sd14v1`.

The real one is a "full_adapter" whose features, one per UNet down block, halve in size from block to
block, as SD's UNet does before each of its cross-attention blocks. The tiny SD's UNet adds an adapter
feature after its first block (a plain block, already downsampled) and inside its second (cross-
attention, no downsampling), so both features have the same size: the "full_adapter_xl" layout, whose
first two blocks keep the size, with a pixel unshuffle of 4 (the tiny VAE's ×2 and the first block's
downsampling ×2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import T2IAdapter

from handsynth.tiny.sd import TINY_UNET, write_model

DOWNSCALE = 4


def build_tiny_t2i_adapter(seed: int = 0) -> T2IAdapter:
    """A T2I-Adapter for the tiny SD's UNet, random weights from `seed`."""
    torch.manual_seed(seed)
    return T2IAdapter(
        in_channels=3,
        channels=list(TINY_UNET["block_out_channels"]),
        num_res_blocks=1,
        downscale_factor=DOWNSCALE,
        adapter_type="full_adapter_xl",
    )


def write_tiny_t2i_adapter(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny T2I-Adapter to `folder` (skipped if already complete); return the folder."""
    return write_model(folder, build_tiny_t2i_adapter, seed)
