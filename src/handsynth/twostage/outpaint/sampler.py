"""The outpainting loop: one DDIM pass that blends the canvas in after every step (seed 004 §III-D).

Per step: classifier-free guidance over the ControlNet + UNet (a 9-channel UNet reads the precise hand
mask and the masked canvas latent every step, as in diffusers' StableDiffusionControlNetInpaintPipeline),
the DDIM update, then Eq. (8) with the step's blend mask (`blending`). After the loop the latent is
decoded and the canvas's hand pixels are pasted back with m_c, at image resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar
from handsynth.training.diffusion import PromptEncoder
from handsynth.twostage.outpaint.blending import blend, blend_masks, check_blend_settings
from handsynth.twostage.outpaint.canvas import latent_mask
from handsynth.twostage.outpaint.models import (
    OutpaintModels,
    condition_pixels,
    encode_mean,
    mask_input,
    masked_pixels,
    pixels,
    predict_noise,
)


@dataclass
class OutpaintResult:
    image: np.ndarray  # (H, W, 3) uint8: the decoded image with the canvas's hand pixels pasted back
    decoded: np.ndarray  # (H, W, 3) uint8: the decoded image before the paste
    condition: np.ndarray  # (H, W, 3) uint8: the OpenPose condition image
    canvas: np.ndarray  # (H, W, 3) uint8
    canvas_mask: np.ndarray  # (H, W) bool: m_c
    blend_masks: list[np.ndarray]  # per step, (h, w) bool at latent size; all False: nothing blended
    latents: torch.Tensor  # (1, 4, h, w): the final latent, before decoding
    previews: dict[int, np.ndarray] = field(default_factory=dict)  # step -> decoded x0 prediction
    settings: dict = field(default_factory=dict)

    def strip(self, masks: int = 4) -> np.ndarray:
        """(H, k·W, 3) uint8 for a report: canvas | m_c | condition | up to `masks` blend masks, evenly
        spread over the masked steps and shown at image size | each preview | decoded | final image."""
        height, width = self.canvas_mask.shape
        masked = [m for m in self.blend_masks if m.any()]
        chosen = [masked[i] for i in preview_steps(len(masked), masks)]
        factor = height // self.blend_masks[0].shape[0]
        shown = [self.canvas_mask] + [np.kron(m, np.ones((factor, factor), dtype=bool)) for m in chosen]
        gray = [np.repeat(m[..., None].astype(np.uint8) * 255, 3, axis=2) for m in shown]
        panels = [self.canvas, gray[0], self.condition, *gray[1:], *self.previews.values(), self.decoded]
        return np.concatenate([*panels, self.image], axis=1)


def preview_steps(steps: int, count: int) -> list[int]:
    """`count` evenly spaced step indices ending with the last: 11, 24, 37, 49 for 4 of 50."""
    count = min(max(count, 0), steps)
    return [round(steps * (j + 1) / count) - 1 for j in range(count)]


@torch.no_grad()
def decode(models: OutpaintModels, latents: torch.Tensor) -> np.ndarray:
    """Latents -> (H, W, 3) uint8 of the first item."""
    image = models.vae.decode(latents / models.vae.config.scaling_factor).sample[0]
    image = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


SAMPLING_KEYS = (
    "negative_prompt", "steps", "guidance", "blending", "blend_noise", "unmasked_steps", "conditioning_scale",
)  # fmt: skip


def sampling_settings(settings: Any) -> dict[str, Any]:
    """The [outpaint] settings that `outpaint` takes, as its keyword arguments."""
    return {key: getattr(settings, key) for key in SAMPLING_KEYS}


@torch.no_grad()
def outpaint(
    models: OutpaintModels,
    prompt: str,
    condition: np.ndarray,
    canvas: np.ndarray,
    canvas_mask: np.ndarray,
    box: np.ndarray | None = None,
    *,
    negative_prompt: str = "",
    steps: int = 50,
    guidance: float = 7.5,
    blending: str = "sequential",
    blend_noise: str = "noised",
    unmasked_steps: int = 2,
    conditioning_scale: float = 1.0,
    generator: torch.Generator | None = None,
    previews: int = 0,
    paste: bool = True,
    progress: bool = True,
    prompt_encoder: PromptEncoder | None = None,
) -> OutpaintResult:
    """Paint the body around the canvas's hands; `condition` is the OpenPose image at the canvas size.

    `box` (H, W) bool marks the hand crops' squares, for `blending = "bbox"`. `prompt_encoder`: one over
    `models.text_encoder` that another stage shares (None: a new one).
    """
    from diffusers.utils.torch_utils import randn_tensor

    check_blend_settings(blending, blend_noise, unmasked_steps)
    height, width = canvas.shape[:2]
    scale = models.vae_scale
    if condition.shape != canvas.shape or np.shape(canvas_mask) != (height, width):
        raise HandsynthError(
            f"the condition image {condition.shape}, canvas {canvas.shape} and canvas mask "
            f"{np.shape(canvas_mask)} must have one size"
        )
    if steps < 1:
        raise HandsynthError(f"the number of steps must be >= 1, got {steps}")
    device, dtype = models.device, models.dtype
    canvas_mask = np.asarray(canvas_mask, dtype=bool)

    guided = guidance > 1.0
    encoder = prompt_encoder or PromptEncoder(models.text_encoder)
    if encoder.text_encoder is not models.text_encoder:
        raise HandsynthError("prompt_encoder encodes with another text encoder than the outpainter's")
    texts = [negative_prompt, prompt] if guided else [prompt]
    embeddings = encoder(models.tokenizer, texts).to(dtype)
    copies = 2 if guided else 1

    # Everything the loop reads, fixed before it starts.
    noise = randn_tensor(
        (1, 4, height // scale, width // scale), generator=generator, device=device, dtype=dtype
    )
    canvas_pixels = pixels(canvas[None])
    hand_latent = latent_mask(canvas_mask, scale)[None]
    paint_mask = masked_latents = None
    if models.inpainting:
        paint_mask = mask_input(hand_latent).to(device, dtype).repeat(copies, 1, 1, 1)
        masked_latents = encode_mean(models.vae, masked_pixels(canvas_pixels, canvas_mask))
        masked_latents = masked_latents.repeat(copies, 1, 1, 1)
    control = condition_pixels(condition[None]).to(device, dtype).repeat(copies, 1, 1, 1)
    masks = blend_masks(canvas_mask, steps, blending, unmasked_steps, box, scale)
    blended = [bool(m.any()) for m in masks]
    known = encode_mean(models.vae, canvas_pixels) if any(blended) else None

    scheduler = models.scheduler
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    shown = set(preview_steps(steps, previews))
    kept: dict[int, np.ndarray] = {}
    for i, t in enumerate(progress_bar(timesteps, desc="outpaint", disable=not progress, leave=False)):
        model_input = scheduler.scale_model_input(torch.cat([latents] * copies), t)
        prediction = predict_noise(
            models.unet,
            models.controlnet,
            model_input,
            t,
            embeddings,
            control,
            paint_mask,
            masked_latents,
            conditioning_scale,
        )
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + guidance * (conditional - unconditional)
        step = scheduler.step(prediction, t, latents, eta=0.0)
        latents = step.prev_sample
        if blended[i]:
            if blend_noise == "noised" and i + 1 < steps:  # x_c at the time the latent is now at
                target = scheduler.add_noise(known, noise, timesteps[i + 1 : i + 2])
            else:
                target = known
            latents = blend(latents, target, torch.from_numpy(masks[i]).to(device, dtype))
        if i in shown:
            kept[i] = decode(models, step.pred_original_sample)

    decoded = decode(models, latents)
    image = np.where(canvas_mask[..., None], canvas, decoded) if paste else decoded
    return OutpaintResult(
        image=image,
        decoded=decoded,
        condition=condition,
        canvas=canvas,
        canvas_mask=canvas_mask,
        blend_masks=masks,
        latents=latents.cpu(),
        previews=kept,
        settings=dict(
            steps=steps,
            guidance=guidance,
            blending=blending,
            blend_noise=blend_noise,
            unmasked_steps=unmasked_steps,
            conditioning_scale=conditioning_scale,
        ),
    )
