"""`handsynth twostage generate`: poses and prompts in, images and every intermediate out, resumably.

Poses come from a `poses.jsonl` (`handsynth pose extract`), the two-stage dataset's `images.jsonl`
(its test split by default), or a photo (`--pose-image`, read by Holistic first). A pose is moved into
the square image to make (`twostage.size`), centred and scaled to fit. Output, in `--out`:

- `images/<key>.png`;
- `intermediates/<key>/`: each hand crop and its mask (`hand-N.png`, `hand-N-mask.png`), the canvas and
  its mask, the OpenPose condition image, `blend-masks.npz` (one latent-size mask per step) and
  `strip.png` (canvas | m_c | condition | blend masks | x0 previews | decoded | result);
- `records.jsonl`: per image its key, prompt, the pose in the image's pixels, size, seed and settings
  (what `handsynth evaluate --method twostage` reads); a pose that cannot be drawn (off the image, no
  hand to crop) is skipped, and its line says why under "skipped";
- `grid.png`: pose | hand | canvas | result for the first images.

A restart skips every pose that already has a record and an image; one made with other settings is
an error naming them (choose another --out), never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from handsynth import files
from handsynth.config import Config, save_config
from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import check_pose
from handsynth.twostage.data.skeleton import draw_openpose
from handsynth.twostage.handgen.pipeline import default_handgen_dir
from handsynth.twostage.outpaint.models import default_lora_dir
from handsynth.twostage.outpaint.sampler import SAMPLING_KEYS
from handsynth.twostage.pipeline import TwoStagePipeline, UndrawablePose, check_drawable

log = logging.getLogger(__name__)

GRID_ROWS = 8
GRID_CELL = 192


@dataclass
class PoseJob:
    key: str
    prompt: str
    keypoints: np.ndarray  # (133, 3) in the pixels of the image to make
    source: str


def fit_pose(keypoints: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """The pose of a width x height frame, scaled and centred into a size x size square."""
    scale = size / max(width, height)
    moved = np.array(keypoints, dtype=np.float32, copy=True)
    moved[:, 0] = moved[:, 0] * scale + (size - width * scale) / 2
    moved[:, 1] = moved[:, 1] * scale + (size - height * scale) / 2
    return moved


def read_pose_jobs(
    path: str | Path, size: int, prompt: str = "", split: str = "test", max_poses: int = 0
) -> list[PoseJob]:
    """The poses of a poses.jsonl or images.jsonl (rows of `split` where rows have one), each with its
    prompt: `prompt` if given, else the row's "prompt" or "caption". Rows without a person are skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "images.jsonl"
    if not path.is_file():
        raise HandsynthError(
            f"no poses at {path}; give a poses.jsonl (`handsynth pose extract`), the two-stage dataset's "
            "images.jsonl (`handsynth pose build`), or --pose-image"
        )
    jobs, no_person = [], 0
    for line, row in enumerate(files.read_jsonl(path), 1):
        if split and row.get("split", split) != split:
            continue
        if row.get("keypoints") is None:
            no_person += 1
            continue
        name = f"{path} line {line}"
        text = prompt or row.get("prompt") or row.get("caption")
        if not text:
            raise HandsynthError(f"{name} has no prompt or caption; give one with --prompt")
        try:
            width, height = int(row["width"]), int(row["height"])
        except (KeyError, TypeError, ValueError):
            raise HandsynthError(f"{name} lacks its frame's width and height") from None
        keypoints = fit_pose(check_pose(row["keypoints"], name), width, height, size)
        key = str(row.get("key") or Path(str(row.get("image", f"pose{line:05d}"))).stem)
        jobs.append(PoseJob(key, str(text), keypoints, str(row.get("image", path))))
        if 0 < max_poses <= len(jobs):
            break
    if no_person:
        log.warning("%s: skipped %d rows without a person", path, no_person)
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise HandsynthError(f"{path}: keys repeat; each pose needs its own key (or image name)")
    if not jobs:
        raise HandsynthError(f"{path} has no pose with a person" + (f" in split '{split}'" if split else ""))
    return jobs


