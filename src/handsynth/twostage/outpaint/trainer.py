"""`handsynth outpaint train`: the body outpainter's LoRA (seed 004 §III-C, §IV-B; TWOSTAGE.md §4).

The LoRA learns to rebuild a whole image from a canvas that holds only its segmented hands, as stage 2
will see it. Per step, on a batch of rows of the two-stage dataset's `images.jsonl`:

    canvas = image where the hand mask is set, the uniform background elsewhere;  m = latent hand mask
    z0 = VAE(image) (a posterior sample);  z_c = VAE(canvas · m_c) (its mean: the UNet's masked image)
    caption -> "" with p = outpaint.caption_dropout (the empty prompt guidance samples with)
    t, ε drawn by the trainer;  z_t = add_noise(z0, ε, t)
    ε̂ = UNet([z_t, 1 − m, z_c], t, CLIP(caption), ControlNet_LoRA(z_t, t, CLIP(caption), OpenPose(pose)))
    loss = masked L2 of ε̂ over the region to generate, 1 − m

Only the LoRA (rank 8, alpha 8, on the ControlNet's to_k, to_q, to_v, to_out.0) trains. The shared
machinery (`handsynth.training.trainer`) gives resume, the NaN stop, mixed precision, 8-bit Adam,
checkpoints (the LoRA weights and its optimiser only), logs and validation grids. The result is the
LoRA folder (`save_lora`). Runs under `accelerate launch` (DDP): each process takes its share.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.wholebody import check_pose
from handsynth.progress import progress_bar
from handsynth.training.diffusion import (
    BaseModels,
    ddim_scheduler,
    drop_captions,
    encode_images,
    encode_text,
    load_base_models,
    noise_target,
    ready_for_training,
)
from handsynth.training.trainer import (
    Trainer,
    check_settings,
    keys_digest,
    make_accelerator,
    resolve_auto_settings,
)
from handsynth.twostage.data.dataset import default_output_dir, read_image_rows
from handsynth.twostage.data.skeleton import VARIANTS, draw_openpose
from handsynth.twostage.outpaint.blending import check_blend_settings
from handsynth.twostage.outpaint.canvas import canvas_from_mask, latent_mask
from handsynth.twostage.outpaint.models import (
    LORA_TARGETS,
    OutpaintModels,
    add_lora,
    check_unet,
    condition_pixels,
    default_lora_dir,
    encode_mean,
    load_controlnet,
    mask_input,
    masked_mse,
    masked_pixels,
    outpaint_sources,
    pixels,
    predict_noise,
    save_lora,
)

log = logging.getLogger(__name__)

VALIDATION_IMAGES = 4


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class OutpaintItem:
    key: str
    image: Path
    hand_mask: Path
    keypoints: np.ndarray  # (133, 3) in the image's pixels
    caption: str
    size: int  # the image is square, size × size


# the dataset's flags of the images the paper leaves out of the outpainter's data, and their report names
LEFT_OUT = {"outpaint": "small_hand_mask", "single_person": "multi_person"}


def read_outpaint_items(
    data_dir: str | Path, split: str = "train", max_images: int = 0
) -> tuple[list[OutpaintItem], dict[str, int]]:
    """The `split` rows of `<data_dir>/images.jsonl` that the paper's filters keep (`"outpaint"`: the
    hand mask has 2,500 px at 512 px; `"single_person"`) and whose image and hand mask decode, and the
    number of rows each filter left out. Bad rows are skipped, counted and named in a warning."""
    data_dir = Path(data_dir)
    manifest, rows = read_image_rows(data_dir, split)
    left_out = {name: sum(row.get(flag) is False for row in rows) for flag, name in LEFT_OUT.items()}
    rows = [row for row in rows if all(row.get(flag) is not False for flag in LEFT_OUT)]
    if any(left_out.values()):
        log.info("the paper's filters leave out of the outpainter's data: %s", left_out)
    if max_images > 0:
        rows = rows[:max_images]
    items, bad = [], []
    for row in progress_bar(rows, desc="check images", leave=False):
        key = str(row.get("key"))
        try:
            item = _item(data_dir, row, key)
        except (HandsynthError, KeyError, TypeError, ValueError) as exc:
            bad.append(f"{key}: {exc}")
            continue
        items.append(item)
    if bad:
        shown = "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        log.warning("skipped %d of %d '%s' rows of %s: %s", len(bad), len(rows), split, manifest, shown)
    if not items:
        raise HandsynthError(
            f"none of the {len(rows)} '{split}' rows in {manifest} could be used (left out by the paper's "
            f"filters: {left_out}); see pose.min_mask_pixels"
        )
    return items, left_out


def _item(data_dir: Path, row: dict, key: str) -> OutpaintItem:
    caption = str(row.get("caption") or "").strip()
    if not caption:
        raise HandsynthError("empty caption")
    if row.get("keypoints") is None or not row.get("hand_mask"):
        raise HandsynthError("no keypoints or no hand mask")
    keypoints = check_pose(np.asarray(row["keypoints"], dtype=np.float32), f"the pose of {key}")
    image = load_rgb(data_dir / row["image"])
    mask = _read_mask(data_dir / row["hand_mask"])
    if image.shape[0] != image.shape[1] or mask.shape != image.shape[:2]:
        raise HandsynthError(
            f"the image must be square and its hand mask its size, got {image.shape}, {mask.shape}"
        )
    return OutpaintItem(
        key, data_dir / row["image"], data_dir / row["hand_mask"], keypoints, caption, image.shape[0]
    )


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(files.to_gray(image)) > 127
    except (OSError, ValueError) as exc:
        raise HandsynthError(f"cannot read the hand mask {path}: {exc}") from None


@dataclass
class Example:
    """One item at the training resolution."""

    image: np.ndarray  # (R, R, 3) uint8
    canvas: np.ndarray  # (R, R, 3) uint8: the hands on the uniform background
    mask: np.ndarray  # (R, R) bool
    condition: np.ndarray  # (R, R, 3) uint8 OpenPose image


def load_example(item: OutpaintItem, resolution: int, background: int, skeleton: str) -> Example:
    """The image and its hand mask resized to `resolution` (area for shrinking), the canvas built from
    them, and the pose scaled and drawn."""
    image, mask = load_rgb(item.image), _read_mask(item.hand_mask)
    if item.size != resolution:
        shrink = cv2.INTER_AREA if item.size > resolution else cv2.INTER_CUBIC
        image = cv2.resize(image, (resolution, resolution), interpolation=shrink)
        mask = (
            cv2.resize(mask.astype(np.float32), (resolution, resolution), interpolation=cv2.INTER_AREA) >= 0.5
        )
    pose = item.keypoints.copy()
    pose[:, :2] *= resolution / item.size
    canvas = canvas_from_mask(image, mask, background)
    condition = draw_openpose(pose, resolution, resolution, skeleton)
    return Example(image, canvas.image, canvas.mask, condition)


# -------------------------------------------------------------------------------------- trainer


class OutpaintTrainer(Trainer):
    """The frozen base UNet, VAE and text encoder, the ControlNet with its LoRA, and one kind of step."""

    def __init__(
        self,
        config: Config,
        accelerator: Any,
        models: BaseModels,
        controlnet: Any,
        items: list[OutpaintItem],
        work: Path,
        plan: dict[str, Any],
        total_steps: int,
        left_out: dict[str, int] | None = None,
    ) -> None:
        super().__init__(config, accelerator, work, plan, total_steps, name="outpaint")
        settings, device = self.config.outpaint, self.device
        self.items = items
        self.left_out = left_out or {}  # rows the paper's filters left out, by filter
        self.noise_scheduler = models.noise_scheduler
        self.tokenizer = models.tokenizer
        self.resolution = models.resolution
        self.vae_scale = models.vae_scale
        grad_checkpointing = self.config.train.gradient_checkpointing
        self.vae = self.frozen(models.vae)
        self.text_encoder = self.frozen(models.text_encoder)
        # The UNet is frozen but the loss flows back through it to the ControlNet's residuals.
        self.unet = self.frozen(models.unet)
        if grad_checkpointing:
            self.unet.enable_gradient_checkpointing()
        from diffusers.training_utils import cast_training_params

        controlnet.to(dtype=self.weight_dtype)
        self.lora = add_lora(controlnet, settings.lora_rank, settings.lora_alpha)
        cast_training_params(controlnet, dtype=torch.float32)  # fp32 LoRA weights under mixed precision
        controlnet = ready_for_training(controlnet, device, grad_checkpointing)
        optimizer = self.make_optimizer(list(self.lora.values()), settings.lr)
        self.controlnet, self.optimizer = accelerator.prepare(controlnet, optimizer)

    # --- what the machinery checkpoints and shows

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"lora": self.lora}

    def shared_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"lora": self.optimizer}

    def validation_grid(self) -> Image.Image | None:
        """One row per validation image: canvas | condition | outpainted | ground truth, seeded."""
        from handsynth.twostage.outpaint.sampler import outpaint, sampling_settings

        settings = self.config.outpaint
        models = self.sampling_models()
        rows = []
        for item in self.items[:VALIDATION_IMAGES]:
            example = load_example(item, self.resolution, settings.background, settings.skeleton)
            result = outpaint(
                models,
                item.caption,
                example.condition,
                example.canvas,
                example.mask,
                **sampling_settings(settings),
                generator=torch.Generator().manual_seed(self.config.run.seed),
                progress=False,
            )
            rows.append(
                np.concatenate([example.canvas, example.condition, result.image, example.image], axis=1)
            )
        return Image.fromarray(np.concatenate(rows, axis=0))

    def sampling_models(self) -> OutpaintModels:
        return OutpaintModels(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            unet=self.unet,
            controlnet=self.acc.unwrap_model(self.controlnet),
            scheduler=ddim_scheduler(self.noise_scheduler.config),
        )

    # --- the step

    def loop(self) -> None:
        settings = self.config.outpaint
        for index in self.shuffled_batches(len(self.items), settings.batch_size, settings.epochs):
            self.train_step([self.items[i] for i in index.tolist()])
            self.after_step()

    def train_step(self, items: list[OutpaintItem]) -> float:
        settings, device = self.config.outpaint, self.device
        examples = [load_example(i, self.resolution, settings.background, settings.skeleton) for i in items]
        keys = [item.key for item in items]
        images = pixels(np.stack([e.image for e in examples]))
        masks = np.stack([e.mask for e in examples])
        latents = encode_images(self.vae, images, self.generator)
        paint = mask_input(np.stack([latent_mask(m, self.vae_scale) for m in masks])).to(device)
        masked_latents = None
        if self.unet.config.in_channels == 9:  # a plain UNet sees the mask only through the loss
            # the canvas's hand pixels are the image's: the masked canvas is the masked image
            masked_latents = encode_mean(self.vae, masked_pixels(images, masks)).float()
        condition = condition_pixels(np.stack([e.condition for e in examples])).to(device, self.weight_dtype)
        captions = drop_captions([item.caption for item in items], settings.caption_dropout, self.generator)
        embeddings = encode_text(self.tokenizer, self.text_encoder, captions)
        timesteps, noise = self.draw_noise(latents, self.noise_scheduler.config.num_train_timesteps)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self.acc.autocast():
            prediction = predict_noise(
                self.unet,
                self.controlnet,
                noisy,
                timesteps,
                embeddings,
                condition,
                paint,
                masked_latents,
                settings.conditioning_scale,
            )
        target = noise_target(self.noise_scheduler, latents, noise, timesteps)
        losses = masked_mse(prediction, target, paint)
        return self.optimise(losses, self.optimizer, "outpaint", "outpaint", keys, "outpaint.lr")

    def save_lora(self, folder: Path, meta: dict[str, Any]) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_lora(self.acc.unwrap_model(self.controlnet), folder, meta)
        self.acc.wait_for_everyone()


# ------------------------------------------------------------------------------------------ run


def check_outpaint_settings(config: Config) -> None:
    check_settings(config)
    settings = config.outpaint
    if settings.batch_size < 1 or settings.epochs < 1 or settings.lora_rank < 1 or settings.lr <= 0:
        raise HandsynthError("outpaint.batch_size, epochs and lora_rank must be >= 1 and outpaint.lr > 0")
    if settings.skeleton not in VARIANTS:
        raise HandsynthError(
            f"outpaint.skeleton must be one of {', '.join(VARIANTS)}, got '{settings.skeleton}'"
        )
    if not 0.0 <= settings.caption_dropout <= 1.0:
        raise HandsynthError(f"outpaint.caption_dropout must be in [0, 1], got {settings.caption_dropout}")
    if not 0 <= settings.background <= 255:
        raise HandsynthError(f"outpaint.background is a grey level in 0-255, got {settings.background}")
    check_blend_settings(settings.blending, settings.blend_noise, settings.unmasked_steps)


def build_outpaint_trainer(config: Config, data_dir: str | Path | None = None) -> OutpaintTrainer:
    """Read the data, load the models and set up the trainer (work files in `<run>/train/outpaint`)."""
    from accelerate.utils import set_seed

    check_outpaint_settings(config)
    config = resolve_auto_settings(config)
    base, controlnet = outpaint_sources(config.outpaint.base, config.outpaint.controlnet)
    config = dataclasses.replace(
        config, outpaint=dataclasses.replace(config.outpaint, base=base, controlnet=controlnet)
    )
    settings = config.outpaint
    data_dir = Path(data_dir) if data_dir else default_output_dir(config)
    work = Path(config.run.output_dir) / "train" / "outpaint"
    acc = make_accelerator(config, work)
    items, left_out = read_outpaint_items(data_dir, "train", settings.max_images)
    total = settings.epochs * math.ceil(len(items) / (settings.batch_size * acc.num_processes))
    set_seed(config.run.seed)
    models = load_base_models(settings.base, config_key="outpaint.base")
    check_unet(models.unet, settings.base)
    controlnet = load_controlnet(settings.controlnet)
    plan = {
        "base": settings.base,
        "controlnet": settings.controlnet,
        "lora_rank": settings.lora_rank,
        "lora_alpha": settings.lora_alpha,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "epochs": settings.epochs,
        "caption_dropout": settings.caption_dropout,
        "resolution": models.resolution,
        "skeleton": settings.skeleton,
        "background": settings.background,
        "images": keys_digest(item.key for item in items),
    }
    log.info(
        "training the outpainter LoRA on %d images (%s) for %d steps per process on %d process(es)",
        len(items),
        data_dir,
        total,
        acc.num_processes,
    )
    return OutpaintTrainer(config, acc, models, controlnet, items, work, plan, total, left_out)


def train_outpainter(
    config: Config, data_dir: str | Path | None = None, lora_dir: str | Path | None = None
) -> Path:
    """Train the outpainter LoRA; return its folder (`outpaint.lora_dir`, default
    `<run>/models/outpaint-lora`): the LoRA weights and `outpaint.json`."""
    trainer = build_outpaint_trainer(config, data_dir)
    trainer.train(trainer.loop)
    settings = trainer.config.outpaint
    folder = Path(lora_dir) if lora_dir else default_lora_dir(trainer.config)
    meta = {
        "controlnet": settings.controlnet,
        "base": settings.base,
        "rank": settings.lora_rank,
        "alpha": settings.lora_alpha,
        "targets": LORA_TARGETS,
        "resolution": trainer.resolution,
        "skeleton": settings.skeleton,
        "background": settings.background,
        "outpaint": dataclasses.asdict(settings),
        "steps": trainer.step,
        "total_steps": trainer.total_steps,
        "images": len(trainer.items),
        "left_out": trainer.left_out,
    }
    trainer.save_lora(folder, meta)
    trainer.acc.end_training()
    return folder


# ------------------------------------------------------------------------------------------ CLI
