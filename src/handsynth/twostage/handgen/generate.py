"""`handsynth handgen generate`: hand images and their masks from keypoint files, resumably.

Input (`--keypoints FILE`):
- a `.jsonl`, one hand set per row: "hands" (42 x [x, y, v], left hand then right), "caption" or
  "prompt", and optionally "key" and "mask" (a PNG beside the file, fed to the model with
  `--with-masks`). A `hands.jsonl` of `handsynth pose build` works as it is: a row whose "image" exists
  has its keypoints in that crop's pixels, and they are scaled to the output width and height;
- a `.npy` of (42, 3) or (N, 42, 3) keypoints in the output image's pixels, with `--prompt`.

Output in `--out DIR`:
- `images/<index>.png`, `masks/<index>.png` (the soft mask in 8 bits) and `masks_binary/<index>.png`
  (mask > 0.5, as 0/255);
- `records.jsonl`, one record per hand set: index, key, prompt, seed (run.seed + index, its own
  generator, so any image can be remade alone), steps, guidance, width, height, model, the keypoints in output
  pixels, the mask given (if any) and the three files;
- `grid.png` (heatmap | hand | mask for the first 16) and the resolved `config.toml`.

A re-run skips every hand set that has a record and its files; a different setting for the same index
is refused. Under `accelerate launch` each process makes its share of the hand sets
(`handsynth.sharing`); the folder ends the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from handsynth import files
from handsynth.config import Config, check_at_least_one, check_image_side
from handsynth.errors import HandsynthError
from handsynth.sharing import SharedOutput
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
SETTINGS_KEYS = ("prompt", "seed", "steps", "guidance", "width", "height", "model", "hands", "mask_input")
HANDS_FIELD = (
    "\"hands\": 42 [x, y, v] keypoints, the left hand's 21 then the right's (v 0 where a hand is absent), "
    "as in the hands.jsonl of `handsynth pose build`"
)


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            mask = files.to_gray(image).resize(size, Image.Resampling.BILINEAR)
    except OSError as exc:
        raise HandsynthError(f"cannot read mask {path}: {exc}") from None
    return np.asarray(mask, dtype=np.float32) / 255.0


def read_keypoint_jobs(
    path: str | Path, size: int | tuple[int, int], prompt: str | None = None, with_masks: bool = False
) -> list[dict[str, Any]]:
    """One job per hand set in `path` (.jsonl or .npy): index, key, prompt, hands (in the pixels of the
    image to make: a square side, or (width, height)), mask_input (path or None) and mask (array or None)."""
    path = Path(path)
    width, height = (size, size) if isinstance(size, int) else size
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
        if "hands" not in row:
            poses = (
                '; it holds whole-body "keypoints" (a poses.jsonl): '
                "give it to `handsynth twostage generate --pose`"
                if "keypoints" in row
                else ""
            )
            raise HandsynthError(f"{name} has no {HANDS_FIELD}{poses}")
        try:
            hands = keypoint_batch(row["hands"])[0].copy()
        except HandsynthError as exc:
            raise HandsynthError(f"{name}: {exc}") from None
        crop = path.parent / row["image"] if row.get("image") else None
        if crop is not None and crop.is_file():
            with Image.open(crop) as image:
                hands[:, :2] *= (width / image.width, height / image.height)
        text = prompt or row.get("caption") or row.get("prompt")
        if not text:
            raise HandsynthError(f"{name}: no caption or prompt; give one in the row or with --prompt")
        mask_input, mask = None, None
        if with_masks:
            if not row.get("mask"):
                raise HandsynthError(f"{name}: --with-masks, but the row names no mask")
            mask_input = row["mask"]
            mask = _read_mask(path.parent / mask_input, (width, height))
        jobs.append(
            {"index": i, "key": key, "prompt": text, "hands": hands, "mask_input": mask_input, "mask": mask}
        )
    if not jobs:
        raise HandsynthError(f"{path} holds no rows")
    return jobs


def plan_records(
    config: Config, model: str, jobs: list[dict[str, Any]], size: tuple[int, int]
) -> list[dict[str, Any]]:
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
            "width": size[0],
            "height": size[1],
            "model": model,
            "hands": np.round(job["hands"], 4).tolist(),
            "mask_input": job["mask_input"],
        }
        if job["key"] is not None:
            record["key"] = job["key"]
        plan.append(record)
    return plan


@files.locked_output("out_dir")
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
    check_at_least_one(config, "handgen.steps", "handgen.sample_batch_size")
    check_image_side("handgen.size", handgen.size, zero="the model's training resolution")
    for key in ("width", "height"):
        check_image_side(f"handgen.{key}", getattr(handgen, key), zero="handgen.size")
    out_dir = Path(out_dir)
    side = handgen.size or int(read_settings(model_folder)["resolution"])
    width, height = handgen.width or side, handgen.height or side
    jobs = read_keypoint_jobs(keypoints, (width, height), prompt, with_masks)
    plan = plan_records(config, str(Path(model_folder).resolve()), jobs, (width, height))
    fields = ("file", "mask", "mask_binary")
    share = SharedOutput(out_dir, plan, SETTINGS_KEYS, fields, what="hand", device=config.run.device)
    done = share.finished()
    todo = share.mine([(j, r) for j, r in zip(jobs, plan, strict=True) if r["index"] not in done])
    if todo:
        pipe = HandGeneratorPipeline.from_pretrained(model_folder, device=share.device)
        pipe.check_size(height, width)
    bar = share.progress("handgen generate", "hand", progress)
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
            height=height,
            width=width,
        )
        for (_, record), image, soft, binary in zip(
            batch, out.images, out.masks, out.masks_binary, strict=True
        ):
            files.save_image(out_dir / record["file"], image)
            files.save_image(out_dir / record["mask"], mask_picture(soft).convert("L"))
            files.save_image(out_dir / record["mask_binary"], Image.fromarray(binary.astype(np.uint8) * 255))
            share.append(record)
        bar.update(len(batch))
    bar.close()
    done = share.gather()
    records = [done[r["index"]] for r in plan]
    if not share.is_main:
        return records
    # Rewritten in index order, so a resumed run ends with the same file as an uninterrupted one.
    files.write_jsonl(out_dir / "records.jsonl", records)
    files.save_image(out_dir / "grid.png", records_grid(out_dir, records[:GRID_ROWS]))
    return records


def records_grid(out_dir: Path, records: list[dict[str, Any]]) -> Image.Image:
    """heatmap | hand | mask, one row per record."""
    from diffusers.utils import make_image_grid

    cells = []
    for record in records:
        hands = np.asarray(record["hands"], np.float32)
        cells.append(heatmap_picture(hand_heatmaps(hands, record["height"], record["width"])))
        for field in ("file", "mask"):
            cells.append(files.load_image(out_dir / record[field]))
    return make_image_grid(cells, rows=len(records), cols=3)
