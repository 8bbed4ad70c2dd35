"""Stage 1 training (`handsynth handgen train`): the multi-task hand generator (seed 004 §III-B, §IV-B).

Per step, on a shuffled mini-batch of `hands.jsonl` rows (loaded ahead in `train.num_workers` processes):

    pixels = augment(crop)                     RGB shift, brightness and contrast
    c_p = heatmaps ⊕ mask, resized to the latent; the mask channel zeroed with p = handgen.mask_dropout
    caption -> "" with p = handgen.caption_dropout (the empty prompt guidance samples with)
    z0 = VAE(pixels);  e = CLIP(caption);  t ~ U{0..T-1}, ε ~ N(0, I);  z_t = add_noise(z0, ε, t)
    ε̂, m = H_θ(z_t ⊕ c_p, t, e)
    L = mean((ε − ε̂)²) + λ · mean((M − m)²)    λ = handgen.mask_loss_weight; 0 is the single-task ablation

with Adam at handgen.lr over the whole UNet and the mask head, for handgen.epochs passes.

The shared machinery (`handsynth.training.trainer`) does the rest: every draw above (augmentation,
mask and caption dropout, the VAE sample, t and ε) takes its one CPU generator, so a run stopped and
resumed with `--resume` ends bit-identical to an uninterrupted one; mixed precision, 8-bit Adam, the
NaN stop, checkpoints, loss.jsonl (the loss with its `ldm` and `mask` terms), TensorBoard, validation
grids (heatmap | generated hand | predicted mask) and DDP under `accelerate launch`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.training.diffusion import (
    BaseModels,
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
from handsynth.twostage.data.heatmaps import SIGMA_FRACTION
from handsynth.twostage.handgen.data import (
    HandBatch,
    HandItem,
    augment,
    batch_loader,
    built_crop_margin,
    drop_masks,
    read_hand_items,
)
from handsynth.twostage.handgen.model import (
    HandGenerator,
    build_mask_head,
    mask_feature_module,
    size_multiple,
    widen_conv_in,
)
from handsynth.twostage.handgen.pipeline import (
    HandGeneratorPipeline,
    hand_heatmaps,
    heatmap_picture,
    mask_picture,
    save_hand_generator,
)

log = logging.getLogger(__name__)

VALIDATION_HANDS = 4


class HandgenTrainer(Trainer):
    """The widened UNet and its mask head, trained on hand crops through the shared machinery."""

    def __init__(
        self,
        config: Config,
        accelerator: Any,
        models: BaseModels,
        items: list[HandItem],
        work: Path,
        plan: dict[str, Any],
        total_steps: int,
    ) -> None:
        super().__init__(config, accelerator, work, plan, total_steps, name="handgen")
        handgen, device = self.config.handgen, self.device
        self.items = items
        self.noise_scheduler = models.noise_scheduler
        self.tokenizer = models.tokenizer
        self.resolution = handgen.resolution or models.resolution
        multiple = size_multiple(models.unet, models.vae_scale)
        if self.resolution % multiple:
            raise HandsynthError(
                f"handgen.resolution must be a multiple of {multiple}, got {self.resolution}"
            )
        self.latent_size = self.resolution // models.vae_scale

        # Frozen parts in the compute dtype; the UNet and mask head keep fp32 master weights.
        self.vae = self.frozen(models.vae)
        self.text_encoder = self.frozen(models.text_encoder)
        seed = self.config.run.seed
        unet = widen_conv_in(models.unet, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        mask_head = build_mask_head(unet, models.vae_scale)
        unet = ready_for_training(unet, device, self.config.train.gradient_checkpointing)
        self.model_plain = HandGenerator(unet, mask_head.to(device).train())
        optimizer = self.make_optimizer(list(self.model_plain.parameters()), handgen.lr)
        self.model, self.optimizer = accelerator.prepare(self.model_plain, optimizer)
        self.mask_feature = next(n for n, m in unet.named_modules() if m is mask_feature_module(unet))

    # --- what the machinery checkpoints and shows

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"model": dict(self.model_plain.named_parameters())}

    def shared_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def sampling_settings(self) -> dict[str, Any]:
        handgen = self.config.handgen
        return {"resolution": self.resolution, "steps": handgen.steps, "guidance": handgen.guidance}

    def validation_grid(self) -> Image.Image:
        """One row per validation hand: heatmap | generated hand | predicted mask, mask-free sampling."""
        from diffusers.utils import make_image_grid

        items = self.items[:VALIDATION_HANDS]
        pipe = HandGeneratorPipeline(
            self.vae,
            self.text_encoder,
            self.tokenizer,
            self.model_plain,
            self.noise_scheduler,
            self.sampling_settings(),
        )
        r = self.resolution
        hands = [crop_keypoints_at(item, r) for item in items]
        out = pipe(
            [item.caption for item in items],
            keypoints=hands,
            generator=torch.Generator().manual_seed(self.config.run.seed),
        )
        cells = []
        for h, image, mask in zip(hands, out.images, out.masks, strict=True):
            cells += [heatmap_picture(hand_heatmaps(h, r, r)), image, mask_picture(mask)]
        return make_image_grid(cells, rows=len(items), cols=3)

    # --- per step

    def losses(
        self,
        latents: torch.Tensor,
        embeddings: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        conditions: torch.Tensor,
        masks: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, L_LDM, mask MSE), each per item, in fp32."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        noise_pred, mask_pred = self.model(noisy, timesteps, embeddings, conditions.to(self.device))
        target = noise_target(self.noise_scheduler, latents, noise, timesteps)
        ldm = F.mse_loss(noise_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        mask = F.mse_loss(mask_pred.float(), masks.to(self.device).float(), reduction="none")
        mask = mask.mean(dim=(1, 2, 3))
        return ldm + self.config.handgen.mask_loss_weight * mask, ldm, mask

    def train_step(self, batch: HandBatch) -> float:
        """One optimiser step on `batch`; returns the loss averaged over processes."""
        pixels = augment(batch.pixels, self.generator).to(self.device)
        conditions, _ = drop_masks(batch.conditions, self.config.handgen.mask_dropout, self.generator)
        captions = drop_captions(batch.captions, self.config.handgen.caption_dropout, self.generator)
        latents = encode_images(self.vae, pixels * 2 - 1, self.generator)
        embeddings = encode_text(self.tokenizer, self.text_encoder, captions)
        t, noise = self.draw_noise(latents, self.noise_scheduler.config.num_train_timesteps)
        losses, ldm, mask = self.losses(latents, embeddings, t, noise, conditions, batch.masks)
        terms = {"ldm": self._mean(ldm), "mask": self._mean(mask)}
        keys = batch.keys
        return self.optimise(losses, self.optimizer, "handgen", "hand generator", keys, "handgen.lr", **terms)

    def _mean(self, values: torch.Tensor) -> float:
        return self.acc.gather(values.detach().float().mean().reshape(1)).mean().item()

    def loop(self) -> None:
        handgen = self.config.handgen
        # the steps left, planned here (a resumed run skips the done ones), loaded ahead in workers
        plan = [
            index.tolist()
            for index in self.shuffled_batches(len(self.items), handgen.batch_size, handgen.epochs)
        ]
        workers = self.config.train.num_workers
        for batch in batch_loader(self.items, plan, self.resolution, self.latent_size, workers):
            self.train_step(batch)
            self.after_step()

    # --- the result

    def save_model(self, model_dir: Path, settings: dict[str, Any]) -> None:
        """The hand-generator folder (see `handgen.pipeline`), written by the main process."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model, keep_fp32_wrapper=False)
            save_hand_generator(model_dir, self.config.handgen.base, model.unet, model.mask_head, settings)
        self.acc.wait_for_everyone()


