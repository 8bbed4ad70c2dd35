"""Stage 1 inference: a hand image and its mask from hand keypoints and a prompt (seed 004 §III-B).

The hand-generator folder (`handsynth handgen train`) is a Stable Diffusion folder whose `unet/` is a
plain diffusers UNet with in_channels = 15, plus `mask_head/` (a `MaskHead`, save_pretrained) and
`handgen.json` (the settings it was trained with, the training resolution and the crops' margin among
them).

Sampling is DDIM (eta 0, clip_sample off) with classifier-free guidance. The unconditional branch is
the empty prompt with the same heatmaps (and mask), so guidance pushes towards the text and never away
from the pose. The returned mask is the mask head's output at the last DDIM step, from the
text-conditioned branch: that step's input is the nearly finished latent (t = 1 of 1000 with SD's
scheduler at 50 steps), and it costs no extra UNet pass.
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from handsynth import files, hub
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.hub import execution_device, resolve_device
from handsynth.progress import progress_bar
from handsynth.training.diffusion import PromptEncoder, ddim_scheduler, vae_scale
from handsynth.twostage.data.heatmaps import finger_heatmaps
from handsynth.twostage.handgen.model import (
    CONDITION_CHANNELS,
    HEATMAP_CHANNELS,
    LATENT_CHANNELS,
    HandGenerator,
    MaskHead,
    condition_tensor,
    size_multiple,
)

log = logging.getLogger(__name__)

SETTINGS_FILE = "handgen.json"
MASK_THRESHOLD = 0.5


def default_handgen_dir(config: Config) -> Path:
    """handgen.model_dir, else <run>/models/handgen."""
    return Path(config.handgen.model_dir or Path(config.run.output_dir) / "models" / "handgen")


@dataclass
class HandGeneratorOutput(BaseOutput):
    images: list[Image.Image]
    masks: list[np.ndarray]  # (H, W) float32 in [0, 1]
    masks_binary: list[np.ndarray]  # (H, W) bool, mask > 0.5


def hand_heatmaps(hands: np.ndarray, height: int, width: int) -> np.ndarray:
    """(10, H, W) finger heatmaps of (42, 3) keypoints in the image's pixels; σ from the longer side."""
    return finger_heatmaps(hands, max(height, width))[:, :height, :width]


def heatmap_picture(heatmaps: np.ndarray) -> Image.Image:
    """The 10 channels in one RGB picture: channel c in hue c/10, the brightest channel wins."""
    colours = np.array([colorsys.hsv_to_rgb(c / HEATMAP_CHANNELS, 1, 1) for c in range(HEATMAP_CHANNELS)])
    picture = (heatmaps[..., None] * colours[:, None, None, :]).max(axis=0)
    return Image.fromarray(np.round(picture * 255).astype(np.uint8))


