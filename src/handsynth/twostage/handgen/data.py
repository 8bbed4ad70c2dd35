"""The hand generator's training data: rows of `hands.jsonl` (`handsynth pose build`), loaded as
tensors, augmented, and turned into the condition c_p with the mask channel dropped at random.

Every random draw takes the trainer's CPU generator, in a fixed number per item, so a resumed run
draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handsynth import files
from handsynth.errors import HandsynthError
from handsynth.twostage.data.dataset import SETTINGS_FILE
from handsynth.twostage.data.heatmaps import dequantize
from handsynth.twostage.handgen.model import HEATMAP_CHANNELS, condition_tensor

log = logging.getLogger(__name__)

# Augmentation (seed 004 §IV-A: "RGB value shifting and random brightness and contrast changes"; the
# paper gives no ranges): albumentations' defaults, RGBShift ±20/255 per channel and
# RandomBrightnessContrast ±0.2 each, each applied with probability 0.5; contrast about the image's
# mean grey, as torchvision's adjust_contrast.
AUGMENT_P = 0.5
RGB_SHIFT = 20 / 255
BRIGHTNESS = 0.2
CONTRAST = 0.2
MISSING_SHOWN = 5
PREFETCH_BATCHES = 2  # batches each loader worker keeps ready ahead of the training step


@dataclass(frozen=True)
class HandItem:
    key: str
    image: Path
    mask: Path
    heatmaps: Path
    hands: np.ndarray  # (42, 3), x, y in the crop's pixels, then v
    caption: str


@dataclass
class HandBatch:
    keys: list[str]
    captions: list[str]
    pixels: torch.Tensor  # (B, 3, R, R) in [0, 1]
    masks: torch.Tensor  # (B, 1, R, R) in [0, 1], the mask loss's target M
    conditions: torch.Tensor  # (B, 11, R / s, R / s): c_p at the latent size


def read_hand_items(manifest: str | Path, split: str = "train") -> list[HandItem]:
    """The `split` rows of a `hands.jsonl`; a row with a missing field or file is a HandsynthError."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise HandsynthError(
            f"no hand-crop manifest at {manifest}; build the two-stage dataset with `handsynth pose build`"
        )
    root = manifest.parent
    rows = [row for row in files.read_jsonl(manifest) if row.get("split", "train") == split]
    if not rows:
        raise HandsynthError(f"{manifest} has no rows of split '{split}'")
    items, problems = [], []
    for n, row in enumerate(rows):
        key = str(row.get("key", f"row {n + 1}"))
        absent = [f for f in ("image", "mask", "heatmaps", "hands") if not row.get(f)]
        if absent:
            problems.append(f"{key}: no {', '.join(absent)}")
            continue
        paths = {f: root / row[f] for f in ("image", "mask", "heatmaps")}
        missing = [f"{f} {p}" for f, p in paths.items() if not p.is_file()]
        if missing:
            problems.append(f"{key}: {', '.join(missing)} not found")
            continue
        hands = np.asarray(row["hands"], dtype=np.float32)
        if hands.shape != (42, 3):
            problems.append(f"{key}: hands must be 42 x [x, y, v], got shape {hands.shape}")
            continue
        items.append(
            HandItem(key, paths["image"], paths["mask"], paths["heatmaps"], hands, row.get("caption") or "")
        )
    if problems:
        shown = "; ".join(problems[:MISSING_SHOWN]) + (" ..." if len(problems) > MISSING_SHOWN else "")
        raise HandsynthError(
            f"{manifest}: {len(problems)} of {len(rows)} '{split}' rows cannot be used ({shown}). "
            "Rebuild the dataset with `handsynth pose build`, or remove those rows."
        )
    return items


