"""The machinery every trainer shares, so that a new trainer adds its loss and its data and nothing else.

`Trainer` gives a subclass:

- accelerate set up from `[train]`: mixed precision, DDP under `accelerate launch`, TensorBoard when it
  is installed;
- the optimiser `train.optimizer` names (`make_optimizer`): torch Adam, or bitsandbytes' 8-bit Adam;
- one CPU `torch.Generator` per process for every draw after set-up (`generator`, `draw_noise`), so the
  numbers do not depend on the device, and the capture of every RNG state in each checkpoint;
- `shuffled_batches`: each process's share of a seeded, shuffled pass over the data, resumable mid-epoch;
- `check_loss`: the NaN/Inf stop, on every process at once, naming the step and the items, before the
  bad step is applied;
- `record`: the step counter, `loss.jsonl`, TensorBoard scalars and the progress bar;
- `after_step`: atomic checkpoints every `train.checkpoint_every` steps with a `latest` pointer (the last
  good one is kept when a weight goes bad), validation grids every `train.validate_every` steps, the stop
  at `train.max_steps`, and the user's `callbacks`;
- `train(loop)`: `--resume` from the latest checkpoint, refused when the run's plan (what decides the
  numbers: the subclass's plan, to which the machinery adds the resolved `train.mixed_precision` and
  `train.optimizer`) differs from the checkpoint's.

A subclass says what to checkpoint by overriding `checkpoint_weights`, `shared_optimizers`, `rank_state`
and `load_rank_state`, and what to show by overriding `validation_grid`. Its loop calls, per step:
`draw_noise` → loss → `check_loss` → backward and optimiser step → `record` → `after_step`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handsynth import files
from handsynth.config import Config, save_config
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar
from handsynth.training.diffusion import draw_timesteps_and_noise

log = logging.getLogger(__name__)

PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPTIMIZERS = ("adam", "adam8bit")
FINITE_CHECK_ELEMENTS = 2**22  # values checked for NaN/inf at a time


class NonFiniteLoss(HandsynthError):
    """The loss (or a weight) became NaN or inf; the run stopped before that step was applied."""


class StopRequested(Exception):
    """`train.max_steps` reached: the checkpoint is written; the trainer saves from the current weights."""


def resolve_auto_settings(config: Config) -> Config:
    """The config with `train.mixed_precision` and `train.optimizer` "auto" made concrete here.

    On a CUDA GPU: bf16 (fp16 where the GPU lacks bf16), and bitsandbytes' 8-bit Adam when it is
    installed. Together they keep parameters, gradients and optimiser state at 0.32 of the
    reference's (benchmarks/train_memory.py). On CPU: fp32 and torch Adam, as the reference.
    """
    train = config.train
    cuda = config.run.device != "cpu" and torch.cuda.is_available()
    precision, optimizer = train.mixed_precision, train.optimizer
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if optimizer == "auto":
        optimizer = "adam8bit" if cuda and importlib.util.find_spec("bitsandbytes") else "adam"
    return dataclasses.replace(
        config, train=dataclasses.replace(train, mixed_precision=precision, optimizer=optimizer)
    )


def check_settings(config: Config) -> None:
    """The `[train]` keys the machinery reads, checked before any model loads."""
    train = config.train
    if train.init_from not in ("scratch", "resume"):
        raise HandsynthError(f"train.init_from must be scratch or resume, got '{train.init_from}'")
    if train.mixed_precision not in ("auto", *PRECISIONS):
        raise HandsynthError(f"train.mixed_precision must be one of auto, {', '.join(PRECISIONS)}")
    if train.optimizer not in ("auto", *OPTIMIZERS):
        raise HandsynthError(f"train.optimizer must be one of auto, {', '.join(OPTIMIZERS)}")


def make_accelerator(config: Config, work: Path) -> Any:
    """accelerate's Accelerator for `[train]` and `run.device`, logging to TensorBoard when installed."""
    from accelerate import Accelerator

    config = resolve_auto_settings(config)
    log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    try:
        return Accelerator(
            mixed_precision=config.train.mixed_precision,
            cpu=config.run.device == "cpu",
            log_with=log_with,
            project_dir=str(work),
        )
    except (ValueError, RuntimeError) as exc:
        raise HandsynthError(
            f"cannot set up training with mixed_precision={config.train.mixed_precision!r} on "
            f'device {config.run.device!r}: {exc}. On CPU use "no" or "bf16".'
        ) from None


