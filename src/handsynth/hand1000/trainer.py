"""Hand1000 Stages II and III (`handsynth train`): optimise the text embedding, then fine-tune the UNet.

Per training image the official loop (SPEC §A) does:

    z0 = VAE(image).latent_dist.sample() * scaling_factor;  e = CLIP(caption)
    d = λ·e + (1−λ)·fc(e, f)                   # f: the gesture's Stage I mean feature
    Stage II:  10 Adam steps, lr 1e-3, on d     (UNet frozen)
    Stage III: 20 Adam steps, lr 1e-6, on the UNet (d frozen)
    loss = MSE(ε_θ(z_t, t, d), ε),  z_t = add_noise(z0, ε, t),  t ~ U{0..999}, ε ~ N(0, I) every step
    with a fresh Adam per image.

Two schedules spend that budget:

- `reference`: exactly that loop, image by image.
- `batched`: Stage II for every image first, `batch_size` embeddings at a time, each written to
  `<work>/embeddings/<key>.safetensors` with its VAE latent; then Stage III over the cached set in
  shuffled mini-batches with one persistent Adam, for `unet_epochs` passes (default `unet_steps`, so
  every image still gets as many UNet gradient evaluations as in the reference).

With `model.train_fusion` Stage II optimises the fusion weights instead of a free `d` (d is then
recomputed through the fusion at every step), so the saved fusion is a learned projection; without it,
`d` is the optimised tensor and the fusion stays the fixed random projection of the reference.

The shared machinery (`handsynth.training.trainer`) does the rest: one CPU generator for every draw,
checkpoints, `--resume`, the NaN stop, logs and validation grids. The step counter alone says where in
the schedule the run is, so a killed run resumed with `--resume` ends bit-identical (on CPU) to an
uninterrupted one. Runs under `accelerate launch` (DDP): each process takes its share of the images.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from handsynth import files, hub
from handsynth.config import Config
from handsynth.data.gestures import check_gesture, gesture_phrase
from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.hand1000.fusion import (
    FlatFusion,
    build_fusion,
    double_fuse,
    read_feature_file,
    save_hand1000,
)
from handsynth.training.diffusion import (
    BaseModels,
    ddim_scheduler,
    diffusion_loss,
    encode_images,
    encode_text,
    load_base_models,
    ready_for_training,
)
from handsynth.training.trainer import (
    Trainer,
    check_settings,
    keys_digest,
    make_accelerator,
    resolve_auto_settings,
)

log = logging.getLogger(__name__)

SCHEDULES = ("reference", "batched")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
VALIDATION_PROMPTS = 4


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainItem:
    key: str
    image: Path
    caption: str


def read_train_items(dataset_dir: str | Path, gesture: str, max_images: int = 0) -> list[TrainItem]:
    """The gesture's rows of `<dataset>/train.jsonl` whose image decodes; bad rows are skipped and counted."""
    dataset_dir = Path(dataset_dir)
    manifest = dataset_dir / "train.jsonl"
    if not manifest.is_file():
        raise HandsynthError(
            f"no training manifest at {manifest}; build the dataset with `handsynth data build`"
        )
    rows = files.read_jsonl(manifest)
    rows_of_gesture = [row for row in rows if row.get("gesture") == gesture]
    if not rows_of_gesture:
        found = sorted({str(row.get("gesture")) for row in rows})
        raise HandsynthError(
            f"{manifest} has no training images of gesture '{gesture}'; it has: {', '.join(found) or 'none'}"
        )
    if max_images > 0:
        rows_of_gesture = rows_of_gesture[:max_images]
    items, bad = [], []
    for row in rows_of_gesture:
        key = str(row.get("key"))
        try:
            caption = str(row.get("caption") or "").strip()
            if not caption:
                raise HandsynthError("empty caption")
            path = dataset_dir / row["image"]
            load_rgb(path)  # decode now, so a corrupt file is skipped here rather than found mid-run
        except (HandsynthError, KeyError) as exc:
            bad.append(f"{key}: {exc}")
            continue
        items.append(TrainItem(key, path, caption))
    if bad:
        shown = "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        log.warning(
            "skipped %d of %d training images of '%s': %s", len(bad), len(rows_of_gesture), gesture, shown
        )
    if not items:
        raise HandsynthError(
            f"none of the {len(rows_of_gesture)} '{gesture}' images in {manifest} could be used"
        )
    return items


def read_mean_feature(path: str | Path) -> np.ndarray:
    """The Stage I mean feature `<features>/<gesture>/mean.npy`."""
    path = Path(path)
    if not path.is_file():
        raise HandsynthError(f"no gesture feature at {path}; run `handsynth features` (Stage I) first")
    gesture = path.parent.name
    return read_feature_file(path, f"Rebuild it with `handsynth features --gesture {gesture}` (Stage I)")


