"""The two-stage method's baselines (seed 004, Table I), through diffusers' own pipelines, on exactly the
poses, prompts, seeds, size, steps, guidance and negative prompt of a `twostage generate` folder (read
from its `records.jsonl`), with the same DDIM sampler:

- `sd`: text only, `StableDiffusionPipeline` on `compare.sd_base` (the text-to-image SD of the
  outpainter's family: `outpaint.base` is its inpainting model);
- `controlnet`: the outpainter's OpenPose ControlNet (`outpaint.controlnet`) without the LoRA, through
  `StableDiffusionControlNetPipeline`, on the skeleton image the method drew for the pose;
- `t2i_adapter`: `T2IAdapter` (`compare.t2i_adapter`) through `StableDiffusionAdapterPipeline`, on the
  same skeleton image.

The pose-conditioned rows take `outpaint.conditioning_scale` as the method's ControlNet does. Output in
`out_dir`: `images/<key>.png` and `records.jsonl` in the method's record format (key, prompt, pose,
size, seed), so `handsynth evaluate --method twostage` scores every row alike. Generation resumes
(`sharing.make_images`, on several processes under `accelerate launch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handsynth import files, hub
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.sharing import make_images
from handsynth.training.diffusion import draw_records, load_sampling_pipeline
from handsynth.twostage.data.skeleton import draw_openpose

log = logging.getLogger(__name__)

BASELINES = ("sd", "controlnet", "t2i_adapter")
# what the method's records fix and each baseline image repeats
SHARED_KEYS = (
    "key", "prompt", "keypoints", "width", "height", "seed", "steps", "guidance", "negative_prompt",
    "conditioning_scale", "skeleton",
)  # fmt: skip
SETTINGS_KEYS = (*SHARED_KEYS, "models")
# what one pipeline call shares
SAMPLING_SETTINGS = ("steps", "guidance", "negative_prompt", "conditioning_scale", "width", "height")


def baseline_models(config: Config, name: str) -> list[str]:
    """The weights a baseline runs: its SD, and its ControlNet or adapter."""
    conditioning = {"controlnet": [config.outpaint.controlnet], "t2i_adapter": [config.compare.t2i_adapter]}
    return [config.compare.sd_base, *conditioning.get(name, [])]


def baseline_plan(config: Config, name: str, method: list[dict]) -> list[dict]:
    """One record per pose of the method's records: the same prompt, pose and seed, drawn by `name`."""
    models = baseline_models(config, name)
    return [
        {**{k: r[k] for k in SHARED_KEYS}, "image": f"images/{r['key']}.png", "models": models, "row": name}
        for r in method
    ]


def load_baseline(config: Config, name: str, device: str | None = None) -> Any:
    """The diffusers pipeline of baseline `name`, with the method's DDIM sampler, in its inference dtype,
    on `device` (default `run.device`)."""
    from diffusers import (
        ControlNetModel,
        StableDiffusionAdapterPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        T2IAdapter,
    )

    if name not in BASELINES:
        raise HandsynthError(f"unknown two-stage baseline '{name}'; choose from {', '.join(BASELINES)}")
    device = device or config.run.device
    dtype = hub.resolve_dtype(None, hub.resolve_device(device))
    parts: dict[str, Any] = {}
    pipeline = StableDiffusionPipeline
    if name == "controlnet":
        pipeline = StableDiffusionControlNetPipeline
        controlnet = config.outpaint.controlnet
        parts["controlnet"] = hub.from_pretrained(
            ControlNetModel, controlnet, "outpaint.controlnet", dtype=dtype
        )
    elif name == "t2i_adapter":
        pipeline = StableDiffusionAdapterPipeline
        adapter = config.compare.t2i_adapter
        parts["adapter"] = hub.from_pretrained(T2IAdapter, adapter, "compare.t2i_adapter", dtype=dtype)
    base = config.compare.sd_base
    return load_sampling_pipeline(pipeline, base, "compare.sd_base", device, parts)


def skeleton_image(record: dict) -> Image.Image:
    """The OpenPose image the method's outpainter was conditioned on for this record's pose."""
    pose = np.asarray(record["keypoints"], dtype=np.float32)
    return Image.fromarray(draw_openpose(pose, record["width"], record["height"], record["skeleton"]))


def draw_batch(pipe: Any, name: str, batch: list[dict]) -> list[Image.Image]:
    """One image per record of `batch`, which share their sampling settings."""
    if name == "sd":
        return draw_records(pipe, batch)
    scale = "controlnet_conditioning_scale" if name == "controlnet" else "adapter_conditioning_scale"
    condition = {"image": [skeleton_image(r) for r in batch], scale: batch[0]["conditioning_scale"]}
    return draw_records(pipe, batch, **condition)


def generate_baseline(
    config: Config, name: str, method_dir: str | Path, out_dir: str | Path, progress: bool = True
) -> list[dict]:
    """Baseline `name`'s image for every pose of the `twostage generate` folder `method_dir`, into
    `out_dir`; returns every record. Images of one pipeline call share steps, guidance and size: the
    records are grouped by them, which a folder made with one config never splits."""
    if name not in BASELINES:
        raise HandsynthError(f"unknown two-stage baseline '{name}'; choose from {', '.join(BASELINES)}")
    method = files.generated_records(method_dir, "handsynth twostage generate")
    missing = [k for k in SHARED_KEYS if k not in method[0]]
    if missing:
        raise HandsynthError(
            f"{method_dir}/records.jsonl lacks {', '.join(missing)}: it was made by an older handsynth; "
            "make the images again with `handsynth twostage generate` before comparing"
        )
    files.check_one_setting(method, SAMPLING_SETTINGS, method_dir)
    plan = baseline_plan(config, name, method)
    pipe = None

    def draw(batch: list[dict], device: str) -> list[Image.Image]:
        nonlocal pipe
        if pipe is None:
            pipe = load_baseline(config, name, device)
        return draw_batch(pipe, name, batch)

    return make_images(
        out_dir, plan, draw, SETTINGS_KEYS, key="key", file_field="image",
        batch_size=config.compare.batch_size, what="the pose", desc=f"baseline {name}", progress=progress,
        device=config.run.device,
    )  # fmt: skip
