"""`handsynth tiny pretrain`: the tiny family trained on synthetic figures, so the demo shows effects.

Five stages, each a `Trainer` that adds only its loss and its data (resume, logs, NaN stop and
checkpoints are the shared machinery's), on figures of a data seed the demo and the tests never draw:

    vae         MSE + a light KL on 32 px crops of the 128 px and 64 px renders; then the latent
                scaling factor is set to 1/std of the training latents, as SD's was
    decoder     the decoder alone, on 48 px crops from the frozen encoder's posterior mean (SD's
                ft-MSE way): sharper reconstructions, and the latents of the later stages stay
    unet        the text-to-image UNet, ε-prediction on 64 px figures, captions dropped 10% (guidance)
    inpaint     the 9-channel UNet, widened from the trained one as SD inpainting was from SD; masks
                keep the hands and paint the rest (the outpainter's task) or paint a random box
    controlnet  `ControlNetModel.from_unet` of the trained UNet, trained against the frozen UNet on
                OpenPose skeletons that handsynth draws from the renderer's whole-body keypoints

The text encoder stays the tiny SD's seeded random CLIP text tower, frozen: a fixed random map still
gives each prompt its own embedding, and no stage waits for a contrastive pretraining.

A stage whose model is written is skipped, one with a checkpoint resumes, so the same command continues
across sessions; `--stages inpaint` and `--stages controlnet` may run as two processes once the UNet is
trained. When all five exist, `<out>/sd`, `<out>/sd-inpainting` and `<out>/controlnet` are
written as diffusers folders with `recipe.json` (command, seed, steps, data seeds, time taken) and
`manifest.json` (sha256 of each file) beside them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.tiny.figures import HELD_OUT_DATA_SEED, TRAIN_DATA_SEED, Figures, cached_figures
from handsynth.tiny.pretrained import STAGES, write_manifest
from handsynth.training.diffusion import (
    BaseModels,
    diffusion_loss,
    encode_images,
    encode_text,
    ready_for_training,
)
from handsynth.training.trainer import Trainer, make_accelerator

log = logging.getLogger(__name__)

NEEDS = {
    "vae": (),
    "decoder": ("vae",),
    "unet": ("vae",),
    "inpaint": ("vae", "unet"),
    "controlnet": ("vae", "unet"),
}
VAE_CROP = 32
DECODER_CROP = 48
KL_WEIGHT = 1e-6
CAPTION_DROPOUT = 0.1
CHECKPOINT_EVERY = 50  # steps; a stopped stage loses at most this many
HAND_MARGIN = 2  # px at 64 px kept around the hands in an outpainting mask


@dataclass
class Recipe:
    """What decides the weights; written beside them, and what `--recipe` reads back."""

    seed: int = 0
    data_seed: int = TRAIN_DATA_SEED
    per_gesture: int = 100
    batch_size: int = 8
    steps: dict[str, int] = field(
        default_factory=lambda: {"vae": 1200, "decoder": 800, "unet": 800, "inpaint": 100, "controlnet": 200}
    )
    lr: dict[str, float] = field(
        default_factory=lambda: {
            "vae": 1e-3,
            "decoder": 5e-4,
            "unet": 4e-4,
            "inpaint": 3e-4,
            "controlnet": 3e-4,
        }
    )

    def command(self) -> str:
        """The command line that trains these weights again, stage by stage, into OUT."""
        steps = " ".join(f"--{stage}-steps {n}" for stage, n in self.steps.items())
        return (
            f"handsynth tiny pretrain --out OUT --seed {self.seed} --per-gesture {self.per_gesture} "
            f"--batch-size {self.batch_size} {steps}"
        )

    def check(self) -> Recipe:
        for name, table in (("steps", self.steps), ("lr", self.lr)):
            if set(table) != set(STAGES) or min(table.values()) <= 0:
                raise HandsynthError(f"recipe {name} must give every stage ({', '.join(STAGES)}) a value > 0")
        if self.data_seed == HELD_OUT_DATA_SEED:
            raise HandsynthError(f"data seed {HELD_OUT_DATA_SEED} is the benchmark's held-out seed")
        if self.per_gesture < 1 or self.batch_size < 1:
            raise HandsynthError("the recipe's per_gesture and batch_size must be >= 1")
        return self


def read_recipe(path: str | Path) -> Recipe:
    """The `Recipe` of a recipe.json written by `pretrain`."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))["recipe"]
        return Recipe(**saved).check()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HandsynthError(
            f"cannot read the recipe {path}: {exc}; give a recipe.json from a pretrain run"
        ) from None