def crop_keypoints_at(item: HandItem, resolution: int) -> np.ndarray:
    """The item's keypoints moved from its crop's pixels to a `resolution`-px image."""
    with Image.open(item.image) as image:
        scale = resolution / image.width
    hands = item.hands.copy()
    hands[:, :2] *= scale
    return hands


def check_handgen_settings(config: Config) -> None:
    check_settings(config)
    handgen = config.handgen
    for key in ("mask_dropout", "caption_dropout"):
        if not 0.0 <= getattr(handgen, key) <= 1.0:
            raise HandsynthError(f"handgen.{key} must be in [0, 1], got {getattr(handgen, key)}")
    if handgen.mask_loss_weight < 0 or handgen.lr <= 0:
        raise HandsynthError("handgen.mask_loss_weight must be >= 0 and handgen.lr > 0")
    if config.train.num_workers < 0:
        raise HandsynthError(
            f"train.num_workers must be >= 0 (0: in the training process), got {config.train.num_workers}"
        )
    if handgen.batch_size < 1 or handgen.epochs < 1 or handgen.resolution < 0:
        raise HandsynthError("handgen.batch_size and handgen.epochs must be >= 1, handgen.resolution >= 0")


def train_handgen(
    config: Config, hands_manifest: str | Path, out_dir: str | Path, model_dir: str | Path | None = None
) -> Path:
    """Train a hand generator on the train rows of `hands_manifest`; return its folder (`model_dir`,
    else `handgen.model_dir`, else `<out_dir>/models/handgen`). Work files go to
    `<out_dir>/train/handgen/`: config.toml, loss.jsonl, checkpoints/, validation/ grids, and TensorBoard
    logs when tensorboard is installed."""
    from accelerate.utils import set_seed

    check_handgen_settings(config)
    config = resolve_auto_settings(config)
    handgen = config.handgen
    out_dir = Path(out_dir)
    model_dir = Path(model_dir or handgen.model_dir or out_dir / "models" / "handgen")
    work = out_dir / "train" / "handgen"
    items = read_hand_items(hands_manifest, "train")
    acc = make_accelerator(config, work)
    total = handgen.epochs * math.ceil(len(items) / (handgen.batch_size * acc.num_processes))
    plan = {
        "hands": keys_digest(item.key for item in items),
        "base": handgen.base,
        "resolution": handgen.resolution,
        "batch_size": handgen.batch_size,
        "epochs": handgen.epochs,
        "lr": handgen.lr,
        "mask_loss_weight": handgen.mask_loss_weight,
        "mask_dropout": handgen.mask_dropout,
        "caption_dropout": handgen.caption_dropout,
    }
    set_seed(config.run.seed)
    trainer = HandgenTrainer(config, acc, load_base_models(handgen.base), items, work, plan, total)
    log.info(
        "training the hand generator: %d hand crops at %d px, %d steps per process on %d process(es) -> %s",
        len(items),
        trainer.resolution,
        total,
        acc.num_processes,
        model_dir,
    )
    trainer.train(trainer.loop)
    settings = {
        **trainer.sampling_settings(),
        "base": handgen.base,
        "mask_loss_weight": handgen.mask_loss_weight,
        "mask_dropout": handgen.mask_dropout,
        "caption_dropout": handgen.caption_dropout,
        "heatmap_sigma_fraction": SIGMA_FRACTION,
        # the two-stage pipeline cuts a pose's hands with the margin the generator learned from
        "crop_margin": built_crop_margin(hands_manifest, config.pose.crop_margin),
        "mask_feature": f"input of {trainer.mask_feature}",
        "handgen": dataclasses.asdict(handgen),
        "train": dataclasses.asdict(config.train),
        "trained_steps": trainer.step,
        "total_steps": total,
        "hand_crops": len(items),
    }
    trainer.save_model(model_dir, settings)
    acc.end_training()
    return model_dir