def pose_from_photo(photo: str | Path, size: int, prompt: str) -> PoseJob:
    """Read the pose of the person in `photo` with MediaPipe Holistic (hands filled from Hands)."""
    from handsynth.files import load_rgb
    from handsynth.perception.pose import PoseDetector

    if not prompt:
        raise HandsynthError("--pose-image needs --prompt: the text of the image to make")
    rgb = load_rgb(photo)
    with PoseDetector() as detector:
        body = detector.detect(rgb)
    if not body.found:
        raise HandsynthError(f"no person found in {photo}; try a photo where the body is visible")
    height, width = rgb.shape[:2]
    return PoseJob(Path(photo).stem, prompt, fit_pose(body.keypoints, width, height, size), str(photo))


def save_intermediates(folder: Path, result: Any) -> None:
    """Every intermediate of one TwoStageResult, as images a user can look at."""
    for n, (hand, mask) in enumerate(zip(result.hands, result.hand_masks, strict=True)):
        files.save_image(folder / f"hand-{n}.png", Image.fromarray(hand.image))
        files.save_image(folder / f"hand-{n}-mask.png", Image.fromarray(np.uint8(mask) * 255))
    files.save_image(folder / "canvas.png", Image.fromarray(result.canvas.image))
    files.save_image(folder / "canvas-mask.png", Image.fromarray(np.uint8(result.canvas.mask) * 255))
    files.save_image(folder / "condition.png", Image.fromarray(result.condition))
    files.write_npz(folder / "blend-masks.npz", masks=np.stack(result.outpaint.blend_masks))
    files.save_image(folder / "strip.png", Image.fromarray(result.outpaint.strip()))


def grid_row(out_dir: Path, record: dict) -> list[Image.Image]:
    """pose | first hand | canvas | result, for one record."""
    folder = out_dir / record["intermediates"]
    size = (record["width"], record["height"])
    pose = Image.fromarray(draw_openpose(np.asarray(record["keypoints"], np.float32), *size))
    cells = [pose, folder / "hand-0.png", folder / "canvas.png", out_dir / record["image"]]
    return [c if isinstance(c, Image.Image) else Image.open(c).convert("RGB") for c in cells]


def write_grid(out_dir: Path, records: list[dict]) -> Path | None:
    from diffusers.utils import make_image_grid

    rows = [grid_row(out_dir, r) for r in records[:GRID_ROWS]]
    if not rows:
        return None
    cells = [cell.resize((GRID_CELL, GRID_CELL)) for row in rows for cell in row]
    path = out_dir / "grid.png"
    files.save_image(path, make_image_grid(cells, rows=len(rows), cols=4))
    return path


# what makes the image besides the pose job: stage 2's sampling, its canvas and condition, stage 1's
# sampling, and the models (with `files.folder_stamp` of the trained ones, so a retrained model is seen)
IMAGE_SETTINGS = (
    *SAMPLING_KEYS, "skeleton", "background", "hand_steps", "hand_guidance", "models", "weights",
)  # fmt: skip
SETTINGS_KEYS = ("prompt", "keypoints", "seed", "width", *IMAGE_SETTINGS)