def image_tensor(path: str | Path, resolution: int) -> torch.Tensor:
    """(3, R, R) in [-1, 1]: shorter side resized to R, then a centre crop (the official `load_img`)."""
    image = Image.fromarray(load_rgb(path))
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


# -------------------------------------------------------------------------------------- trainer


class Hand1000Trainer(Trainer):
    """Hand1000's models and its two kinds of step on top of the shared machinery.

    The schedules (`run_reference`, `run_batched`) decide which step comes next; a step computes the
    loss, and the machinery checks it, logs it, and writes checkpoints and validation grids when due.
    """

    stale_outputs = (*Trainer.stale_outputs, "embeddings")

    def __init__(
        self,
        config: Config,
        accelerator: Any,
        models: BaseModels,
        feature: np.ndarray,
        work: Path,
        plan: dict[str, Any],
        total_steps: int,
        validation_captions: list[str],
    ) -> None:
        super().__init__(config, accelerator, work, plan, total_steps, name="hand1000")
        config, train, device = self.config, self.config.train, self.device
        self.lam = config.model.lam
        self.noise_scheduler = models.noise_scheduler
        self.tokenizer = models.tokenizer
        self.resolution = models.resolution
        self.validation_captions = validation_captions
        self.bar.set_description(f"train {plan['gesture']}")

        # Frozen parts in the compute dtype; the UNet keeps fp32 master weights under autocast.
        self.vae = self.frozen(models.vae)
        self.text_encoder = self.frozen(models.text_encoder)
        unet = ready_for_training(models.unet, device, train.gradient_checkpointing)
        if train.lora_rank > 0:
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(
                LoraConfig(
                    r=train.lora_rank,
                    lora_alpha=train.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS,
                )
            )
        self.trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
        self.unet_plain = unet

        # The fusion: seeded, so the reference's fixed random projection is reproducible.
        text_dim = models.text_encoder.config.hidden_size
        seq_len = models.tokenizer.model_max_length
        torch.manual_seed(config.run.seed)
        fusion = build_fusion(config.model.fusion, text_dim, seq_len)
        if isinstance(fusion, FlatFusion):
            fusion.materialize(device)
        fusion = fusion.to(device).requires_grad_(config.model.train_fusion)
        self.fusion_plain = fusion
        self.feature_np = feature
        self.feature = torch.from_numpy(feature).to(device)

        # Stage II optimises the fusion weights, or a free d of one unit's shape (1 image or one batch).
        if config.model.train_fusion:
            self.leaf = None
            embedding_params = list(fusion.parameters())
        else:
            rows = train.batch_size if train.schedule == "batched" else 1
            self.leaf = torch.nn.Parameter(torch.zeros(rows, seq_len, text_dim, device=device))
            embedding_params = [self.leaf]
        embedding_optimizer = torch.optim.Adam(embedding_params, lr=train.embedding_lr)
        unet_optimizer = self.make_optimizer(list(self.trainable.values()), train.unet_lr)
        if config.model.train_fusion:
            self.unet, self.fusion, self.embedding_optimizer, self.unet_optimizer = accelerator.prepare(
                unet, fusion, embedding_optimizer, unet_optimizer
            )
        else:
            self.unet, self.embedding_optimizer, self.unet_optimizer = accelerator.prepare(
                unet, embedding_optimizer, unet_optimizer
            )
            self.fusion = fusion

        self.keys: list[str] = []
        self.e: torch.Tensor | None = None
        self.latents: torch.Tensor | None = None

    # --- what the machinery checkpoints

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        # An untrained fusion is the seeded random projection that __init__ rebuilds from run.seed on a
        # resume, so it is not saved again at every checkpoint (a flat one is 14 GB).
        if not self.config.model.train_fusion:
            return {"unet": self.trainable}
        return {"unet": self.trainable, "fusion": self.fusion_plain.state_dict()}

    def shared_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.unet_optimizer}

    def rank_state(self) -> dict[str, Any]:
        return {
            "embedding_optimizer": self.embedding_optimizer.state_dict(),
            "leaf": None if self.leaf is None else self.leaf.detach().cpu().clone(),
            "latents": None if self.latents is None else self.latents.cpu().clone(),
        }

    def load_rank_state(self, state: dict[str, Any]) -> None:
        if self.leaf is not None:
            with torch.no_grad():
                self.leaf.copy_(state["leaf"])
        self.embedding_optimizer.load_state_dict(state["embedding_optimizer"])
        self.latents = None if state["latents"] is None else state["latents"].to(self.device)

    # --- one unit of work: an image (reference) or a batch (batched Stage II)

    def begin_unit(self, items: list[TrainItem], fresh: bool, reset_unet_optimizer: bool) -> None:
        """Encode the captions; when `fresh`, also encode the images, set d and reset the optimisers.

        Not fresh means the run resumed inside this unit: latents, d and optimiser states came from the
        checkpoint, and only the deterministic CLIP embeddings are recomputed.
        """
        self.keys = [item.key for item in items]
        self.e = encode_text(self.tokenizer, self.text_encoder, [item.caption for item in items])
        if not fresh:
            return
        pixels = torch.stack([image_tensor(item.image, self.resolution) for item in items])
        self.latents = encode_images(self.vae, pixels, self.generator)
        if self.leaf is not None:
            with torch.no_grad():
                self.leaf.copy_(double_fuse(self.e, self.fusion(self.e, self.feature), self.lam))
            self.embedding_optimizer.state.clear()  # a fresh Adam for the new d
        elif self.plan["schedule"] == "reference":
            self.embedding_optimizer.state.clear()
        if reset_unet_optimizer:
            self.unet_optimizer.state.clear()

    def embeddings(self) -> torch.Tensor:
        """d: the free tensor, or λ·e + (1−λ)·fc(e, f) through the fusion being trained."""
        if self.leaf is not None:
            return self.leaf
        return double_fuse(self.e, self.fusion(self.e, self.feature), self.lam)

    @torch.no_grad()
    def frozen_embeddings(self) -> torch.Tensor:
        return self.embeddings().detach().clone()

    def draw(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.draw_noise(latents, self.noise_scheduler.config.num_train_timesteps)

    # --- the two kinds of step

    def embedding_step(self, t: torch.Tensor, noise: torch.Tensor) -> float:
        """Stage II: one Adam step on d (or the fusion), UNet frozen."""
        self._set_unet_trainable(False)
        with self.acc.autocast():
            losses = diffusion_loss(
                self.unet_plain, self.noise_scheduler, self.latents, self.embeddings(), t, noise
            )
        # a sum, so each row of d gets the gradient it would get alone
        return self.optimise(
            losses, self.embedding_optimizer, "embedding", "Stage II (embedding)", self.keys,
            "train.embedding_lr", total=losses.sum(),
        )  # fmt: skip

    def unet_step(
        self, latents: torch.Tensor, d: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keys: list[str]
    ) -> float:
        """Stage III: one Adam step on the UNet (or its LoRA), d frozen."""
        self._set_unet_trainable(True)
        self.keys = keys
        with self.acc.autocast():
            losses = diffusion_loss(self.unet, self.noise_scheduler, latents, d, t, noise)
        return self.optimise(losses, self.unet_optimizer, "unet", "Stage III (UNet)", keys, "train.unet_lr")

    def _set_unet_trainable(self, flag: bool) -> None:
        # Stage II back-propagates through the UNet to d only; frozen weights skip their gradients.
        for p in self.trainable.values():
            p.requires_grad_(flag)

    # --- validation and the cache of the batched schedule

    def validation_grid(self) -> Image.Image | None:
        """Images from the first training captions, sampled as at inference, seeded."""
        if not self.validation_captions:
            return None
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import make_image_grid

        gen = self.config.generate
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.acc.unwrap_model(self.unet),
            scheduler=ddim_scheduler(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        e = encode_text(self.tokenizer, self.text_encoder, self.validation_captions)
        d = double_fuse(e, self.fusion_plain(e, self.feature), gen.mu)
        empty = encode_text(self.tokenizer, self.text_encoder, [""] * len(self.validation_captions))
        with self.acc.autocast():
            images = pipe(
                prompt_embeds=d,
                negative_prompt_embeds=empty,
                num_inference_steps=gen.steps,
                guidance_scale=gen.guidance,
                height=self.resolution,
                width=self.resolution,
                generator=torch.Generator().manual_seed(self.config.run.seed),
            ).images
        return make_image_grid(images, rows=1, cols=len(images))

    def cache_unit(self) -> None:
        """Write each image's optimised d and VAE latent to `<work>/embeddings/<key>.safetensors`."""
        from safetensors.torch import save_file

        d = self.frozen_embeddings().cpu()
        for row, key in enumerate(self.keys):
            tensors = {"embedding": d[row].contiguous(), "latent": self.latents[row].cpu().contiguous()}
            with files.atomic_path(self.work / "embeddings" / f"{key}.safetensors") as tmp:
                save_file(tensors, str(tmp))

    def load_cache(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file

        latents, embeddings = [], []
        for key in keys:
            path = self.work / "embeddings" / f"{key}.safetensors"
            if not path.is_file():
                raise HandsynthError(
                    f'the Stage II cache lacks {path}; start again with train.init_from = "scratch"'
                )
            tensors = load_file(str(path))
            latents.append(tensors["latent"])
            embeddings.append(tensors["embedding"])
        return torch.stack(latents), torch.stack(embeddings)

    # --- the result

    def save_model(self, model_dir: Path, meta: dict[str, Any], base: str) -> None:
        """The diffusers pipeline folder with the fine-tuned UNet (LoRA merged), plus `hand1000/`."""
        from diffusers import StableDiffusionPipeline

        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            unet = self.acc.unwrap_model(self.unet, keep_fp32_wrapper=False)
            unet.requires_grad_(False)
            with files.atomic_dir(model_dir) as tmp:
                if self.config.train.lora_rank > 0:
                    from diffusers.utils import convert_state_dict_to_diffusers
                    from peft.utils import get_peft_model_state_dict

                    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
                    StableDiffusionPipeline.save_lora_weights(
                        tmp / "hand1000" / "lora", unet_lora_layers=lora
                    )
                    unet.fuse_lora()  # merged, so that plain diffusers loads the folder without peft
                    unet.unload_lora()
                # The frozen parts come fresh from the base model, in fp32.
                pipe = hub.from_pretrained(
                    StableDiffusionPipeline,
                    base,
                    unet=unet,
                    safety_checker=None,
                    requires_safety_checker=False,
                )
                pipe.save_pretrained(tmp)
                save_hand1000(tmp, self.fusion_plain, self.feature_np, meta)
        self.acc.wait_for_everyone()


# ------------------------------------------------------------------------------------ schedules


def run_reference(trainer: Hand1000Trainer, items: list[TrainItem]) -> None:
    """The official loop: per image, E Adam steps on d, then U on the UNet, with fresh optimisers."""
    train = trainer.config.train
    per_image = train.embedding_steps + train.unet_steps
    for n, item in enumerate(items):
        first = n * per_image
        if trainer.step >= first + per_image:
            continue  # finished before the checkpoint this run resumed from
        trainer.begin_unit([item], fresh=trainer.step == first, reset_unet_optimizer=True)
        d = None
        for s in range(trainer.step - first, per_image):
            t, noise = trainer.draw(trainer.latents)
            if s < train.embedding_steps:
                trainer.embedding_step(t, noise)
            else:
                d = trainer.frozen_embeddings() if d is None else d
                trainer.unet_step(trainer.latents, d, t, noise, trainer.keys)
            trainer.after_step()


def run_batched(trainer: Hand1000Trainer, items: list[TrainItem], all_keys: list[str]) -> None:
    """Stage II for every image in batches (cached to disk), then Stage III in shuffled mini-batches."""
    train = trainer.config.train
    batch, steps = train.batch_size, train.embedding_steps
    units = [items[i : i + batch] for i in range(0, len(items), batch)]
    for n, unit in enumerate(units):
        first = n * steps
        if trainer.step >= first + steps:
            continue
        trainer.begin_unit(unit, fresh=trainer.step == first, reset_unet_optimizer=False)
        for s in range(trainer.step - first, steps):
            trainer.embedding_step(*trainer.draw(trainer.latents))
            if s == steps - 1:
                trainer.cache_unit()  # before a checkpoint at this step can name it as done
            trainer.after_step()
    trainer.acc.wait_for_everyone()

    latents, embeddings = trainer.load_cache(all_keys)
    trainer.latents = None
    epochs = train.unet_epochs or train.unet_steps
    for index in trainer.shuffled_batches(len(all_keys), batch, epochs, first_step=len(units) * steps):
        z0 = latents[index].to(trainer.device)
        keys = [all_keys[i] for i in index.tolist()]
        trainer.unet_step(z0, embeddings[index].to(trainer.device), *trainer.draw(z0), keys)
        trainer.after_step()


def schedule_steps(train: Any, n_items: int, n_images: int, world: int) -> int:
    """Optimiser steps per process: `n_items` is this process's share (padded), `n_images` the set."""
    if train.schedule == "reference":
        return n_items * (train.embedding_steps + train.unet_steps)
    per_epoch = math.ceil(n_images / (train.batch_size * world))
    return math.ceil(n_items / train.batch_size) * train.embedding_steps + (
        (train.unet_epochs or train.unet_steps) * per_epoch
    )


def check_train_settings(config: Config) -> None:
    """The `[train]` and `[model]` keys Stages II and III read, checked before any model loads."""
    check_settings(config)
    train = config.train
    if train.schedule not in SCHEDULES:
        raise HandsynthError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{train.schedule}'")
    if train.batch_size < 1 or train.embedding_steps < 0 or train.unet_steps < 0 or train.lora_rank < 0:
        raise HandsynthError("train.batch_size must be >= 1, and the step counts and lora_rank >= 0")
    if train.schedule == "batched" and train.embedding_steps < 1:
        raise HandsynthError("the batched schedule needs train.embedding_steps >= 1")
    if not 0.0 <= config.model.lam <= 1.0:
        raise HandsynthError(f"model.lam must be in [0, 1], got {config.model.lam}")
    if config.model.lam == 1.0 and config.model.train_fusion:
        # d = 1·e + 0·fc(e, f) = e: the fusion never reaches the loss, so it has no gradient to train on.
        raise HandsynthError(
            "model.lam = 1 makes d = e, so the fusion takes no part in training and model.train_fusion = "
            "true has nothing to train. Set model.train_fusion = false (Stage II then optimises d itself, "
            "as the official code does), or a model.lam below 1"
        )


def train_hand1000(
    config: Config,
    dataset_dir: str | Path,
    feature_path: str | Path,
    out_dir: str | Path,
    gesture: str,
    model_dir: str | Path | None = None,
) -> Path:
    """Train a Hand1000 model for `gesture`; return its folder (`<out_dir>/models/<gesture>` by default).

    Work files go to `<out_dir>/train/<gesture>/`: config.toml, loss.jsonl, checkpoints/, embeddings/
    (batched schedule), validation/ grids, and TensorBoard logs when tensorboard is installed.
    """
    from accelerate.utils import set_seed

    check_gesture(gesture)
    check_train_settings(config)
    config = resolve_auto_settings(config)
    train = config.train
    out_dir = Path(out_dir)
    model_dir = Path(model_dir) if model_dir else out_dir / "models" / gesture
    work = out_dir / "train" / gesture
    acc = make_accelerator(config, work)
    items = read_train_items(dataset_dir, gesture, train.max_images)
    feature = read_mean_feature(feature_path)

    # Each process takes every W-th image of the set, wrapped round so that all get the same count
    # (and, for the batched schedule, whole batches).
    world, rank = acc.num_processes, acc.process_index
    share = math.ceil(len(items) / world)
    if train.schedule == "batched":
        share = math.ceil(share / train.batch_size) * train.batch_size
    padded = [items[i % len(items)] for i in range(share * world)]
    mine = padded[rank::world]
    total = schedule_steps(train, len(mine), len(items), world)
    plan = {
        "gesture": gesture,
        "schedule": train.schedule,
        "embedding_steps": train.embedding_steps,
        "embedding_lr": train.embedding_lr,
        "unet_steps": train.unet_steps,
        "unet_lr": train.unet_lr,
        "unet_epochs": train.unet_epochs,
        "batch_size": train.batch_size,
        "images": keys_digest(item.key for item in items),
        "fusion": config.model.fusion,
        "train_fusion": config.model.train_fusion,
        "lam": config.model.lam,
        "lora_rank": train.lora_rank,
        "base": config.model.base,
    }

    set_seed(config.run.seed)
    models = load_base_models(config.model.base)
    captions = [item.caption for item in items[:VALIDATION_PROMPTS]]
    trainer = Hand1000Trainer(config, acc, models, feature, work, plan, total, captions)
    log.info(
        "training '%s': %d images, %s schedule, %d steps per process on %d process(es) -> %s",
        gesture,
        len(items),
        train.schedule,
        total,
        world,
        model_dir,
    )
    if train.schedule == "reference":
        trainer.train(lambda: run_reference(trainer, mine))
    else:
        trainer.train(lambda: run_batched(trainer, mine, [item.key for item in items]))
    meta = {
        "gesture": gesture,
        "phrase": gesture_phrase(gesture),
        "lam": config.model.lam,
        "mu": config.generate.mu,
        "base_model": config.model.base,
        "train_fusion": config.model.train_fusion,
        "train": dataclasses.asdict(train),
        "steps": trainer.step,
        "total_steps": total,
        "images": len(items),
        "resolution": trainer.resolution,  # Hand1000Pipeline draws at this size unless told otherwise
    }
    if train.lora_rank > 0:
        meta["lora"] = "hand1000/lora"
    trainer.save_model(model_dir, meta, config.model.base)
    acc.end_training()
    return model_dir


# ------------------------------------------------------------------------------------------ CLI
