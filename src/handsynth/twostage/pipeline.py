"""The whole two-stage method: a pose and a prompt in, an image and every intermediate out.

`TwoStagePipeline.from_pretrained(handgen, base, controlnet, lora)(prompt, pose, width, height)`:

1. the pose's hands are cut into square crops (one per hand; one for both when their boxes overlap,
   TWOSTAGE.md §7) and their keypoints moved into crop pixels at the hand generator's resolution;
2. stage 1 draws each crop and its mask from the finger heatmaps (`HandGeneratorPipeline`);
3. each crop, cut out with its thresholded mask, is fitted to the pose's hand keypoints by a similarity
   transform and placed on a uniform canvas (`canvas.place_hands`);
4. stage 2 paints the body around the hands with the ControlNet + LoRA outpainter, blending the canvas
   in every step and pasting the hand pixels back at the end (`Outpainter`).

When the hand generator's VAE and text encoder hold the same weights as the outpainter's (SD 1.5 and
SD 1.5 inpainting do), one copy serves both stages, and the prompt is encoded once for both.
`enable_model_cpu_offload()` keeps only the running stage's denoiser on the GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from handsynth.config import OutpaintSection
from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HANDS, check_pose
from handsynth.training.diffusion import PromptEncoder
from handsynth.twostage.data.crops import MIN_HAND_POINTS, CropPlan, hand_keypoints, plan_crops
from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline
from handsynth.twostage.outpaint.canvas import Canvas, DrawnHand, place_hands
from handsynth.twostage.outpaint.outpainter import Outpainter
from handsynth.twostage.outpaint.sampler import OutpaintResult

log = logging.getLogger(__name__)


class UndrawablePose(HandsynthError):
    """A pose the two-stage method cannot draw: it lies off the image, or no hand has the keypoints a
    crop and its placement need. A generation run skips such a pose and records why."""


def undrawn_hands(pose: np.ndarray, width: int, height: int) -> dict[str, str]:
    """Why each hand of `pose` cannot be drawn on the width x height image, by side; a hand not named
    can be. A hand is cropped around its present keypoints (v > 0) and placed by a similarity fit on
    them: it needs at least MIN_HAND_POINTS of them, not all at one point, and one on the image."""
    reasons = {}
    for side, part in HANDS.items():
        points = pose[part][pose[part, 2] > 0, :2]
        on_image = (points >= 0).all(axis=1) & (points[:, 0] <= width) & (points[:, 1] <= height)
        if len(points) < MIN_HAND_POINTS:
            reasons[side] = f"{len(points)} of its 21 keypoints present, {MIN_HAND_POINTS} needed"
        elif np.ptp(points, axis=0).max() == 0:
            reasons[side] = f"its {len(points)} present keypoints all lie at one point (no fit)"
        elif not on_image.any():
            reasons[side] = "every keypoint lies off the image"
    return reasons


def check_drawable(pose: np.ndarray, width: int, height: int) -> dict[str, str]:
    """`undrawn_hands`, or an UndrawablePose naming why when no hand can be drawn."""
    present = pose[pose[:, 2] > 0, :2]
    inside = (present >= 0).all(axis=1) & (present[:, 0] <= width) & (present[:, 1] <= height)
    if not inside.any():
        raise UndrawablePose(
            f"the pose lies entirely off the {width}x{height} image: none of its {len(present)} present "
            "keypoints (v > 0) is on it; give keypoints in the pixels of the image to make"
        )
    reasons = undrawn_hands(pose, width, height)
    if len(reasons) == len(HANDS):
        raise UndrawablePose(
            "the pose has no hand to draw ("
            + "; ".join(f"{side} hand: {why}" for side, why in reasons.items())
            + f"): the two-stage method needs a hand with {MIN_HAND_POINTS} or more present keypoints "
            "(v > 0), apart, and on the image"
        )
    return reasons


@dataclass
class TwoStageResult:
    """PIL images as diffusers' pipelines return; the (H, W, 3) uint8 arrays are `outpaint.image` and
    `outpaint.condition` (or `np.asarray(result.image)`)."""

    image: Image.Image  # the final image
    crops: list[CropPlan]  # where each hand crop sits in the image
    hands: list[DrawnHand]  # stage 1: each crop's image, soft mask and crop-pixel keypoints
    hand_masks: list[np.ndarray]  # stage 1's thresholded masks, what cut the hands out
    canvas: Canvas
    outpaint: OutpaintResult  # stage 2, with the condition image, blend masks and previews

    @property
    def condition(self) -> Image.Image:
        """The OpenPose condition image stage 2 was given."""
        return Image.fromarray(self.outpaint.condition)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when two modules have the same parameter names, shapes, dtypes, devices and values."""
    if a is b:
        return True
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(
        (x := first[k]).shape == (y := second[k]).shape
        and x.dtype == y.dtype
        and x.device == y.device
        and torch.equal(x, y)
        for k in first
    )