def built_crop_margin(manifest: str | Path, configured: float) -> float:
    """The margin the crops of `manifest` were cut with: the `settings.json` that `pose build` writes
    beside it, else `configured` (pose.crop_margin) for a hands.jsonl made another way."""
    path = Path(manifest).parent / SETTINGS_FILE
    if not path.is_file():
        log.info("%s has no %s beside it: its crops are taken as cut with pose.crop_margin = %s",
                 manifest, SETTINGS_FILE, configured)  # fmt: skip
        return configured
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["crop_margin"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HandsynthError(
            f"{path} holds no readable crop_margin ({exc}); rebuild the dataset with `handsynth pose build`"
        ) from None


def _gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(files.to_gray(image), dtype=np.float32) / 255.0
    except OSError as exc:
        raise HandsynthError(
            f"cannot read mask {path}: {exc}; rebuild it with `handsynth pose build`"
        ) from None


def load_item(item: HandItem, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels (3, R, R) in [0, 1], mask (1, S, S), heatmaps (10, S, S)) at the crop's size S, pixels
    resized to the training resolution R; sizes that disagree are a HandsynthError naming the row."""
    rgb = files.load_rgb(item.image)
    size = rgb.shape[:2]
    if size[0] != size[1]:
        raise HandsynthError(f"hand crop {item.key}: {item.image} is {size[1]}x{size[0]}, crops are square")
    mask = _gray(item.mask)
    if mask.shape != size:
        raise HandsynthError(
            f"hand crop {item.key}: mask {item.mask} is {mask.shape[1]}x{mask.shape[0]}, its image "
            f"{size[1]}x{size[0]}; rebuild it with `handsynth pose build`"
        )
    try:
        with np.load(item.heatmaps) as archive:
            heatmaps = dequantize(archive["heatmaps"])
    except (OSError, KeyError, ValueError) as exc:
        raise HandsynthError(f"hand crop {item.key}: cannot read heatmaps {item.heatmaps}: {exc}") from None
    if heatmaps.shape != (HEATMAP_CHANNELS, *size):
        raise HandsynthError(
            f"hand crop {item.key}: heatmaps {item.heatmaps} have shape {heatmaps.shape}, expected "
            f"({HEATMAP_CHANNELS}, {size[0]}, {size[1]}); rebuild them with `handsynth pose build`"
        )
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0
    if size[0] != resolution:
        pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bilinear", antialias=True)
    return pixels[0].clamp(0, 1), torch.from_numpy(mask)[None], torch.from_numpy(heatmaps)


def load_batch(items: list[HandItem], resolution: int, latent_size: int) -> HandBatch:
    """The items as tensors: pixels and mask targets at R, c_p (with its mask channel) at the latent."""
    pixels, masks, conditions = [], [], []
    for item in items:
        rgb, mask, heatmaps = load_item(item, resolution)
        pixels.append(rgb)
        target = F.interpolate(mask[None], size=(resolution, resolution), mode="bilinear", antialias=True)
        masks.append(target[0].clamp(0, 1))
        conditions.append(condition_tensor(heatmaps[None], mask[None], (latent_size, latent_size))[0])
    return HandBatch(
        keys=[item.key for item in items],
        captions=[item.caption for item in items],
        pixels=torch.stack(pixels),
        masks=torch.stack(masks),
        conditions=torch.stack(conditions),
    )


class PlannedBatches(torch.utils.data.Dataset):
    """Batch i of a fixed plan (the item indices of each step), made by `load_batch`."""

    def __init__(
        self, items: list[HandItem], plan: list[list[int]], resolution: int, latent_size: int
    ) -> None:
        self.items, self.plan = items, plan
        self.resolution, self.latent_size = resolution, latent_size

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, step: int) -> HandBatch:
        return load_batch([self.items[i] for i in self.plan[step]], self.resolution, self.latent_size)


def _as_loaded(batch: HandBatch) -> HandBatch:
    return batch


def batch_loader(
    items: list[HandItem], plan: list[list[int]], resolution: int, latent_size: int, workers: int
) -> torch.utils.data.DataLoader:
    """The batches of `plan`, in its order, read and resized by `workers` persistent processes that
    each keep PREFETCH_BATCHES ready, so the training step does not wait on the disk and the CPU; 0 loads
    them in this process. Loading draws no random numbers: the batches are the same whatever `workers`."""
    return torch.utils.data.DataLoader(
        PlannedBatches(items, plan, resolution, latent_size),
        batch_size=None,  # each item of the dataset is already a batch
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_loaded,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
    )


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RGB shift, then brightness and contrast, each with probability 0.5 per image; 7 draws per image."""
    n = pixels.shape[0]
    u = torch.rand(n, 7, generator=generator).to(pixels.device)
    view = (n, 1, 1, 1)
    shift = (u[:, 1:4] * 2 - 1) * RGB_SHIFT * (u[:, :1] < AUGMENT_P)
    out = pixels + shift.view(n, 3, 1, 1)
    on = (u[:, 4] < AUGMENT_P).view(view)
    brightness = torch.where(on, (u[:, 5] * 2 - 1).view(view) * BRIGHTNESS, 0.0)
    contrast = torch.where(on, 1 + (u[:, 6] * 2 - 1).view(view) * CONTRAST, 1.0)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


def drop_masks(
    conditions: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """c_p with the mask channel zeroed for each item with probability `p` (one draw per item), and
    which items were dropped."""
    dropped = torch.rand(conditions.shape[0], generator=generator) < p
    keep = (~dropped).to(conditions.device, conditions.dtype).view(-1, 1, 1)
    out = conditions.clone()
    out[:, HEATMAP_CHANNELS] *= keep
    return out, dropped
