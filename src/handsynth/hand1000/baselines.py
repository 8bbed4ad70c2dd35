"""Hand1000's baseline (its Table 2): the base model it was fine-tuned from (`model.base`, SD v1.4), run
through diffusers' `StableDiffusionPipeline` on exactly the prompts, seeds, size, steps and guidance of
a Hand1000 samples folder (read from its `records.jsonl`), with the same DDIM sampler.

Output in `out_dir`: `images/<index>.png` and `records.jsonl`, one record per image with the method's
index, prompt and seed, as `handsynth generate` writes them, so `handsynth evaluate` scores both alike.
It resumes, and shares processes, as generation does (`sharing.make_images`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handsynth import files
from handsynth.config import Config
from handsynth.sharing import make_images
from handsynth.training.diffusion import draw_records, load_sampling_pipeline

log = logging.getLogger(__name__)

# what the method's records fix and each baseline image repeats
SHARED_KEYS = ("index", "prompt", "seed", "steps", "guidance", "height", "width")
SETTINGS_KEYS = ("prompt", "seed", "steps", "guidance", "height", "width", "model")


def base_plan(method: list[dict], base: str) -> list[dict]:
    """One record per image of the method's records, drawn by `base` on the same prompt and seed."""
    plan = []
    for record in method:
        shared = {k: record[k] for k in SHARED_KEYS}
        plan.append({**shared, "file": f"images/{record['index']:06d}.png", "model": base, "row": "base"})
        if "key" in record:
            plan[-1]["key"] = record["key"]
    return plan


def generate_base_samples(
    config: Config,
    method_dir: str | Path,
    out_dir: str | Path,
    load: Callable[[str], Any] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Images of `model.base` on the prompts and seeds of the Hand1000 samples in `method_dir` (one
    gesture's folder) into `out_dir`; returns every record. `load(device)` gives the StableDiffusionPipeline
    when there is an image to make (by default `load_base(config, device)`)."""
    method = files.generated_records(method_dir, "handsynth generate")
    files.check_one_setting(method, ("steps", "guidance", "height", "width"), method_dir)
    plan = base_plan(method, config.model.base)

    load = load or functools.cache(lambda device: load_base(config, device))

    out_dir = Path(out_dir)
    return make_images(
        out_dir, plan, lambda batch, device: draw_records(load(device), batch), SETTINGS_KEYS,
        batch_size=config.compare.batch_size, desc=f"base {out_dir.name}", progress=progress,
        device=config.run.device,
    )  # fmt: skip


def load_base(config: Config, device: str | None = None) -> Any:
    """`model.base` as a StableDiffusionPipeline with Hand1000's DDIM sampler, in its inference dtype, on
    `device` (default `run.device`)."""
    from diffusers import StableDiffusionPipeline

    device = device or config.run.device
    return load_sampling_pipeline(StableDiffusionPipeline, config.model.base, "model.base", device)