class StageTrainer(Trainer):
    """One stage's model and optimiser on the shared machinery; a subclass gives `losses`."""

    stage = ""

    def __init__(
        self, recipe: Recipe, figures: Figures, base: BaseModels, work: Path, model: torch.nn.Module
    ):
        config = _trainer_config(recipe, work)
        plan = {"recipe": dataclasses.asdict(recipe), "stage": self.stage}
        super().__init__(
            config,
            make_accelerator(config, work),
            work,
            plan,
            recipe.steps[self.stage],
            f"pretrain {self.stage}",
        )
        self.recipe, self.figures, self.base = recipe, figures, base
        self.scheduler = base.noise_scheduler
        autoencoder = self.stage in ("vae", "decoder")
        self.model = model.train() if autoencoder else ready_for_training(model, self.device, False)
        self.optimizer = self.make_optimizer(list(self.model.parameters()), recipe.lr[self.stage])

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"model": dict(self.model.named_parameters())}

    def shared_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def loop(self) -> None:
        n, batch = len(self.figures), self.recipe.batch_size
        epochs = -(-self.total_steps // self.batches_per_epoch(n, batch))
        for index in self.shuffled_batches(n, batch, epochs):
            if self.step >= self.total_steps:
                break
            index = index.tolist()
            losses, terms = self.losses(index)
            keys = [self.figures.keys[i] for i in index]
            self.optimise(losses, self.optimizer, self.stage, f"pretrain {self.stage}", keys,
                          f"the recipe's lr.{self.stage}", **terms)  # fmt: skip
            self.after_step()

    # --- shared inputs

    def pixels(self, index: list[int]) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1]."""
        return torch.from_numpy(self.figures.small[index]).permute(0, 3, 1, 2).float() / 127.5 - 1

    def crops(self, index: list[int], size: int) -> torch.Tensor:
        """(B, 3, size, size) in [-1, 1]: a random crop of each figure's 128 px render or, half the
        time, of its 64 px version, so that the autoencoder learns both scales."""
        crops = []
        for i in index:
            full = torch.rand(1, generator=self.generator) < 0.5
            image = self.figures.full[i] if full else self.figures.small[i]
            y, x = torch.randint(0, image.shape[0] - size + 1, (2,), generator=self.generator).tolist()
            crops.append(image[y : y + size, x : x + size])
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def prompts(self, index: list[int]) -> torch.Tensor:
        """CLIP embeddings of the figures' prompts, each dropped to "" with p = CAPTION_DROPOUT."""
        keep = torch.rand(len(index), generator=self.generator) >= CAPTION_DROPOUT
        captions = [self.figures.prompts[i] if k else "" for i, k in zip(index, keep.tolist(), strict=True)]
        return encode_text(self.base.tokenizer, self.base.text_encoder, captions)

    def noised(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, noise = self.draw_noise(latents, self.scheduler.config.num_train_timesteps)
        return self.scheduler.add_noise(latents, noise, t), t, noise


class VaeTrainer(StageTrainer):
    stage = "vae"

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = self.crops(index, VAE_CROP)
        posterior = self.model.encode(pixels).latent_dist
        reconstruction = self.model.decode(posterior.sample(generator=self.generator)).sample
        mse = F.mse_loss(reconstruction, pixels, reduction="none").mean(dim=(1, 2, 3))
        kl = posterior.kl()
        return mse + KL_WEIGHT * kl, {"mse": mse.mean().item(), "kl": kl.mean().item()}


class DecoderTrainer(StageTrainer):
    """The VAE's decoder fine-tuned on reconstruction from the frozen encoder's posterior mean, as
    SD's ft-MSE decoder was: sharper images, and the latents the UNets learn do not move."""

    stage = "decoder"

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = self.crops(index, DECODER_CROP)
        with torch.no_grad():
            latents = self.model.encode(pixels).latent_dist.mean
        reconstruction = self.model.decode(latents).sample
        return F.mse_loss(reconstruction, pixels, reduction="none").mean(dim=(1, 2, 3)), {}


class UnetTrainer(StageTrainer):
    stage = "unet"

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        latents = encode_images(self.base.vae, self.pixels(index), self.generator)
        t, noise = self.draw_noise(latents, self.scheduler.config.num_train_timesteps)
        return diffusion_loss(self.model, self.scheduler, latents, self.prompts(index), t, noise), {}


class InpaintTrainer(StageTrainer):
    stage = "inpaint"

    def masks(self, index: list[int]) -> torch.Tensor:
        """(B, 1, 64, 64), 1 = paint: all but the (dilated) hands, or a random box, half and half."""
        out = np.zeros((len(index), 1, 64, 64), np.float32)
        kernel = np.ones((2 * HAND_MARGIN + 1,) * 2, np.uint8)
        for row, i in enumerate(index):
            if torch.rand(1, generator=self.generator) < 0.5:
                hands = cv2.dilate(self.figures.hand_masks[i].astype(np.uint8), kernel)
                out[row, 0] = 1 - hands
            else:
                h, w = torch.randint(16, 49, (2,), generator=self.generator).tolist()
                y, x = (
                    torch.randint(0, 64 - h + 1, (1,), generator=self.generator).item(),
                    torch.randint(0, 64 - w + 1, (1,), generator=self.generator).item(),
                )
                out[row, 0, y : y + h, x : x + w] = 1
        return torch.from_numpy(out)

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        vae = self.base.vae
        pixels = self.pixels(index)
        latents = encode_images(vae, pixels, self.generator)
        masks = self.masks(index)
        with torch.no_grad():  # SD inpainting's masked-image latent: the posterior's mode
            masked = vae.encode(pixels * (1 - masks)).latent_dist.mode() * vae.config.scaling_factor
        noisy, t, noise = self.noised(latents)
        small_masks = F.interpolate(masks, size=latents.shape[-2:])
        inputs = torch.cat([noisy, small_masks, masked], dim=1)
        prediction = self.model(inputs, t, encoder_hidden_states=self.prompts(index)).sample
        return F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)), {}


