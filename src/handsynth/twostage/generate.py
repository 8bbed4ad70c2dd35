"""`handsynth twostage generate`: poses and prompts in, images and every intermediate out, resumably.

Poses come from a `poses.jsonl` (`handsynth pose extract`), the two-stage dataset's `images.jsonl`
(its test split by default), or a photo (`--pose-image`, read by Holistic first). A pose is moved into
the image to make (`twostage.width` x `twostage.height`, each 0 taking `twostage.size`), centred and scaled
to fit. Output, in `--out`:

- `images/<key>.png`;
- `intermediates/<key>/`: each hand crop and its mask (`hand-N.png`, `hand-N-mask.png`), the canvas and
  its mask, the OpenPose condition image, `blend-masks.npz` (one latent-size mask per step) and
  `strip.png` (canvas | m_c | condition | blend masks | x0 previews | decoded | result);
- `records.jsonl`: per image its key, prompt, the pose in the image's pixels, size, seed and settings
  (what `handsynth evaluate --method twostage` reads); a pose that cannot be drawn (off the image, no
  hand to crop) is skipped, and its line says why under "skipped";
- `grid.png`: pose | hand | canvas | result for the first images.

A restart skips every pose that already has a record and an image; one made with other settings is
an error naming them (choose another --out), never overwritten. Under `accelerate launch` each process
makes its share of the poses (`handsynth.sharing`); the folder ends the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.config import Config, check_at_least_one, check_image_side, save_config
from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import check_pose
from handsynth.sharing import SharedOutput
from handsynth.twostage.data.skeleton import draw_openpose
from handsynth.twostage.handgen.pipeline import default_handgen_dir
from handsynth.twostage.outpaint.models import default_lora_dir, outpaint_sources
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


def output_size(config: Config) -> tuple[int, int]:
    """(width, height) of the images to make: twostage.width and .height, a 0 taking twostage.size."""
    t = config.twostage
    return t.width or t.size, t.height or t.size


def check_generate_settings(config: Config) -> None:
    """Sizes and steps, before any model loads (a bad one would fail only after the loading)."""
    check_image_side("twostage.size", config.twostage.size)
    for key in ("width", "height"):
        check_image_side(f"twostage.{key}", getattr(config.twostage, key), zero="twostage.size")
    check_at_least_one(config, "outpaint.steps", "handgen.steps")
    if config.twostage.max_poses < 0:
        raise HandsynthError(f"twostage.max_poses must be 0 (all) or more, got {config.twostage.max_poses}")


def fit_pose(keypoints: np.ndarray, width: int, height: int, size: int | tuple[int, int]) -> np.ndarray:
    """The pose of a width x height frame, scaled and centred into the image to make: a square side, or
    (width, height)."""
    out_width, out_height = (size, size) if isinstance(size, int) else size
    scale = min(out_width / width, out_height / height)
    moved = np.array(keypoints, dtype=np.float32, copy=True)
    moved[:, 0] = moved[:, 0] * scale + (out_width - width * scale) / 2
    moved[:, 1] = moved[:, 1] * scale + (out_height - height * scale) / 2
    return moved


def read_pose_jobs(
    path: str | Path, size: int | tuple[int, int], prompt: str = "", split: str = "test", max_poses: int = 0
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
    jobs, no_person, other_split = [], 0, 0
    for line, row in enumerate(files.read_jsonl(path), 1):
        if split and row.get("split", split) != split:
            other_split += 1
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
        reasons = []  # the split is named only when the file has rows of other splits
        if other_split:
            reasons.append(f"{other_split} row(s) belong to another split than '{split}'")
        if no_person:
            reasons.append(f"{no_person} row(s) have no person (keypoints null)")
        raise HandsynthError(f"{path} has no pose with a person: {'; '.join(reasons) or 'it has no rows'}")
    return jobs


def pose_from_photo(photo: str | Path, size: int | tuple[int, int], prompt: str) -> PoseJob:
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
    files.save_image(folder / "condition.png", result.condition)
    files.write_npz(folder / "blend-masks.npz", masks=np.stack(result.outpaint.blend_masks))
    files.save_image(folder / "strip.png", Image.fromarray(result.outpaint.strip()))


def grid_row(out_dir: Path, record: dict) -> list[Image.Image]:
    """pose | first hand | canvas | result, for one record."""
    folder = out_dir / record["intermediates"]
    size = (record["width"], record["height"])
    pose = Image.fromarray(draw_openpose(np.asarray(record["keypoints"], np.float32), *size))
    cells = [pose, folder / "hand-0.png", folder / "canvas.png", out_dir / record["image"]]
    return [c if isinstance(c, Image.Image) else files.load_image(c) for c in cells]


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
SETTINGS_KEYS = ("prompt", "keypoints", "seed", "width", "height", *IMAGE_SETTINGS)


@files.locked_output("out_dir")
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
    check_generate_settings(config)
    out_dir = Path(out_dir)
    settings = {**vars(config.outpaint), **outpaint_settings}
    width, height = output_size(config)
    handgen, lora = default_handgen_dir(config), default_lora_dir(config)
    lora = lora if lora.is_dir() else None
    base, controlnet = outpaint_sources(config.outpaint.base, config.outpaint.controlnet, lora)
    made_by = {
        **{k: settings[k] for k in (*SAMPLING_KEYS, "skeleton", "background")},
        "hand_steps": config.handgen.steps,
        "hand_guidance": config.handgen.guidance,
        "models": [str(handgen.resolve()), base, controlnet] + [lora and str(lora.resolve())],
        "weights": [files.folder_stamp(folder) for folder in (handgen, lora) if folder is not None],
    }
    plan = [
        {
            "key": job.key,
            "image": f"images/{job.key}.png",
            "intermediates": f"intermediates/{job.key}",
            "prompt": job.prompt,
            "keypoints": np.round(job.keypoints.astype(np.float64), 3).tolist(),
            "width": width,
            "height": height,
            "seed": config.run.seed + n,
            "source": job.source,
            **made_by,
        }
        for n, job in enumerate(jobs)
    ]
    skipped: dict[str, dict] = {}  # one bad pose must not stop the run
    for job, record in zip(jobs, plan, strict=True):
        try:
            check_drawable(job.keypoints, width, height)
        except UndrawablePose as exc:
            kept = {k: v for k, v in record.items() if k not in ("image", "intermediates")}
            skipped[job.key] = {**kept, "skipped": str(exc)}
    drawable = [(job, record) for job, record in zip(jobs, plan, strict=True) if job.key not in skipped]
    share = SharedOutput(
        out_dir, [r for _, r in drawable], SETTINGS_KEYS, ("image",), "key", "the pose", config.run.device
    )
    if share.is_main:
        for key, record in skipped.items():
            log.warning("pose %s (%s) skipped: %s", key, record["source"], record["skipped"])
    done = share.finished()
    todo = share.mine([(job, record) for job, record in drawable if job.key not in done])
    bar = share.progress("two-stage", "img", progress)
    for job, record in todo:
        if pipe is None:
            pipe = load() if load else load_pipeline(config, share.device)
        result = pipe(
            job.prompt,
            job.keypoints,
            width,
            height,
            seed=record["seed"],
            hand_steps=config.handgen.steps,
            hand_guidance=config.handgen.guidance,
            progress=False,
            **settings,
        )
        record["crops"] = [list(plan.box) for plan in result.crops]
        save_intermediates(out_dir / record["intermediates"], result)
        files.save_image(out_dir / record["image"], result.image)  # the commit point
        share.append(record)
        bar.update()
    bar.close()
    done = share.gather()
    records = [done[job.key] for job, _ in drawable]
    records_file = out_dir / "records.jsonl"
    if share.is_main:
        kept = files.read_jsonl(records_file, torn_end_ok=True) if records_file.is_file() else []
        others = [r for r in kept if r["key"] not in {job.key for job in jobs}]
        ordered = [done.get(job.key) or skipped[job.key] for job in jobs]
        files.write_jsonl(records_file, ordered + others)  # one line per key, this run's first
    if not records:
        reasons = "; ".join(f"{key}: {r['skipped']}" for key, r in list(skipped.items())[:3])
        raise HandsynthError(
            f"every one of the {len(jobs)} poses was skipped, so no image was made ({reasons}"
            f"{' ...' if len(skipped) > 3 else ''}); the reasons are in {records_file}"
        )
    if not share.is_main:
        return records
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


def load_pipeline(config: Config, device: str | None = None) -> Any:
    """The two-stage pipeline of `config`, on `device` (default `run.device`)."""
    handgen = default_handgen_dir(config)
    if not handgen.is_dir():
        raise HandsynthError(
            f"no hand generator at {handgen}; train one with `handsynth handgen train`, "
            "or set handgen.model_dir"
        )
    return TwoStagePipeline.from_pretrained(
        handgen,
        config.outpaint.base or None,  # None: what the LoRA folder records
        config.outpaint.controlnet or None,
        lora_dir(config),
        device=device or config.run.device,
        settings=config.outpaint,
    )