def generate_twostage(
    config: Config,
    jobs: list[PoseJob],
    out_dir: str | Path,
    pipe: Any = None,
    progress: bool = True,
    load: Callable[[], Any] | None = None,
    **outpaint_settings: Any,
) -> list[dict]:
    """Make one image per pose job into `out_dir`; return the records of the images (in job order).

    A pose that cannot be drawn (`check_drawable`: off the image, no hand to crop) is skipped: its line
    in records.jsonl has no image and says why under "skipped". A run whose every pose is skipped is an
    error.

    `pipe`: a loaded TwoStagePipeline, else `load()` makes one when there is an image to make (by
    default `load_pipeline(config)`). Job n uses seed
    `run.seed + n`, so any image can be made again alone. A pose already made with other settings in
    `out_dir` is an error, not an overwrite. Stage 2 runs with `[outpaint]`, overridden by
    `outpaint_settings`; stage 1 with `handgen.steps` and `handgen.guidance`.
    """
    out_dir = Path(out_dir)
    settings = {**vars(config.outpaint), **outpaint_settings}
    size = config.twostage.size
    handgen, lora = default_handgen_dir(config), default_lora_dir(config)
    lora = lora if lora.is_dir() else None
    made_by = {
        **{k: settings[k] for k in (*SAMPLING_KEYS, "skeleton", "background")},
        "hand_steps": config.handgen.steps,
        "hand_guidance": config.handgen.guidance,
        "models": [str(handgen.resolve()), config.outpaint.base, config.outpaint.controlnet]
        + [lora and str(lora.resolve())],
        "weights": [files.folder_stamp(folder) for folder in (handgen, lora) if folder is not None],
    }
    plan = [
        {
            "key": job.key,
            "image": f"images/{job.key}.png",
            "intermediates": f"intermediates/{job.key}",
            "prompt": job.prompt,
            "keypoints": np.round(job.keypoints.astype(np.float64), 3).tolist(),
            "width": size,
            "height": size,
            "seed": config.run.seed + n,
            "source": job.source,
            **made_by,
        }
        for n, job in enumerate(jobs)
    ]
    done = files.finished_records(out_dir, plan, SETTINGS_KEYS, ("image",), key="key", what="the pose")
    todo = [(job, record) for job, record in zip(jobs, plan, strict=True) if job.key not in done]
    skipped: dict[str, dict] = {}
    for job, record in tqdm(todo, desc="two-stage", disable=not progress, unit="img"):
        try:
            check_drawable(job.keypoints, size, size)
        except UndrawablePose as exc:  # one bad pose must not stop the run
            log.warning("pose %s (%s) skipped: %s", job.key, job.source, exc)
            kept = {k: v for k, v in record.items() if k not in ("image", "intermediates")}
            skipped[job.key] = {**kept, "skipped": str(exc)}
            continue
        if pipe is None:
            pipe = load() if load else load_pipeline(config)
        result = pipe(
            job.prompt,
            job.keypoints,
            size,
            size,
            seed=record["seed"],
            hand_steps=config.handgen.steps,
            hand_guidance=config.handgen.guidance,
            progress=False,
            **settings,
        )
        record["crops"] = [list(plan.box) for plan in result.crops]
        save_intermediates(out_dir / record["intermediates"], result)
        files.save_image(out_dir / record["image"], Image.fromarray(result.image))  # the commit point
        files.append_jsonl(out_dir / "records.jsonl", record)
        done[job.key] = record
    records = [done[job.key] for job in jobs if job.key in done]
    kept = files.read_jsonl(out_dir / "records.jsonl") if (out_dir / "records.jsonl").is_file() else []
    others = [r for r in kept if r["key"] not in {job.key for job in jobs}]
    ordered = [done.get(job.key) or skipped[job.key] for job in jobs]
    files.write_jsonl(out_dir / "records.jsonl", ordered + others)  # one line per key, this run's first
    if not records:
        reasons = "; ".join(f"{key}: {r['skipped']}" for key, r in list(skipped.items())[:3])
        raise HandsynthError(
            f"every one of the {len(jobs)} poses was skipped, so no image was made ({reasons}"
            f"{' ...' if len(skipped) > 3 else ''}); the reasons are in {out_dir / 'records.jsonl'}"
        )
    if skipped:
        log.warning("%d of %d poses skipped; records.jsonl says why", len(skipped), len(jobs))
    write_grid(out_dir, records)
    save_config(config, out_dir / "config.toml")
    return records


def lora_dir(config: Config) -> Path | None:
    """The outpainter's LoRA: outpaint.lora_dir, or <run>/models/outpaint-lora when it exists."""
    folder = default_lora_dir(config)
    if config.outpaint.lora_dir and not folder.is_dir():
        raise HandsynthError(f"outpaint.lora_dir is {folder}, which is not a folder; train it first")
    if not folder.is_dir():
        log.warning("no outpainter LoRA at %s: stage 2 runs the ControlNet as it is", folder)
        return None
    return folder


def default_poses(config: Config) -> Path:
    """twostage.poses, else the two-stage dataset (its images.jsonl; the test split is read)."""
    from handsynth.twostage.data.dataset import default_output_dir

    return Path(config.twostage.poses or default_output_dir(config))


def load_pipeline(config: Config) -> Any:
    handgen = default_handgen_dir(config)
    if not handgen.is_dir():
        raise HandsynthError(
            f"no hand generator at {handgen}; train one with `handsynth handgen train`, "
            "or set handgen.model_dir"
        )
    return TwoStagePipeline.from_pretrained(
        handgen,
        config.outpaint.base,
        config.outpaint.controlnet,
        lora_dir(config),
        device=config.run.device,
        settings=config.outpaint,
    )
