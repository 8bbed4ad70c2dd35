"""A tiny CLIP (vision + text towers) with random weights, built offline.

It stands in for `openai/clip-vit-base-patch32` (dataset quality, CLIPSIM): the folder loads with
`CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained` like the real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
)

from handsynth.files import atomic_dir
from handsynth.tiny.sd import TEXT_DIM, clip_text_config
from handsynth.tiny.tokenizer import write_clip_tokenizer

IMAGE_SIZE = 64
PATCH = 16
HIDDEN = TEXT_DIM
PROJECTION = 32
# OpenAI CLIP's pixel statistics (as in the real preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Write a seeded tiny CLIPModel + CLIPProcessor to `folder` (skipped if complete); return it."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return folder
    with atomic_dir(folder) as tmp:
        tokenizer = write_clip_tokenizer(tmp / "tokenizer")
        config = CLIPConfig(
            text_config=clip_text_config(tokenizer).to_dict(),
            vision_config=CLIPVisionConfig(
                hidden_size=HIDDEN,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE_SIZE,
                patch_size=PATCH,
            ).to_dict(),
            projection_dim=PROJECTION,
        )
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        # CLIP's preprocessing: shorter side to the input size (bicubic), centre crop, normalise.
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
        model.save_pretrained(tmp)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        for path in (tmp / "tokenizer").iterdir():
            path.unlink()
        (tmp / "tokenizer").rmdir()
    return folder