class ControlnetTrainer(StageTrainer):
    stage = "controlnet"

    def losses(self, index: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        latents = encode_images(self.base.vae, self.pixels(index), self.generator)
        noisy, t, noise = self.noised(latents)
        embeddings = self.prompts(index)
        condition = torch.from_numpy(self.figures.skeletons[index]).permute(0, 3, 1, 2).float() / 255
        down, mid = self.model(
            noisy, t, encoder_hidden_states=embeddings, controlnet_cond=condition, return_dict=False
        )
        prediction = self.base.unet(
            noisy,
            t,
            encoder_hidden_states=embeddings,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)), {}


TRAINERS = {t.stage: t for t in (VaeTrainer, DecoderTrainer, UnetTrainer, InpaintTrainer, ControlnetTrainer)}


def _trainer_config(recipe: Recipe, work: Path) -> Config:
    config = Config()
    resume = (work / "checkpoints" / "latest").is_file()
    config.run = dataclasses.replace(config.run, seed=recipe.seed, device="cpu")
    config.train = dataclasses.replace(
        config.train,
        init_from="resume" if resume else "scratch",
        mixed_precision="no",
        optimizer="adam",
        checkpoint_every=CHECKPOINT_EVERY,
        validate_every=0,
    )
    return config


def _base(tokenizer_folder: Path, recipe: Recipe) -> tuple[BaseModels, Any]:
    """The tiny SD of the recipe's seed (its tokenizer and frozen text encoder are kept), with its
    training noise schedule, and its DDIM sampler for the written pipelines."""
    from diffusers import DDPMScheduler

    from handsynth.tiny.sd import build_tiny_sd
    from handsynth.tiny.tokenizer import write_clip_tokenizer

    if not (tokenizer_folder / "vocab.json").is_file():
        write_clip_tokenizer(tokenizer_folder)
    sd = build_tiny_sd(tokenizer_folder, seed=recipe.seed)
    base = BaseModels(
        tokenizer=sd.tokenizer,
        text_encoder=sd.text_encoder.requires_grad_(False).eval(),
        vae=sd.vae,
        unet=sd.unet,
        noise_scheduler=DDPMScheduler.from_config(sd.scheduler.config),
    )
    return base, sd.scheduler