class TwoStagePipeline:
    """Stage 1 (the hand generator) and stage 2 (the outpainter), and the canvas between them."""

    def __init__(
        self, hand_generator: HandGeneratorPipeline, outpainter: Outpainter, crop_margin: float | None = None
    ) -> None:
        """The hand generator's VAE and text encoder are replaced by the outpainter's when they hold
        the same weights, so one copy serves both stages. `crop_margin` (None: the one the hand
        generator was trained with, from its handgen.json) widens the pose's hand crops."""
        models = outpainter.models
        if same_weights(hand_generator.vae, models.vae):
            hand_generator.vae = models.vae
        if same_weights(hand_generator.text_encoder, models.text_encoder):
            hand_generator.text_encoder = models.text_encoder
        self.hand_generator = hand_generator
        self.outpainter = outpainter
        self.crop_margin = hand_generator.crop_margin if crop_margin is None else crop_margin
        self.offload_hooks: dict[str, list[Any]] = {}  # stage -> accelerate's UserCpuOffloadHooks

    @classmethod
    def from_pretrained(
        cls,
        handgen: str | Path,
        base: str | None = None,
        controlnet: str | None = None,
        lora: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        settings: OutpaintSection | None = None,
        crop_margin: float | None = None,
    ) -> TwoStagePipeline:
        """The hand-generator folder of `handsynth handgen train`, the outpainter's base and ControlNet
        (hub ids or folders) and the LoRA folder of `handsynth outpaint train` (None: no LoRA). Without a
        base or ControlNet, those the LoRA folder records (its outpaint.json) are loaded, else the paper's."""
        outpainter = Outpainter.from_pretrained(base, controlnet, lora, device, dtype, settings)
        models = outpainter.models
        hands = HandGeneratorPipeline.from_pretrained(handgen, models.device, models.dtype)
        return cls(hands, outpainter, crop_margin)

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep each stage's denoiser on the CPU until the stage runs (accelerate's
        `cpu_offload_with_hook`), so that one stage's at a time sits on `device`: the hand generator
        goes back to the CPU once its crops are drawn, the outpainter's UNet and ControlNet once the
        image is made. The VAE and text encoder, shared by both stages and small, stay on `device`."""
        from accelerate import cpu_offload_with_hook

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # the hook compares it with cuda:N
            device = torch.device("cuda", torch.cuda.current_device())
        for hook in (hook for hooks in self.offload_hooks.values() for hook in hooks):
            hook.remove()
        hands, models = self.hand_generator, self.outpainter.models
        for part in (hands.vae, hands.text_encoder, models.vae, models.text_encoder):
            part.to(device)  # a shared one twice: the second is a no-op
        stages = {"hand": [hands.model], "outpaint": [models.controlnet, models.unet]}
        self.offload_hooks = {
            stage: [cpu_offload_with_hook(model, device)[1] for model in parts]
            for stage, parts in stages.items()
        }

    def _offload(self, stage: str) -> None:
        for hook in self.offload_hooks.get(stage, []):
            hook.offload()

    @property
    def shares_text_encoder(self) -> bool:
        return self.hand_generator.text_encoder is self.outpainter.models.text_encoder

    @property
    def shares_encoders(self) -> bool:
        return self.hand_generator.vae is self.outpainter.models.vae and self.shares_text_encoder

    def __call__(
        self,
        prompt: str,
        pose: np.ndarray,
        width: int = 512,
        height: int = 512,
        *,
        hand_prompt: str | None = None,
        seed: int = 0,
        hand_steps: int | None = None,
        hand_guidance: float | None = None,
        progress: bool = True,
        **outpaint_settings: Any,
    ) -> TwoStageResult:
        """The image for `prompt` and the (133, 3) `pose`, given in the pixels of the width x height
        image to make. `hand_prompt` (default `prompt`) goes to the hand generator; `seed` fixes both
        stages; `outpaint_settings` are `[outpaint]` keys for this call (blending, steps, ...). A pose
        with no hand to draw (`check_drawable`) raises UndrawablePose."""
        pose = check_pose(pose)
        drawn_pose = pose.copy()
        for side, why in check_drawable(pose, width, height).items():
            if (pose[HANDS[side], 2] > 0).any():  # an absent hand needs no word
                log.warning("the %s hand is not drawn: %s", side, why)
            drawn_pose[HANDS[side], 2] = 0
        plans = plan_crops(drawn_pose, width, height, self.crop_margin)
        size = self.hand_generator.resolution
        keypoints = [hand_keypoints(pose, plan, size) for plan in plans]
        models = self.outpainter.models
        # one text encoder: the prompt and the empty prompt are encoded once for both stages
        encoder = PromptEncoder(models.text_encoder) if self.shares_text_encoder else None
        drawn = self.hand_generator(
            hand_prompt or prompt,
            keypoints=keypoints,
            num_inference_steps=hand_steps,
            guidance_scale=hand_guidance,
            generator=torch.Generator().manual_seed(seed),
            height=size,
            width=size,
            progress=progress,
            prompt_encoder=encoder,
        )
        self._offload("hand")
        hands = [
            DrawnHand(image=np.asarray(image), mask=soft, keypoints=points)
            for image, soft, points in zip(drawn.images, drawn.masks, keypoints, strict=True)
        ]
        cut = [
            DrawnHand(h.image, binary, h.keypoints)
            for h, binary in zip(hands, drawn.masks_binary, strict=True)
        ]
        background = outpaint_settings.get("background", self.outpainter.settings.background)
        canvas = place_hands(cut, pose, width, height, background)
        if not canvas.mask.any():
            log.warning("the hand generator's masks are empty: the outpainter paints the whole image")
        result = self.outpainter(
            prompt,
            pose,
            canvas,
            generator=torch.Generator().manual_seed(seed + 1),
            progress=progress,
            prompt_encoder=encoder,
            **outpaint_settings,
        )
        self._offload("outpaint")
        return TwoStageResult(
            image=Image.fromarray(result.image),
            crops=plans,
            hands=hands,
            hand_masks=list(drawn.masks_binary),
            canvas=canvas,
            outpaint=result,
        )