def make_optimizer(params: list[torch.nn.Parameter], lr: float, kind: str) -> torch.optim.Optimizer:
    """Adam, as the references; bitsandbytes' blockwise 8-bit Adam for `kind = "adam8bit"`."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise HandsynthError(
            'train.optimizer = "adam8bit" needs bitsandbytes: `pip install "handsynth[gpu]"`, or use "adam"'
        ) from None
    return bnb.optim.Adam8bit(params, lr=lr)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no value is NaN or inf, checked FINITE_CHECK_ELEMENTS at a time: torch.isfinite on the
    whole tensor makes temporaries of 1.75 times its size (24 GB more for a 14 GB flat fusion)."""
    t = tensor.detach()
    if t.dim() == 0 or t.numel() <= FINITE_CHECK_ELEMENTS:
        return bool(torch.isfinite(t).all())
    rows = max(1, FINITE_CHECK_ELEMENTS * t.shape[0] // t.numel())
    return all(bool(torch.isfinite(part).all()) for part in t.split(rows))


def keys_digest(keys: Iterable[str]) -> str:
    """What identifies a training set in a run's plan: its item keys, in order."""
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()


class Trainer:
    """One training run's accelerator, generator, step counter, checkpoints, logs and progress bar."""

    stale_outputs: tuple[str, ...] = ("checkpoints", "validation", "loss.jsonl")  # cleared by a scratch run

    def __init__(
        self,
        config: Config,
        accelerator: Any,
        work: Path,
        plan: dict[str, Any],
        total_steps: int,
        name: str,
    ) -> None:
        self.config = resolve_auto_settings(config)
        self.acc = accelerator
        self.work = Path(work)
        self.plan = plan
        self.total_steps = total_steps
        self.name = name
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.loss_log = self.work / "loss.jsonl"
        self.callbacks: list[Callable[[Trainer], None]] = []  # called after each step, checkpoint included
        self.generator = torch.Generator().manual_seed(
            self.config.run.seed + 7919 * accelerator.process_index
        )
        if accelerator.is_main_process:
            if self.config.train.init_from == "scratch":
                for stale in map(self.work.joinpath, self.stale_outputs):
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
            save_config(self.config, self.work / "config.toml")
        accelerator.wait_for_everyone()
        if accelerator.log_with and not accelerator.trackers:  # trackers stay empty until this call
            accelerator.init_trackers(name)
        self.started = time.time()
        self.bar = progress_bar(
            total=total_steps, desc=name, disable=not accelerator.is_main_process, unit="step"
        )

    @property
    def plan(self) -> dict[str, Any]:
        """What decides the numbers, saved in each checkpoint and compared on `--resume`: the plan the
        subclass gave, plus the seed (the shuffles and the noise draw from it), the process count, and
        the precision and optimiser that "auto" resolved to on this machine."""
        train = self.config.train
        return {
            **self._plan,
            "seed": self.config.run.seed,
            "processes": self.acc.num_processes,
            "mixed_precision": train.mixed_precision,
            "optimizer": train.optimizer,
        }

    @plan.setter
    def plan(self, plan: dict[str, Any]) -> None:
        self._plan = dict(plan)

    # --- set-up helpers

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of frozen models: the mixed precision on a GPU, fp32 on the CPU."""
        return PRECISIONS[self.config.train.mixed_precision] if self.device.type == "cuda" else torch.float32

    def frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` frozen, in eval mode, in `weight_dtype` on this process's device."""
        return module.requires_grad_(False).to(self.device, self.weight_dtype).eval()

    def make_optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return make_optimizer(params, lr, self.config.train.optimizer)

    # --- what a subclass checkpoints and shows

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The trained weights, by group: saved in each checkpoint and checked for NaN/inf first."""
        return {}

    def shared_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers whose state is the same on every process (their parameters are synchronised)."""
        return {}

    def rank_state(self) -> dict[str, Any]:
        """What each process holds of its own (per-process optimisers, cached tensors)."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def validation_grid(self) -> Any:
        """A PIL image of samples at this step, or None (no validation)."""
        return None

    # --- per step

    def draw_noise(
        self, latents: torch.Tensor, num_train_timesteps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_timesteps_and_noise(self.generator, latents, num_train_timesteps)

    def shuffled_batches(
        self, n_items: int, batch_size: int, epochs: int, first_step: int = 0
    ) -> Iterator[torch.Tensor]:
        """This process's item indices for each step of `epochs` seeded, shuffled passes over the data.

        Every process sees the same order (from the seed and the epoch alone) and takes its own slice;
        an epoch is padded by wrapping round so all processes take the same number of steps. Steps
        already done (the trainer's counter is past `first_step` + their number) are skipped.
        """
        world, rank = self.acc.num_processes, self.acc.process_index
        per_epoch = self.batches_per_epoch(n_items, batch_size)
        for epoch in range(epochs):
            order = torch.randperm(
                n_items, generator=torch.Generator().manual_seed(self.config.run.seed + epoch)
            )
            order = order.repeat(math.ceil(per_epoch * batch_size * world / n_items))
            for b in range(per_epoch):
                if self.step >= first_step + epoch * per_epoch + b + 1:
                    continue
                yield order[(b * world + rank) * batch_size : (b * world + rank + 1) * batch_size]

    def batches_per_epoch(self, n_items: int, batch_size: int) -> int:
        return math.ceil(n_items / (batch_size * self.acc.num_processes))

    def check_loss(self, losses: torch.Tensor, what: str, keys: list[str], lr_key: str) -> float:
        """The loss averaged over processes; a NaN/inf on any process stops every process here.

        `losses` are per item, `keys` name the items, `lr_key` is the config key to lower.
        """
        means = self.acc.gather(losses.detach().float().mean().reshape(1))
        if bool(torch.isfinite(means).all()):
            return means.mean().item()
        bad = [key for key, ok in zip(keys, torch.isfinite(losses.detach()).tolist(), strict=False) if not ok]
        where = f"image {', '.join(bad)}" if bad else "an image on another process"
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint yet"
        )
        raise NonFiniteLoss(
            f"{what} loss is {means.tolist()} at step {self.step + 1} of {self.total_steps} ({where}); "
            f"the run stopped before applying that step and {kept}. Try a lower learning rate ({lr_key}), "
            'or train.mixed_precision = "no"; then run again (with --resume to continue from the checkpoint).'
        )

    def optimise(
        self,
        losses: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        stage: str,
        what: str,
        keys: list[str],
        lr_key: str,
        total: torch.Tensor | None = None,
        **terms: float,
    ) -> float:
        """One optimiser step on per-item `losses`: the NaN/inf check (`what`, `lr_key`: see
        `check_loss`), backward of their mean (or of `total`), the step, and the step's log row."""
        value = self.check_loss(losses, what, keys, lr_key)
        self.acc.backward(losses.mean() if total is None else total)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return self.record(stage, value, keys, **terms)

    def record(self, stage: str, loss: float, keys: list[str], **terms: float) -> float:
        """Count the step and log it: loss.jsonl, TensorBoard, the progress bar. `terms`: the parts of
        a loss made of several, logged beside it."""
        self.step += 1
        if self.acc.is_main_process:
            row = {
                "step": self.step,
                "stage": stage,
                "loss": loss,
                **terms,
                "keys": keys,
                "time": self.elapsed,
            }
            files.append_jsonl(self.loss_log, row)
        if self.acc.trackers:
            self.acc.log(
                {f"loss/{stage}": loss, **{f"loss/{k}": v for k, v in terms.items()}}, step=self.step
            )
        self.bar.set_postfix(stage=stage, loss=f"{loss:.4f}")
        self.bar.update(1)
        return loss

    @property
    def elapsed(self) -> float:
        return round(time.time() - self.started, 3)

    def after_step(self) -> None:
        """Checkpoint and validate when due, call the callbacks; stop at `train.max_steps`."""
        train = self.config.train
        stop = 0 < train.max_steps <= self.step and self.step < self.total_steps
        if stop or (
            train.checkpoint_every > 0
            and self.step % train.checkpoint_every == 0
            and self.step < self.total_steps
        ):
            self.save_checkpoint()
        if train.validate_every > 0 and self.step % train.validate_every == 0:
            self.validate()
        for callback in self.callbacks:
            callback(self)
        if stop:
            raise StopRequested

    # --- the run

    def train(self, loop: Callable[[], None]) -> None:
        """Resume if `train.init_from = "resume"`, then run `loop` until it ends or `max_steps` stops it."""
        if self.config.train.init_from == "resume":
            self.load_checkpoint()
        try:
            loop()
        except StopRequested:
            log.info("stopped at train.max_steps = %d; resume with --resume", self.config.train.max_steps)
        finally:
            self.bar.close()

    # --- checkpoints

    def save_checkpoint(self) -> Path:
        """`<work>/checkpoints/step-N/` (shared.pt + rank-R.pt), then the `latest` pointer, each atomic."""
        weights = self.checkpoint_weights()
        for group, named in weights.items():
            for name, tensor in named.items():
                if not all_finite(tensor):
                    raise NonFiniteLoss(
                        f"weight {group}.{name} is NaN/inf at step {self.step}; no checkpoint written, "
                        f"the last good one is {self.last_checkpoint}. Try a lower learning rate or "
                        'train.mixed_precision = "no".'
                    )
        root = self.work / "checkpoints"
        folder = root / f"step-{self.step:08d}"
        rank_state = {**self.rank_state(), **self._rng_state()}
        with files.atomic_path(folder / f"rank-{self.acc.process_index}.pt") as tmp:
            torch.save(rank_state, tmp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shared = {
                "step": self.step,
                "plan": self.plan,
                # As they are: torch.save copies a device tensor to the host one storage at a time and
                # writes a host one from its own memory, so no copy of the whole set is made (a flat
                # fusion alone is 14 GB).
                "weights": {
                    group: {name: t.detach() for name, t in named.items()} for group, named in weights.items()
                },
                "optimizers": {name: opt.state_dict() for name, opt in self.shared_optimizers().items()},
                "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            }
            with files.atomic_path(folder / "shared.pt") as tmp:
                torch.save(shared, tmp)
            files.write_text(root / "latest", folder.name + "\n")  # the commit point
            for old in sorted(root.glob("step-*")):
                if old.name != folder.name:
                    shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.last_checkpoint = folder
        return folder

    def _rng_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "generator": self.generator.get_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_checkpoint(self) -> None:
        root = self.work / "checkpoints"
        pointer = root / "latest"
        if not pointer.is_file():
            raise HandsynthError(
                f'--resume: no checkpoint in {root}; start the run with train.init_from = "scratch"'
            )
        folder = root / pointer.read_text(encoding="utf-8").strip()
        shared = torch.load(folder / "shared.pt", map_location="cpu", weights_only=False)
        changed = {k: (v, self.plan.get(k)) for k, v in shared["plan"].items() if self.plan.get(k) != v}
        changed.update({k: (None, v) for k, v in self.plan.items() if k not in shared["plan"]})
        if changed:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise HandsynthError(
                f"--resume: the checkpoint {folder} was written by a different run setup ({listed}); "
                'use the same settings, or start again with train.init_from = "scratch"'
            )
        rank = torch.load(
            folder / f"rank-{self.acc.process_index}.pt", map_location="cpu", weights_only=False
        )
        with torch.no_grad():
            for group, named in self.checkpoint_weights().items():
                for name, tensor in named.items():
                    tensor.copy_(shared["weights"][group][name])
        for name, optimizer in self.shared_optimizers().items():
            optimizer.load_state_dict(shared["optimizers"][name])
        if shared["scaler"] is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(shared["scaler"])
        self.load_rank_state(rank)
        self.generator.set_state(rank["generator"])
        random.setstate(rank["python"])
        np.random.set_state(rank["numpy"])
        torch.set_rng_state(rank["torch"])
        if rank["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rank["cuda"])
        self.step = shared["step"]
        self.last_checkpoint = folder
        self.bar.reset(total=self.total_steps)
        self.bar.update(self.step)
        if self.acc.is_main_process and self.loss_log.is_file():
            # Drop log lines of steps after the checkpoint: they are about to be redone.
            kept = [r for r in files.read_jsonl(self.loss_log, torn_end_ok=True) if r["step"] <= self.step]
            files.write_jsonl(self.loss_log, kept)
        self.acc.wait_for_everyone()
        log.info("resumed from %s (step %d of %d)", folder, self.step, self.total_steps)

    # --- validation

    @torch.no_grad()
    def validate(self) -> None:
        """`<work>/validation/step-N.png` from `validation_grid`, also sent to TensorBoard."""
        if self.acc.is_main_process:
            grid = self.validation_grid()
            if grid is not None:
                files.save_image(self.work / "validation" / f"step-{self.step:08d}.png", grid)
                if self.acc.trackers:
                    self.acc.get_tracker("tensorboard").log_images(
                        {"validation": np.asarray(grid)[None]}, self.step, dataformats="NHWC"
                    )
        self.acc.wait_for_everyone()
