"""`handsynth handgen generate`: hand images and their masks from keypoint files, resumably.

Input (`--keypoints FILE`):
- a `.jsonl`, one hand set per row: "hands" (42 x [x, y, v], left hand then right), "caption" or
  "prompt", and optionally "key" and "mask" (a PNG beside the file, fed to the model with
  `--with-masks`). A `hands.jsonl` of `handsynth pose build` works as it is: a row whose "image" exists
  has its keypoints in that crop's pixels, and they are scaled to the output size;
- a `.npy` of (42, 3) or (N, 42, 3) keypoints in the output image's pixels, with `--prompt`.

Output in `--out DIR`:
- `images/<index>.png`, `masks/<index>.png` (the soft mask in 8 bits) and `masks_binary/<index>.png`
  (mask > 0.5, as 0/255);
- `records.jsonl`, one record per hand set: index, key, prompt, seed (run.seed + index, its own
  generator, so any image can be remade alone), steps, guidance, size, model, the keypoints in output
  pixels, the mask given (if any) and the three files;
- `grid.png` (heatmap | hand | mask for the first 16) and the resolved `config.toml`.

A re-run skips every hand set that has a record and its files; a different setting for the same index
is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar
from handsynth.twostage.handgen.pipeline import (
    HandGeneratorPipeline,
    hand_heatmaps,
    heatmap_picture,
    keypoint_batch,
    mask_picture,
    read_settings,
)

log = logging.getLogger(__name__)

GRID_ROWS = 16
# Record fields that must match for a hand on disk to count as done on a restart.
SETTINGS_KEYS = ("prompt", "seed", "steps", "guidance", "size", "model", "hands", "mask_input")


def _read_mask(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            mask = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    except OSError as exc:
        raise HandsynthError(f"cannot read mask {path}: {exc}") from None
    return np.asarray(mask, dtype=np.float32) / 255.0


def read_keypoint_jobs(
    path: str | Path, size: int, prompt: str | None = None, with_masks: bool = False
) -> list[dict[str, Any]]:
    """One job per hand set in `path` (.jsonl or .npy): index, key, prompt, hands (in `size`-px
    image pixels), mask_input (path or None) and mask (array or None)."""
    path = Path(path)
    if not path.is_file():
        raise HandsynthError(f"keypoint file not found: {path}")
    if path.suffix == ".npy":
        if not prompt:
            raise HandsynthError(f"{path} holds keypoints only: give the text with --prompt")
        if with_masks:
            raise HandsynthError("--with-masks needs a .jsonl keypoint file whose rows name a mask")
        hands = keypoint_batch(np.load(path))
        return [
            {"index": i, "key": None, "prompt": prompt, "hands": h, "mask_input": None, "mask": None}
            for i, h in enumerate(hands)
        ]
    if path.suffix != ".jsonl":
        raise HandsynthError(f"{path}: keypoints come as a .jsonl (one hand set per row) or a .npy")
    jobs = []
    for i, row in enumerate(files.read_jsonl(path)):
        key = row.get("key")
        name = f"{path} row {i + 1}" + (f" ({key})" if key else "")
        try:
            hands = keypoint_batch(row["hands"])[0].copy()
        except (KeyError, HandsynthError) as exc:
            raise HandsynthError(f"{name}: {'no hands' if isinstance(exc, KeyError) else exc}") from None
        crop = path.parent / row["image"] if row.get("image") else None
        if crop is not None and crop.is_file():
            with Image.open(crop) as image:
                hands[:, :2] *= size / image.width
        text = prompt or row.get("caption") or row.get("prompt")
        if not text:
            raise HandsynthError(f"{name}: no caption or prompt; give one in the row or with --prompt")
        mask_input, mask = None, None
        if with_masks:
            if not row.get("mask"):
                raise HandsynthError(f"{name}: --with-masks, but the row names no mask")
            mask_input = row["mask"]
            mask = _read_mask(path.parent / mask_input, size)
        jobs.append(
            {"index": i, "key": key, "prompt": text, "hands": hands, "mask_input": mask_input, "mask": mask}
        )
    if not jobs:
        raise HandsynthError(f"{path} holds no rows")
    return jobs


def plan_records(config: Config, model: str, jobs: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    handgen = config.handgen
    plan = []
    for job in jobs:
        name = f"{job['index']:06d}.png"
        record = {
            "index": job["index"],
            "file": f"images/{name}",
            "mask": f"masks/{name}",
            "mask_binary": f"masks_binary/{name}",
            "prompt": job["prompt"],
            "seed": config.run.seed + job["index"],
            "steps": handgen.steps,
            "guidance": handgen.guidance,
            "size": size,
            "model": model,
            "hands": np.round(job["hands"], 4).tolist(),
            "mask_input": job["mask_input"],
        }
        if job["key"] is not None:
            record["key"] = job["key"]
        plan.append(record)
    return plan


def generate_hands(
    config: Config,
    model_folder: str | Path,
    keypoints: str | Path,
    out_dir: str | Path,
    prompt: str | None = None,
    with_masks: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate a hand and its mask for every hand set in `keypoints` into `out_dir`; return the records."""
    handgen = config.handgen
    if handgen.steps < 1 or handgen.sample_batch_size < 1 or handgen.size < 0:
        raise HandsynthError("handgen.steps and handgen.sample_batch_size must be >= 1, handgen.size >= 0")
    out_dir = Path(out_dir)
    size = handgen.size or int(read_settings(model_folder)["resolution"])
    jobs = read_keypoint_jobs(keypoints, size, prompt, with_masks)
    plan = plan_records(config, str(Path(model_folder).resolve()), jobs, size)
    done = files.finished_records(out_dir, plan, SETTINGS_KEYS, ("file", "mask", "mask_binary"), what="hand")
    todo = [(job, record) for job, record in zip(jobs, plan, strict=True) if record["index"] not in done]
    if todo:
        pipe = HandGeneratorPipeline.from_pretrained(model_folder, device=config.run.device)
        pipe.check_size(size, size)
    bar = progress_bar(
        total=len(plan), initial=len(done), desc="handgen generate", disable=not progress, unit="hand"
    )
    for start in range(0, len(todo), handgen.sample_batch_size):
        batch = todo[start : start + handgen.sample_batch_size]
        masks = [job["mask"] for job, _ in batch]
        out = pipe(
            [record["prompt"] for _, record in batch],
            keypoints=[job["hands"] for job, _ in batch],
            mask=None if masks[0] is None else masks,
            num_inference_steps=handgen.steps,
            guidance_scale=handgen.guidance,
            generator=[torch.Generator().manual_seed(record["seed"]) for _, record in batch],
            height=size,
            width=size,
        )
        for (_, record), image, soft, binary in zip(
            batch, out.images, out.masks, out.masks_binary, strict=True
        ):
            files.save_image(out_dir / record["file"], image)
            files.save_image(out_dir / record["mask"], mask_picture(soft).convert("L"))
            files.save_image(out_dir / record["mask_binary"], Image.fromarray(binary.astype(np.uint8) * 255))
            files.append_jsonl(out_dir / "records.jsonl", record)
            done[record["index"]] = record
        bar.update(len(batch))
    bar.close()
    records = [done[r["index"]] for r in plan]
    # Rewritten in index order, so a resumed run ends with the same file as an uninterrupted one.
    files.write_jsonl(out_dir / "records.jsonl", records)
    files.save_image(out_dir / "grid.png", records_grid(out_dir, records[:GRID_ROWS]))
    return records


def records_grid(out_dir: Path, records: list[dict[str, Any]]) -> Image.Image:
    """heatmap | hand | mask, one row per record."""
    from diffusers.utils import make_image_grid

    cells = []
    for record in records:
        size = record["size"]
        cells.append(heatmap_picture(hand_heatmaps(np.asarray(record["hands"], np.float32), size, size)))
        for field in ("file", "mask"):
            with Image.open(out_dir / record[field]) as image:
                cells.append(image.convert("RGB"))
    return make_image_grid(cells, rows=len(records), cols=3)