def mask_picture(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def keypoint_batch(keypoints: Any) -> np.ndarray:
    """(N, 42, 3) float32 from one (42, 3) array or a list of them."""
    try:
        array = np.asarray(keypoints, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise HandsynthError(f"keypoints must be (42, 3) arrays (left hand then right): {exc}") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (42, 3) or len(array) == 0:
        raise HandsynthError(
            f"keypoints must be (42, 3), 21 [x, y, v] of the left hand then 21 of the right, in the "
            f"generated image's pixels (v = 0 for an absent hand), or a list of them; got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise HandsynthError("keypoints hold NaN or inf; give absent points as v = 0 with any finite x, y")
    return array


def _one_mask(mask: Any, height: int, width: int, n: int) -> np.ndarray:
    if mask is None:
        return np.zeros((height, width), np.float32)
    if isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    else:
        array = np.asarray(mask)
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if array.shape != (height, width):
        size = f"{array.shape[1]}x{array.shape[0]}" if array.ndim == 2 else f"of shape {array.shape}"
        raise HandsynthError(
            f"mask {n} is {size} but the image is {width}x{height}: give a (height, width) mask of the "
            "generated image's size"
        )
    if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise HandsynthError(f"mask {n} must hold values in [0, 1] (float), 0/255 (uint8) or bools")
    return array


def mask_batch(mask: Any, n: int, height: int, width: int) -> torch.Tensor | None:
    """(N, 1, H, W) from None, one mask (used for every hand) or a list of N masks (None: no mask)."""
    if mask is None:
        return None
    masks = list(mask) if isinstance(mask, list | tuple) else [mask] * n
    if len(masks) != n:
        raise HandsynthError(
            f"{len(masks)} masks for {n} keypoint sets; give one mask per hand or one for all"
        )
    return torch.from_numpy(np.stack([_one_mask(m, height, width, i) for i, m in enumerate(masks)]))[:, None]


def read_settings(folder: str | Path) -> dict[str, Any]:
    """The folder's `handgen.json`."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise HandsynthError(
            f"{folder} is not a hand-generator folder (no {SETTINGS_FILE}); "
            "train one with `handsynth handgen train`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


class HandGeneratorPipeline:
    """`HandGeneratorPipeline.from_pretrained(folder)(prompt, keypoints=...)` -> HandGeneratorOutput."""

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        model: HandGenerator,
        scheduler: Any,
        settings: dict[str, Any],
    ) -> None:
        self.vae, self.text_encoder, self.tokenizer, self.model = vae, text_encoder, tokenizer, model
        self.scheduler = ddim_scheduler(scheduler.config)
        self.settings = settings
        self.vae_scale = vae_scale(vae.config)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None
    ) -> HandGeneratorPipeline:
        """Load a hand-generator folder on `device` (auto: cuda if any) in `dtype` (None: fp16 on a
        GPU, fp32 on the CPU)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        settings = read_settings(folder)
        path = str(folder)
        unet = hub.from_pretrained(UNet2DConditionModel, path, subfolder="unet")
        if unet.config.in_channels != LATENT_CHANNELS + CONDITION_CHANNELS:
            raise HandsynthError(
                f"{folder}/unet takes {unet.config.in_channels} input channels, a hand generator's takes "
                f"{LATENT_CHANNELS + CONDITION_CHANNELS}"
            )
        if settings.get("mask_loss_weight") == 0:
            log.warning(
                "%s was trained without the mask loss (the ablation): its masks are untrained", folder
            )
        pipe = cls(
            hub.from_pretrained(AutoencoderKL, path, subfolder="vae"),
            hub.from_pretrained(CLIPTextModel, path, subfolder="text_encoder"),
            hub.from_pretrained(CLIPTokenizer, path, subfolder="tokenizer"),
            HandGenerator(unet, hub.from_pretrained(MaskHead, path, subfolder="mask_head")),
            hub.from_pretrained(DDIMScheduler, path, subfolder="scheduler"),
            settings,
        )
        device = resolve_device(device)
        return pipe.to(device, dtype or (torch.float16 if device.type == "cuda" else torch.float32))

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> HandGeneratorPipeline:
        for part in (self.vae, self.text_encoder, self.model):
            part.to(device=device, dtype=dtype).eval()
        return self

    @property
    def device(self) -> torch.device:
        return execution_device(self.model)

    @property
    def crop_margin(self) -> float:
        """The margin of the hand crops it was trained on (handgen.json): a pose's hands are cut with
        it, so that they fill a crop as the training hands did."""
        if self.settings.get("crop_margin") is None:
            raise HandsynthError(
                f"the hand generator's {SETTINGS_FILE} records no crop_margin (it was saved before the "
                "margin was recorded): train it again, or give the margin its hands.jsonl was cut with "
                "(pose.crop_margin) as crop_margin"
            )
        return float(self.settings["crop_margin"])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.unet.dtype

    @property
    def resolution(self) -> int:
        return int(self.settings["resolution"])

    def check_size(self, height: int, width: int) -> None:
        step = size_multiple(self.model.unet, self.vae_scale)
        if height < step or width < step or height % step or width % step:
            raise HandsynthError(
                f"height and width must be positive multiples of {step}, got {height}x{width}"
            )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        keypoints: Any,
        mask: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        progress: bool = False,
        prompt_encoder: PromptEncoder | None = None,
    ) -> HandGeneratorOutput:
        """Hand images and masks for `keypoints` ((42, 3) or a list of them, in the pixels of the
        height x width image to make) and `prompt` (one for all, or one per keypoint set).

        `mask`: None (the paper's mask-free inference), one (H, W) mask for all, or one per set.
        Steps and guidance default to the folder's settings (50, 7.5), the size to its training size.
        `prompt_encoder`: a `PromptEncoder` over this pipeline's text encoder that another stage
        shares (None: a new one, so each distinct prompt is still encoded once).
        """
        steps = int(num_inference_steps or self.settings.get("steps", 50))
        guidance = float(self.settings.get("guidance", 7.5) if guidance_scale is None else guidance_scale)
        height, width = height or self.resolution, width or self.resolution
        self.check_size(height, width)
        hands = keypoint_batch(keypoints)
        n = len(hands)
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise HandsynthError(
                f"{len(prompts)} prompts for {n} keypoint sets; give one prompt or one per set"
            )
        heatmaps = torch.from_numpy(np.stack([hand_heatmaps(h, height, width) for h in hands]))
        latent_size = (height // self.vae_scale, width // self.vae_scale)
        condition = condition_tensor(heatmaps, mask_batch(mask, n, height, width), latent_size)
        condition = condition.to(self.device, self.dtype)
        encoder = prompt_encoder or PromptEncoder(self.text_encoder)
        if encoder.text_encoder is not self.text_encoder:
            raise HandsynthError("prompt_encoder encodes with another text encoder than the hand generator's")
        if guidance > 1.0:  # the empty prompt with the same c_p
            prompts = [""] * n + prompts
            condition = torch.cat([condition, condition])
        embeddings = encoder(self.tokenizer, prompts).to(self.dtype)
        latents = randn_tensor(
            (n, LATENT_CHANNELS, *latent_size), generator=generator, device=self.device, dtype=self.dtype
        )
        self.scheduler.set_timesteps(steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        for t in progress_bar(
            self.scheduler.timesteps, desc="hand generator", disable=not progress, leave=False
        ):
            model_input = torch.cat([latents, latents]) if guidance > 1.0 else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred, masks = self.model(model_input, t, embeddings, condition)
            if guidance > 1.0:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond - uncond)
                masks = masks.chunk(2)[1]
            latents = self.scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        images = self.image_processor.postprocess(decoded.float(), output_type="pil")
        soft = [m for m in masks[:, 0].float().clamp(0, 1).cpu().numpy()]
        return HandGeneratorOutput(images=images, masks=soft, masks_binary=[m > MASK_THRESHOLD for m in soft])


def save_hand_generator(
    folder: str | Path, base: str, unet: Any, mask_head: MaskHead, settings: dict[str, Any]
) -> Path:
    """Write the folder atomically: the base's frozen parts (fresh, fp32), `unet` (in_channels 15),
    a DDIM scheduler on the base's noise schedule, `mask_head/` and `handgen.json`."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    with files.atomic_dir(folder) as tmp:
        pipe = hub.from_pretrained(
            StableDiffusionPipeline, base, unet=unet, safety_checker=None, requires_safety_checker=False
        )
        pipe.scheduler = ddim_scheduler(pipe.scheduler.config)
        pipe.save_pretrained(tmp)
        mask_head.save_pretrained(tmp / "mask_head")
        files.write_json(tmp / SETTINGS_FILE, settings)
    return folder
