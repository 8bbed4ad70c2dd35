"""Stage 2 on its own: `Outpainter.from_pretrained(base, controlnet, lora)(prompt, pose, canvas)`.

It draws the pose's OpenPose condition image, warns about hands too small for SD's latent (seed 004
§V), and runs the blending sampler (`twostage.sampler`). Settings default to the `[outpaint]` section
(the paper's); each call may override them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handsynth.config import OutpaintSection
from handsynth.errors import HandsynthError
from handsynth.hub import resolve_device
from handsynth.perception.wholebody import check_pose
from handsynth.training.diffusion import PromptEncoder
from handsynth.twostage.data.skeleton import draw_openpose
from handsynth.twostage.outpaint.canvas import Canvas, small_hands
from handsynth.twostage.outpaint.models import (
    LORA_META,
    OutpaintModels,
    load_lora,
    load_outpaint_models,
    outpaint_sources,
    read_lora_meta,
    warn_if_trained_elsewhere,
)
from handsynth.twostage.outpaint.sampler import OutpaintResult, outpaint, sampling_settings


class Outpainter:
    """The ControlNet (+ LoRA) body outpainter and its settings (`[outpaint]`)."""

    def __init__(
        self,
        models: OutpaintModels,
        settings: OutpaintSection | None = None,
        lora_meta: dict[str, Any] | None = None,
    ) -> None:
        self.models = models
        self.settings = settings or OutpaintSection()
        self.lora_meta = lora_meta

    @classmethod
    def from_pretrained(
        cls,
        base: str | None = None,
        controlnet: str | None = None,
        lora: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        settings: OutpaintSection | None = None,
    ) -> Outpainter:
        """Load the base (SD inpainting or plain SD) and ControlNet by hub id or folder, and the LoRA
        folder `handsynth outpaint train` wrote, on `device` (fp16 on a GPU, fp32 on the CPU). A base or
        ControlNet not given is the one the LoRA folder records, else the paper's."""
        device = resolve_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        given = {"base": base, "controlnet": controlnet}
        base, controlnet = outpaint_sources(base, controlnet, lora)
        try:
            models = load_outpaint_models(base, controlnet)
        except HandsynthError as exc:
            recorded = [f"outpaint.{key}" for key, value in given.items() if not value and lora is not None]
            if not recorded or not read_lora_meta(lora):
                raise
            raise HandsynthError(
                f"{exc}\n  ({' and '.join(recorded)} were empty, so they were taken from "
                f"{Path(lora) / LORA_META}, which records what the LoRA was trained on)"
            ) from None
        meta = None
        if lora is not None:
            meta = load_lora(models.controlnet, lora, controlnet)
            warn_if_trained_elsewhere(meta, base, controlnet)
        for model in (models.text_encoder, models.vae, models.unet, models.controlnet):
            model.requires_grad_(False).eval()
        return cls(models.to(device, dtype), settings, meta)

    def __call__(
        self,
        prompt: str,
        pose: np.ndarray,
        canvas: Canvas | np.ndarray,
        canvas_mask: np.ndarray | None = None,
        box: np.ndarray | None = None,
        *,
        generator: torch.Generator | None = None,
        paste: bool = True,
        progress: bool = True,
        prompt_encoder: PromptEncoder | None = None,
        **overrides: Any,
    ) -> OutpaintResult:
        """The image for `prompt` and the (133, 3) `pose` (in the canvas's pixels), painted around the
        canvas's hands, with the intermediates (condition image, blend masks, previews).

        `canvas` is a `Canvas` (from `place_hands` or `canvas_from_mask`), or an (H, W, 3) uint8 image
        with its hand mask `canvas_mask` (and, for bbox blending, `box`). `overrides` are `[outpaint]`
        keys for this call: steps, guidance, negative_prompt, blending, blend_noise, unmasked_steps,
        conditioning_scale, skeleton, previews, small_hand_fraction. `prompt_encoder`: a `PromptEncoder`
        over this outpainter's text encoder that another stage shares (None: a new one).
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(OutpaintSection)})
        if unknown:
            raise HandsynthError(f"unknown outpaint setting(s) {', '.join(unknown)}; see the [outpaint] keys")
        settings = dataclasses.replace(self.settings, **overrides)
        if isinstance(canvas, Canvas):
            image, canvas_mask, box = canvas.image, canvas.mask, canvas.box if box is None else box
        elif canvas_mask is None:
            raise HandsynthError("a canvas given as an image needs its hand mask (canvas_mask)")
        else:
            image = np.asarray(canvas, dtype=np.uint8)
        height, width = image.shape[:2]
        multiple = self.models.vae_scale
        if height % multiple or width % multiple:
            raise HandsynthError(
                f"the canvas is {width}x{height}; the outpainter needs sides that are multiples of {multiple}"
            )
        pose = check_pose(pose)
        small_hands(pose, width, height, settings.small_hand_fraction)
        condition = draw_openpose(pose, width, height, settings.skeleton)
        return outpaint(
            self.models,
            prompt,
            condition,
            image,
            canvas_mask,
            box,
            **sampling_settings(settings),
            generator=generator,
            previews=settings.previews,
            paste=paste,
            progress=progress,
            prompt_encoder=prompt_encoder,
        )