def _stage_model(stage: str, work: Path, base: BaseModels, seed: int) -> torch.nn.Module:
    """The model a stage starts from: the random tiny one, or one made from the trained UNet."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from handsynth.tiny.controlnet import CONDITION_CHANNELS
    from handsynth.tiny.sd import INPAINT_CHANNELS
    from handsynth.twostage.handgen.model import widen_conv_in

    if stage == "vae":
        return base.vae
    if stage == "decoder":  # the encoder, and so the latents the UNets learn, stay as they are
        vae = _load_trained("vae", work)
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)
        return vae
    if stage == "unet":
        return base.unet
    unet = UNet2DConditionModel.from_pretrained(work / "unet" / "model")
    if stage == "inpaint":
        extra = INPAINT_CHANNELS - unet.config.in_channels
        return widen_conv_in(unet, extra, generator=torch.Generator().manual_seed(seed))
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITION_CHANNELS)


def _load_trained(stage: str, work: Path) -> Any:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    kind = {"vae": AutoencoderKL, "decoder": AutoencoderKL, "controlnet": ControlNetModel}.get(
        stage, UNet2DConditionModel
    )
    return kind.from_pretrained(work / stage / "model").requires_grad_(False).eval()


@torch.no_grad()
def _set_scaling_factor(vae: Any, figures: Figures) -> float:
    """1 / std of the training figures' latents (SD's 0.18215 was found the same way)."""
    pixels = torch.from_numpy(figures.small).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = torch.cat([vae.encode(part).latent_dist.mean for part in pixels.split(32)])
    factor = float(1 / latents.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def _run_stage(stage: str, recipe: Recipe, figures: Figures, base: BaseModels, work: Path) -> None:
    folder = work / stage
    if (folder / "model").is_dir():
        log.info("pretrain %s: done before, skipped", stage)
        return
    for earlier in NEEDS[stage]:
        if not (work / earlier / "model").is_dir():
            raise HandsynthError(f"pretrain {stage} needs the {earlier} stage's model; run that stage first")
    if stage != "vae":
        base.vae = _load_trained("vae", work)
    if stage == "controlnet":
        base.unet = _load_trained("unet", work)
    trainer = TRAINERS[stage](recipe, figures, base, folder, _stage_model(stage, work, base, recipe.seed))
    started = time.time()
    try:
        trainer.train(trainer.loop)
    finally:
        files.append_jsonl(
            folder / "sessions.jsonl", {"seconds": round(time.time() - started, 1), "step": trainer.step}
        )
    if trainer.step < trainer.total_steps:
        return
    model = trainer.model.eval()
    if stage == "vae":
        log.info("pretrain vae: latent scaling factor %.4f", _set_scaling_factor(model, figures))
    files.save_pretrained_atomically(folder / "model", model)


def pretrain(out: str | Path, recipe: Recipe, stages: tuple[str, ...] = STAGES) -> Path:
    """Train `stages` under `<out>/work`; when all five are done, write the diffusers folders, the
    recipe and the manifest into `out`. Returns `out`."""
    recipe.check()
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise HandsynthError(
            f"unknown pretrain stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}"
        )
    out = Path(out)
    work = out / "work"
    saved = work / "recipe.json"
    if saved.is_file() and read_recipe(saved) != recipe:
        raise HandsynthError(
            f"{work} was trained with a different recipe ({saved}); use the same flags, or another --out"
        )
    files.write_json(saved, {"recipe": dataclasses.asdict(recipe)})
    torch.manual_seed(recipe.seed)
    figures = cached_figures(work, recipe.data_seed, recipe.per_gesture)
    base, sampler = _base(work / "tokenizer", recipe)
    for stage in STAGES:
        if stage in stages:
            _run_stage(stage, recipe, figures, base, work)
    if all((work / s / "model").is_dir() for s in STAGES):
        export(out, recipe, base, sampler)
    return out


def export(out: Path, recipe: Recipe, base: BaseModels, sampler: Any) -> None:
    """The diffusers folders, recipe.json and manifest.json in `out`, from the stages' models."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    work = out / "work"
    vae, unet = _load_trained("decoder", work), _load_trained("unet", work)
    parts = {"text_encoder": base.text_encoder, "tokenizer": base.tokenizer, "scheduler": sampler}
    none = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    files.save_pretrained_atomically(out / "sd", StableDiffusionPipeline(vae=vae, unet=unet, **parts, **none))
    inpaint = StableDiffusionInpaintPipeline(vae=vae, unet=_load_trained("inpaint", work), **parts, **none)
    files.save_pretrained_atomically(out / "sd-inpainting", inpaint)
    files.save_pretrained_atomically(out / "controlnet", _load_trained("controlnet", work))
    seconds = {
        stage: round(sum(r["seconds"] for r in files.read_jsonl(work / stage / "sessions.jsonl")), 1)
        for stage in STAGES
    }
    files.write_json(
        out / "recipe.json",
        {
            "command": recipe.command(),
            "recipe": dataclasses.asdict(recipe),
            "data": {
                "train_seed": recipe.data_seed,
                "held_out_seed": HELD_OUT_DATA_SEED,
                "figures": recipe.per_gesture * 6,
                "size": [128, 64],
            },  # fmt: skip
            "text_encoder": "the tiny SD's seeded random CLIP text tower, frozen",
            "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
            "torch_threads": torch.get_num_threads(),
        },
    )
    write_manifest(out)
    log.info("pretrained tiny models -> %s", out)
