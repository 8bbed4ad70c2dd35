"""`handsynth generate`: sample a Hand1000 model for a list of prompts, resumably.

Output for one model, in `<samples>/<gesture>/`:
- `images/<index>.png`, image `index` = prompt number × images_per_prompt + copy number;
- `records.jsonl`, one record per image (file relative to this folder, prompt, seed, mu, steps,
  guidance, model, height, width; `key` when the prompt came from a manifest). Image `index` uses
  seed `run.seed + index` with its own generator, so any image can be reproduced alone;
- `grid.png` (the first 64 images) and the resolved `config.toml`.

A restart skips every image that already has a record and a file. Under `accelerate launch` each
process makes its share of the images (`handsynth.sharing`); the folder ends the same.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from PIL import Image

from handsynth import files
from handsynth.config import Config, check_at_least_one, check_image_side
from handsynth.errors import HandsynthError
from handsynth.hand1000.fusion import read_hand1000_config
from handsynth.sharing import is_main_process, make_images
from handsynth.training.diffusion import record_generators, vae_scale

log = logging.getLogger(__name__)

GRID_MAX_IMAGES = 64
GRID_CELL = 256  # px, the most a grid cell is scaled to
# Record fields that must match for an image on disk to count as done on a restart.
SETTINGS_KEYS = ("prompt", "seed", "mu", "steps", "guidance", "height", "width", "model", "weights")


def read_prompts(source: str | Path, gesture: str | None = None) -> tuple[list[str], list[str | None]]:
    """(prompts, keys) from a text file (one prompt per line), a manifest (.jsonl) or a dataset folder.

    A manifest (or a dataset folder's test.jsonl) gives the "caption" of each record of `gesture`.
    """
    source = Path(source)
    if source.is_dir():
        source = source / "test.jsonl"
    if not source.is_file():
        raise HandsynthError(
            f"prompt source not found: {source}; give --prompt, a text file with one prompt per line, "
            "or a dataset folder / test.jsonl made by `handsynth data build`"
        )
    if source.suffix == ".jsonl":
        records = files.read_jsonl(source)
        if gesture:
            records = [r for r in records if r.get("gesture") == gesture]
        kept = [r for r in records if isinstance(r.get("caption"), str) and r["caption"].strip()]
        if len(kept) < len(records):
            log.warning("%s: skipped %d records without a caption", source, len(records) - len(kept))
        if not kept:
            raise HandsynthError(f"{source} has no captioned records for gesture '{gesture}'")
        return [r["caption"].strip() for r in kept], [r.get("key") for r in kept]
    prompts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise HandsynthError(f"{source} holds no prompts (one per line)")
    return prompts, [None] * len(prompts)


def _check_settings(config: Config) -> None:
    g = config.generate
    if not 0.0 <= g.mu <= 1.0:
        raise HandsynthError(f"generate.mu must be in [0, 1], got {g.mu}")
    check_at_least_one(config, "generate.steps", "generate.images_per_prompt", "generate.batch_size")
    for key in ("height", "width"):
        check_image_side(f"generate.{key}", getattr(g, key), zero="the model's")


def image_size(config: Config, model_folder: str | Path) -> tuple[int, int]:
    """(height, width): generate.height and .width, a 0 taking the resolution the model was trained at
    (its hand1000/config.json), or for a folder without that record the UNet's, as diffusers defaults."""
    g = config.generate
    if g.height and g.width:
        return g.height, g.width
    trained = read_hand1000_config(model_folder).get("resolution")
    if not trained:
        unet = json.loads((Path(model_folder) / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((Path(model_folder) / "vae" / "config.json").read_text(encoding="utf-8"))
        trained = unet["sample_size"] * vae_scale(vae)
    return g.height or int(trained), g.width or int(trained)


def plan_images(
    config: Config,
    model: str,
    prompts: list[str],
    keys: list[str | None] | None = None,
    size: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One record per image to make, in index order (without timings: those are added when made).
    `model` is the model folder, whose `files.folder_stamp` tells a retrained model from the one that
    made earlier images; `size`: (height, width), by default generate.height and .width."""
    g = config.generate
    height, width = size or (g.height, g.width)
    weights = files.folder_stamp(model)
    keys = keys or [None] * len(prompts)
    plan = []
    for p, (prompt, key) in enumerate(zip(prompts, keys, strict=True)):
        for copy in range(g.images_per_prompt):
            index = p * g.images_per_prompt + copy
            record = {
                "index": index,
                "file": f"images/{index:06d}.png",
                "prompt": prompt,
                "seed": config.run.seed + index,
                "mu": g.mu,
                "steps": g.steps,
                "guidance": g.guidance,
                "height": height,
                "width": width,
                "model": model,
                "weights": weights,
            }
            if key is not None:
                record["key"] = key
            plan.append(record)
    return plan


def make_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Images in rows of `columns`, each scaled down to at most GRID_CELL px."""
    scale = min(1.0, GRID_CELL / max(images[0].size))
    w, h = max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image.resize((w, h)), ((i % columns) * w, (i // columns) * h))
    return grid


@files.locked_output("out_dir")
def generate_samples(
    config: Config,
    model_folder: str | Path,
    prompts: list[str],
    out_dir: str | Path,
    keys: list[str | None] | None = None,
    pipe: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Make `generate.images_per_prompt` images per prompt into `out_dir`; return every record.

    `out_dir` receives images/, records.jsonl and grid.png (the CLI uses `<samples>/<gesture>`).
    `pipe`: an already loaded Hand1000Pipeline for `model_folder` (else it is loaded when needed).
    """
    from handsynth.hand1000.pipeline import Hand1000Pipeline

    _check_settings(config)
    if not prompts:
        raise HandsynthError("no prompts to generate from")
    g = config.generate
    out_dir = Path(out_dir)
    size = image_size(config, model_folder)
    plan = plan_images(config, str(Path(model_folder).resolve()), prompts, keys, size)

    def draw(batch: list[dict[str, Any]], device: str) -> list[Image.Image]:
        nonlocal pipe
        if pipe is None:
            pipe = Hand1000Pipeline.from_pretrained(model_folder, device=device)
        pipe.sd.set_progress_bar_config(disable=True)
        return pipe(
            [r["prompt"] for r in batch],
            mu=g.mu,
            num_inference_steps=g.steps,
            guidance_scale=g.guidance,
            height=size[0],
            width=size[1],
            generator=record_generators(batch),
            output_type="pil",
        ).images

    records = make_images(
        out_dir, plan, draw, SETTINGS_KEYS, batch_size=g.batch_size, desc=f"generate {out_dir.name}",
        progress=progress, device=config.run.device,
    )  # fmt: skip
    if not is_main_process():
        return records
    shown = records[:GRID_MAX_IMAGES]
    images = [files.load_image(out_dir / r["file"]) for r in shown]
    columns = g.images_per_prompt if g.images_per_prompt > 1 else math.ceil(math.sqrt(len(shown)))
    files.save_image(out_dir / "grid.png", make_grid(images, columns))
    return records
