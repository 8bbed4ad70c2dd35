"""A tiny SAM (Segment Anything) with random weights, built offline.

It has the layout of `facebook/sam-vit-huge` (config.json, model.safetensors, preprocessor_config.json),
so `SamSegmenter.from_pretrained(folder)` goes through the same processor path: resize of the longest
side, padding, normalisation, point and box rescaling, and `post_process_masks` back to the image size.
Its masks are noise; they are here so the mask step runs end to end without a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    SamConfig,
    SamImageProcessorPil,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

from handsynth.files import save_pretrained_atomically

IMAGE_SIZE = 64  # SAM ViT-H: 1024
PATCH = 8  # an 8×8 image embedding; SAM ViT-H: 16, so 64×64
HIDDEN = 32  # SAM: 256 in the prompt encoder and mask decoder
_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def write_tiny_sam(folder: str | Path, seed: int = 0) -> Path:
    """Write a seeded tiny SamModel and its image processor to `folder` (skipped if complete)."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in _FILES):
        return folder
    vision = SamVisionConfig(
        hidden_size=HIDDEN,
        output_channels=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_dim=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=HIDDEN // 2,
        # SAM's default (1e-10) leaves the random encoder blind to the image
        initializer_range=0.02,
    )
    config = SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=HIDDEN, image_size=IMAGE_SIZE, patch_size=PATCH, mask_input_channels=4
        ).to_dict(),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=HIDDEN,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=HIDDEN,
        ).to_dict(),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    low_res = 4 * IMAGE_SIZE // PATCH  # the mask decoder upsamples the embedding ×4
    image_processor = SamImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE},
        pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    return save_pretrained_atomically(folder, model, image_processor)
