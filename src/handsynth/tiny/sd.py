"""Stable-Diffusion-shaped diffusers folders at toy size: 64 px images, 32x32 latents.

`write_tiny_sd` stands in for SD v1.4/1.5, `write_tiny_sd_inpainting` for SD 1.5 inpainting (the same
VAE, text encoder, tokenizer and scheduler, and a UNet that reads 9 channels: latent, mask, masked
image latent).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from handsynth.files import atomic_dir, save_pretrained_atomically
from handsynth.tiny.tokenizer import write_clip_tokenizer

TEXT_DIM = 32
INPAINT_CHANNELS = 9  # SD inpainting's UNet input: latent (4), mask (1), masked-image latent (4)


def clip_text_config(tokenizer) -> CLIPTextConfig:
    """The tiny CLIP text tower: SD's text encoder here, and the text side of the tiny CLIP model."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


TINY_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=8,
    norm_num_groups=32,
)


def build_tiny_sd(tokenizer_folder: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """UNet, VAE (downsamples x2), CLIP text encoder and SD v1.4's DDIM scheduler, seeded."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(clip_text_config(tokenizer))
    # Stable Diffusion v1.4's scheduler settings.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_model(folder: str | Path, build: Callable, seed: int) -> Path:
    """Write `build(seed)`'s model to `folder` (skipped if complete: it has its config); return it."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        save_pretrained_atomically(folder, build(seed))
    return folder


def _write_pipeline(folder: str | Path, build: Callable, seed: int) -> Path:
    """Write `build(tokenizer_folder, seed)`'s pipeline to `folder` (skipped if complete); return it."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    with atomic_dir(folder) as tmp:
        write_clip_tokenizer(tmp / "tokenizer")
        build(tmp / "tokenizer", seed=seed).save_pretrained(tmp)
    return folder


def write_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to `folder` (skipped if it is already complete); return the folder."""
    return _write_pipeline(folder, build_tiny_sd, seed)


def build_tiny_sd_inpainting(tokenizer_folder: str | Path, seed: int = 0) -> StableDiffusionInpaintPipeline:
    """The tiny SD with its UNet's conv_in widened to 9 input channels, as SD inpainting was made from SD.

    The VAE, text encoder, tokenizer and scheduler are the tiny SD's own, weight for weight, as SD 1.5
    inpainting shares them with SD 1.5. The 5 new input channels get seeded random weights at the scale
    of the old ones (not zeros), so that the mask and the masked image change the tiny model's output.
    """
    sd = build_tiny_sd(tokenizer_folder, seed=seed)
    unet = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": INPAINT_CHANNELS})
    state = sd.unet.state_dict()
    old = state["conv_in.weight"]
    new = torch.randn(
        (old.shape[0], INPAINT_CHANNELS - old.shape[1], *old.shape[2:]),
        generator=torch.Generator().manual_seed(seed + 1),
    )
    state["conv_in.weight"] = torch.cat([old, new * old.std()], dim=1)
    unet.load_state_dict(state)
    return StableDiffusionInpaintPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=unet,
        scheduler=sd.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_tiny_sd_inpainting(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny inpainting pipeline to `folder` (skipped if already complete); return the folder."""
    return _write_pipeline(folder, build_tiny_sd_inpainting, seed)
