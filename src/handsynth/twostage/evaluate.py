"""The two-stage method's evaluation (seed 004 §IV-C, Table I): DAP, DAP-hands, MPJPE, MPJPE-hands, FID
and KID at several Inception taps, their "fg" variants on images with the background removed, CLIPSIM.

Inputs:
- `records`: one dict per generated image: {"image": path, "prompt", "keypoints": 133 x [x, y, v] (the
  ground-truth pose it was generated from), "width", "height" (the pose's frame)}, optional "key";
- `real_manifest`: the two-stage dataset's `images.jsonl`; its `split` rows are the real image set;
- `detections`: what the pose detector (MediaPipe Holistic) found on each generated image, as
  `twostage.data.extract.detect_poses` gives it; rescaled to the ground truth's frame;
- `fg_masks`: a person mask per real and per generated image (`person_masks`), for the fg metrics.

A real set built from YouTube-ASL (`pose.source_format = "youtube_asl"`, seed 004 Table II) is scored on
full images only: its videos have no background clutter, so the fg metrics are left out and the
report says why.

The person mask is prompted with the known pose where the model takes a prompt (TWOSTAGE.md §10): SAM
with the ground-truth pose of a real image and the pose a generated one was made from; offline it is
Holistic's segmentation, the same for both sets, so both carry the same mask errors. The background
becomes black. An image without a mask is left out of the fg sets and counted (`fg_left_out`), never
scored as a black image.

Output in `out`: `report.json` (every metric with its counts and settings), `report.md` (the table),
`samples.png` (each generated sample with the ground-truth pose, with the detected pose and, with
person masks, without its background) and `detections.jsonl` (the detected pose of every image).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics, pose_metrics
from handsynth.evaluation.common import check_shared_settings, format_value, not_computed
from handsynth.perception.wholebody import BODY, FEET, check_pose
from handsynth.twostage.data.extract import PoseRun, detect_poses, settings_tag

log = logging.getLogger(__name__)

METRIC_LABELS = {  # the report's keys, in its order, with the headers tables show them under
    "dap": "DAP ↑",
    "dap_hands": "DAP hands ↑",
    "mpjpe": "MPJPE ↓",
    "mpjpe_hands": "MPJPE hands ↓",
    "fid": "FID ↓",
    "kid": "KID ↓",
    "fid_fg": "FID fg ↓",
    "kid_fg": "KID fg ↓",
    "clipsim": "CLIPSIM ↑",
}
TWOSTAGE_METRICS = tuple(METRIC_LABELS)
POSE_METRICS = {"dap", "dap_hands", "mpjpe", "mpjpe_hands"}
FG_METRICS = ("fid_fg", "kid_fg")
FULL_IMAGE_FORMATS = ("youtube_asl",)  # no background clutter (seed 004 §IV-D): full images only
BACKGROUND = (0, 0, 0)
GRID_CELL = 160  # px per sample in samples.png, as Hand1000's evaluation grid

# a person mask: an array, a mask PNG, a function of the image that makes one (None: no person), or
# None: no mask
MaskSource = Any


def person_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A (H, W) bool person mask from a bool array, an integer array or PNG path (nonzero: person, so
    0/1 and 0/255 masks both work), or a float array (> 0.5: person); None is an empty mask."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, str | os.PathLike):
        try:
            with Image.open(mask) as image:
                mask = np.asarray(files.to_gray(image))
        except OSError as exc:
            raise HandsynthError(f"cannot read the person mask of {name} ({mask}): {exc}") from None
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != shape:
        raise HandsynthError(
            f"the person mask of {name} is {mask.shape}, the image is {shape}; "
            "give a mask of the image's size (height, width)"
        )
    if mask.dtype == bool:
        return mask
    return mask > 0.5 if np.issubdtype(mask.dtype, np.floating) else mask != 0


def remove_background(
    image: np.ndarray, mask: Any, background: tuple[int, int, int] = BACKGROUND, name: str = "image"
) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 `image` with every pixel outside the person mask set to `background`."""
    image = np.asarray(image)
    keep = person_mask(mask, image.shape[:2], name)
    out = np.empty_like(image)
    out[...] = np.asarray(background, dtype=image.dtype)
    out[keep] = image[keep]
    return out


def foreground_loaders(
    images: Sequence[str | os.PathLike | np.ndarray],
    masks: Sequence[MaskSource],
    background: tuple[int, int, int] = BACKGROUND,
) -> tuple[list[Callable[[], np.ndarray]], list[int]]:
    """(one function per image with a mask, which reads it, takes its mask and returns it with the
    background removed; the indices of those images). A mask is an array, a PNG, a function of the image
    that makes one, or None: no mask, and the image is left out. A made mask that holds no person
    raises a HandsynthError when the function runs, which leaves that image out of Inception's features.

    Inception reads the functions one batch at a time, so the images are never all in memory.
    """
    if len(masks) != len(images):
        raise HandsynthError(f"foreground: {len(images)} images but {len(masks)} masks")

    def loader(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            item = images[i]
            is_file = isinstance(item, str | os.PathLike)
            rgb = files.load_rgb(item) if is_file else np.asarray(item)
            name = str(item) if is_file else f"image {i}"
            source = masks[i]
            mask = person_mask(source(rgb) if callable(source) else source, rgb.shape[:2], name)
            if not mask.any():
                raise HandsynthError(f"{name}: no person in its mask; it is left out of the fg sets")
            return remove_background(rgb, mask, background, name)

        return load

    kept = [i for i, mask in enumerate(masks) if mask is not None]
    return [loader(i) for i in kept], kept


def check_records(records: Sequence[dict]) -> list[dict]:
    """Each record with its pose as a (133, 3) array, or a HandsynthError naming the record."""
    if not records:
        raise HandsynthError("two-stage evaluation: no generated images (records) were given")
    checked = []
    for i, record in enumerate(records):
        name = f"record {i} ({record.get('key', record.get('image', '?'))})"
        missing = [k for k in ("image", "prompt", "keypoints", "width", "height") if record.get(k) is None]
        if missing:
            raise HandsynthError(f"{name} lacks {', '.join(missing)}; see evaluate_twostage's docstring")
        try:
            positive = int(record["width"]) > 0 and int(record["height"]) > 0
        except (TypeError, ValueError):
            positive = False
        if not positive:
            raise HandsynthError(f"{name}: width and height must be positive integers")
        keypoints = check_pose(np.asarray(record["keypoints"], dtype=np.float32), f"ground truth of {name}")
        checked.append({**record, "keypoints": keypoints})
    return checked


def real_source_format(manifest: str | os.PathLike) -> str | None:
    """The `pose.source_format` a two-stage dataset was built from (its report.json), if it says."""
    folder = Path(manifest)
    report = (folder if folder.is_dir() else folder.parent) / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("source_format")
    except (OSError, json.JSONDecodeError) as exc:
        raise HandsynthError(
            f"cannot read {report}: {exc}; rebuild the dataset with `handsynth pose build`"
        ) from None


def scored_metrics(wanted: Sequence[str], real_manifest: str | os.PathLike) -> list[str]:
    """`wanted` less the fg metrics when the real set is full-image only (YouTube-ASL)."""
    if real_source_format(real_manifest) not in FULL_IMAGE_FORMATS:
        return list(wanted)
    dropped = [m for m in wanted if m in FG_METRICS]
    if dropped:
        log.info("the real set is YouTube-ASL, scored on full images: %s left out", ", ".join(dropped))
    return [m for m in wanted if m not in FG_METRICS]


def real_image_paths(manifest: str | os.PathLike, split: str = "test") -> list[Path]:
    """The images of `split` in a two-stage `images.jsonl` (or its folder), as paths."""
    from handsynth.twostage.data.dataset import read_image_rows

    manifest, rows = read_image_rows(manifest, split)
    return [manifest.parent / row["image"] for row in rows]


@dataclass
class Detections:
    """What the pose detector found on each generated image, in the records' order: a poses.jsonl
    record (twostage.data.extract: "keypoints" and "scores" in the image's pixels, null with no person;
    the image's "width" and "height"), or None for an image that could not be read (`unreadable`
    says why)."""

    poses: list[dict | None]
    unreadable: dict[str, str] = field(default_factory=dict)


def in_truth_frames(
    records: Sequence[dict], detections: Detections
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """(each detected pose rescaled from its image's pixels to its record's frame, its scores); None
    where nothing was found or the image was unreadable."""
    if len(detections.poses) != len(records):
        raise HandsynthError(f"{len(records)} generated images but {len(detections.poses)} detections")
    predictions: list[np.ndarray | None] = []
    scores: list[np.ndarray | None] = []
    for record, found in zip(records, detections.poses, strict=True):
        if found is None or found.get("keypoints") is None:
            predictions.append(None)
            scores.append(None)
            continue
        pose = check_pose(
            np.asarray(found["keypoints"], dtype=np.float32), f"pose detected on {record['image']}"
        )
        pose = pose.copy()
        pose[:, 0] *= record["width"] / found["width"]
        pose[:, 1] *= record["height"] / found["height"]
        predictions.append(pose)
        scores.append(None if found.get("scores") is None else np.asarray(found["scores"], dtype=np.float64))
    return predictions, scores


def fid_kid_by_dim(
    real: dict[int, np.ndarray], generated: dict[int, np.ndarray], dims: Sequence[int], config: Config
) -> tuple[dict, dict]:
    """FID and KID at every tap in `dims`; the first tap's values head each result."""
    ev = config.evaluate
    n_real, n_generated = len(real[dims[0]]), len(generated[dims[0]])
    counts = {"real": n_real, "generated": n_generated, "feature_dim": dims[0]}
    if min(n_real, n_generated) < 2:
        skipped = {"skipped": f"needs 2+ images per set, got {n_real} real, {n_generated} generated"}
        return {**skipped, **counts}, {**skipped, **counts}
    fid = {str(d): metrics.fid_from_features(real[d], generated[d]) for d in dims}
    kid = {
        str(d): metrics.kid(
            real[d], generated[d], ev.kid_subsets, ev.kid_subset_size, ev.kid_estimator, seed=config.run.seed
        )
        for d in dims
    }
    head = kid[str(dims[0])]
    return (
        {"value": fid[str(dims[0])], "by_dim": fid, **counts},
        {
            **head,
            "by_dim": {d: {"mean": k["mean"], "std": k["std"]} for d, k in kid.items()},
            **counts,
        },
    )


@dataclass
class FgMasks:
    """The fg metrics' person masks (MaskSource each): one per real image, in the split's order, and
    one per record. `tag` names what the real masks are made from: it is part of the key of the real
    fg features' cache."""

    name: str
    real: Sequence[MaskSource]
    generated: Sequence[MaskSource]
    tag: str


def _tap_features(
    model: inception.InceptionV3, items: Sequence[Any], dims: Sequence[int], config: Config, name: str
) -> dict[int, np.ndarray]:
    ev = config.evaluate
    return inception.extract_tap_features(
        model, items, dims, ev.preprocess, ev.batch_size, f"{name} features"
    )[0]


def check_twostage_settings(config: Config, wanted: Sequence[str]) -> list[int]:
    """Fail before any image is read, naming the config key; returns the feature dims."""
    check_shared_settings(config)
    ev = config.evaluate
    unknown = set(wanted) - set(TWOSTAGE_METRICS)
    if unknown:
        raise HandsynthError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(TWOSTAGE_METRICS)}")
    dims = [int(d) for d in ev.twostage_feature_dims]
    if not dims or any(d not in inception.TAPS for d in dims):
        raise HandsynthError(
            f"evaluate.twostage_feature_dims must be taps among {inception.TAPS}, got {dims}"
        )
    if ev.dap_area not in pose_metrics.AREA_MODES:
        raise HandsynthError(f"evaluate.dap_area must be one of {pose_metrics.AREA_MODES}")
    if ev.fg_masks not in FG_MASKS:
        raise HandsynthError(f"evaluate.fg_masks must be one of {', '.join(FG_MASKS)}, got '{ev.fg_masks}'")
    return list(dict.fromkeys(dims))


def evaluate_twostage(
    config: Config,
    records: Sequence[dict],
    real_manifest: str | os.PathLike,
    out: str | os.PathLike,
    detections: Detections | None,
    fg_masks: FgMasks | None = None,
    wanted: Sequence[str] = TWOSTAGE_METRICS,
    split: str = "test",
    skipped_poses: int = 0,
) -> dict:
    """Every metric in `wanted` for one set of generated images; writes the report files (module
    docstring) and returns the report. `skipped_poses`: the poses generation skipped (no image),
    counted in the report. Inception features of the real images, with and without their background,
    are cached in `evaluate.cache_dir`."""
    from handsynth.hub import resolve_device

    ev = config.evaluate
    full_images = real_source_format(real_manifest) in FULL_IMAGE_FORMATS
    wanted = scored_metrics(wanted, real_manifest)
    fg_masks = None if full_images else fg_masks  # not even the sample grid removes backgrounds
    dims = check_twostage_settings(config, wanted)
    if detections is None and POSE_METRICS & set(wanted):
        raise HandsynthError(
            "DAP and MPJPE need the detected poses; pass them, or leave them out of the metrics"
        )
    records = check_records(records)
    real_paths = real_image_paths(real_manifest, split)
    fake_paths = [Path(r["image"]) for r in records]
    out = Path(out)
    device = resolve_device(config.run.device)
    cache_dir = Path(ev.cache_dir or Path(config.run.output_dir) / "cache")
    report: dict[str, Any] = {
        "method": "twostage",
        "real": {
            "manifest": str(real_manifest),
            "split": split,
            "images": len(real_paths),
            "source_format": real_source_format(real_manifest),
            "full_images_only": full_images,
        },
        "generated": {"images": len(records), "skipped_poses": skipped_poses},
        "settings": {
            "feature_dims": dims,
            "preprocess": ev.preprocess,
            "kid_subsets": ev.kid_subsets,
            "kid_subset_size": ev.kid_subset_size,
            "kid_estimator": ev.kid_estimator,
            "kid_seed": config.run.seed,
            "dap_area": ev.dap_area,
            "fg_background": list(BACKGROUND),
            "fg_masks": None if fg_masks is None else fg_masks.name,
            "clip_model": ev.clip_model,
        },
        "metrics": {},
    }
    results = report["metrics"]

    predictions: list[np.ndarray | None] | None = None
    if POSE_METRICS & set(wanted):
        predictions, scores = in_truth_frames(records, detections)
        unreadable = detections.unreadable
        report["generated"]["unreadable"] = unreadable
        readable = [i for i, r in enumerate(records) if str(r["image"]) not in unreadable]
        truths = [records[i]["keypoints"] for i in readable]
        sizes = [(records[i]["width"], records[i]["height"]) for i in readable]
        found = [predictions[i] for i in readable]
        has_scores = any(scores[i] is not None for i in readable)
        poses = pose_metrics.pose_metrics(
            truths, found, sizes, [scores[i] for i in readable] if has_scores else None, ev.dap_area
        )
        results.update({k: v for k, v in poses.items() if k in wanted})
        files.write_jsonl(
            out / "detections.jsonl",
            [
                {"image": str(r["image"]), "keypoints": p, "scores": s}
                for r, p, s in zip(records, predictions, scores, strict=True)
            ],
        )

    if {"fid", "kid", "fid_fg", "kid_fg"} & set(wanted):
        weights = inception.resolve_weights(ev.inception_weights or None)
        model = inception.load_inception(weights, max(dims), device)
        tag = inception.weights_tag(weights)
        report["settings"].update(inception_weights=str(weights), inception_variant=model.variant)

        def real_features(images=None, images_tag: str = "", desc: str = "real features"):
            return inception.cached_tap_features(
                model,
                real_paths,
                dims,
                cache_dir,
                ev.preprocess,
                ev.batch_size,
                tag,
                desc,
                images,
                images_tag,
            )

        if {"fid", "kid"} & set(wanted):
            real_f, _ = real_features()
            fake_f = _tap_features(model, fake_paths, dims, config, "generated")
            fid, kid = fid_kid_by_dim(real_f, fake_f, dims, config)
            results.update({k: v for k, v in (("fid", fid), ("kid", kid)) if k in wanted})
        if {"fid_fg", "kid_fg"} & set(wanted):
            if fg_masks is None:
                skipped = {"skipped": "no person masks given"}
                results.update({k: skipped for k in ("fid_fg", "kid_fg") if k in wanted})
            else:
                real_loaders, real_kept = foreground_loaders(real_paths, fg_masks.real)
                # the images with a mask are part of the key (it is hashed): a mask that comes or goes
                # makes a new set
                real_fg, real_used = real_features(real_loaders, f"fg {fg_masks.tag} {real_kept}", "real fg")
                fake_loaders, _ = foreground_loaders(fake_paths, fg_masks.generated)
                fake_fg = _tap_features(model, fake_loaders, dims, config, "generated fg")
                fid_fg, kid_fg = fid_kid_by_dim(real_fg, fake_fg, dims, config)
                left_out = {
                    "real": len(real_paths) - len(real_used),
                    "generated": len(records) - len(fake_fg[dims[0]]),
                }
                report["fg_left_out"] = left_out
                for key, value in (("fid_fg", fid_fg), ("kid_fg", kid_fg)):
                    if key in wanted:
                        results[key] = {**value, "left_out": left_out}

    if "clipsim" in wanted:
        results["clipsim"] = metrics.clip_similarity(
            fake_paths, [str(r["prompt"]) for r in records], ev.clip_model, str(device), ev.batch_size
        )

    files.write_json(out / "report.json", report)
    n = min(ev.grid_images, len(records))
    grid = sample_grid(
        records[:n],
        None if predictions is None else predictions[:n],
        None if fg_masks is None else fg_masks.generated[:n],
    )
    files.save_image(out / "samples.png", grid)
    files.write_text(out / "report.md", markdown(report))
    log.info("two-stage report: %s", out / "report.json")
    return report


def _overlay(cell: np.ndarray, pose: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """The cell with the pose's OpenPose skeleton drawn over it."""
    from handsynth.twostage.data.skeleton import draw_openpose

    scaled = pose.copy()
    scaled[:, 0] *= scale[0]
    scaled[:, 1] *= scale[1]
    skeleton = draw_openpose(scaled, cell.shape[1], cell.shape[0])
    drawn = skeleton.any(axis=2)
    out = cell.copy()
    out[drawn] = skeleton[drawn]
    return out


def sample_grid(
    records: Sequence[dict],
    predictions: Sequence[np.ndarray | None] | None = None,
    masks: Sequence[MaskSource] | None = None,
) -> Image.Image:
    """One column per sample: the ground-truth pose over the image; with `predictions`, the detected pose
    over it (the image darkened when nothing was detected); with `masks` (one per record), the image
    without its background (all black: no mask)."""
    rows = 1 + (predictions is not None) + (masks is not None)
    grid = Image.new("RGB", (max(len(records), 1) * GRID_CELL, rows * GRID_CELL), (24, 24, 24))
    for col, record in enumerate(records):
        try:
            rgb = files.load_rgb(record["image"])
        except HandsynthError as exc:
            log.warning("grid: %s", exc)
            continue
        h, w = rgb.shape[:2]
        size = (
            (GRID_CELL, max(1, round(GRID_CELL * h / w)))
            if w >= h
            else (max(1, round(GRID_CELL * w / h)), GRID_CELL)
        )
        cell = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        scale = (size[0] / record["width"], size[1] / record["height"])
        cells = [_overlay(cell, record["keypoints"], scale)]
        if predictions is not None:
            found = predictions[col]
            cells.append(_overlay(cell, found, scale) if found is not None else cell // 3)
        if masks is not None:
            mask = masks[col](rgb) if callable(masks[col]) else masks[col]
            cells.append(np.asarray(Image.fromarray(remove_background(rgb, mask)).resize(size)))
        for row, image in enumerate(cells):
            x = col * GRID_CELL + (GRID_CELL - size[0]) // 2
            grid.paste(Image.fromarray(image), (x, row * GRID_CELL + (GRID_CELL - size[1]) // 2))
    return grid


def headline(report: dict) -> dict[str, float | None]:
    """One number per metric: the keys of seed 004's Table I."""
    fields = {"fid": "value", "kid": "mean", "fid_fg": "value", "kid_fg": "mean", "clipsim": "clipsim"}
    m = report["metrics"]
    return {key: m[key].get(fields.get(key, "value")) for key in TWOSTAGE_METRICS if key in m}


def left_out_text(left_out: dict) -> str:
    return f"{left_out['real']} real, {left_out['generated']} generated"


def markdown(report: dict) -> str:
    m, real = report["metrics"], report["real"]
    skipped = report["generated"].get("skipped_poses", 0)  # absent from reports written before
    rows = []
    for key, label in (("dap", "DAP"), ("dap_hands", "DAP hands")):
        if key in m:
            r = m[key]
            rows.append(
                (label, format_value(r["value"], 3), f"{r['predictions']} detections / {r['images']} poses")
            )
    for key, label in (("mpjpe", "MPJPE"), ("mpjpe_hands", "MPJPE hands")):
        if key in m:
            r = m[key]
            rate = f"detection rate {format_value(r['detection_rate'], 3)}"
            keypoints = f"keypoint rate {format_value(r['keypoint_rate'], 3)}"
            rows.append((label, format_value(r["value"]), f"{rate}, {keypoints}"))
    for key, label in (("fid", "FID"), ("fid_fg", "FID fg"), ("kid", "KID"), ("kid_fg", "KID fg")):
        if key not in m:
            continue
        r = m[key]
        if skipped := not_computed(label, r):
            rows.append(skipped)
            continue
        if key.startswith("fid"):
            value = format_value(r["value"], 3)
        else:
            value = f"{format_value(r['mean'])} ± {format_value(r['std'])}"
        others = ", ".join(
            f"{d}-d {format_value(v if key.startswith('fid') else v['mean'])}" for d, v in r["by_dim"].items()
        )
        counts = f"{r['real']} real / {r['generated']} generated; {others}"
        if "left_out" in r:
            counts += f"; without a person mask, left out: {left_out_text(r['left_out'])}"
        rows.append((f"{label} ({r['feature_dim']}-d)", value, counts))
    if "clipsim" in m:
        r = m["clipsim"]
        rows.append(("CLIPSIM", format_value(r["clipsim"], 2), f"{r['pairs']} pairs, {r['model']}"))
    lines = [
        "# Evaluation: two-stage method",
        "",
        f"Real: {real['images']} '{real['split']}' images from `{real['manifest']}`  ",
        f"Generated: {report['generated']['images']} images"
        + (f"; {skipped} poses skipped, records.jsonl says why" if skipped else ""),
        "",
        "| metric | value | counts |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()),
        "",
        "Per sample, top to bottom: the ground-truth pose; the detected pose (darkened: none found); "
        "the image without its background (with person masks; black: no mask).",
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------- generated folders, real detectors

FG_MASKS = ("holistic", "sam")


def _has_body(pose: np.ndarray) -> bool:
    """The pose has a present body or feet keypoint: what SAM's person prompt is made of."""
    return bool((pose[BODY, 2] > 0).any() or (pose[FEET, 2] > 0).any())


def _sam_mask(sam: Any, pose: np.ndarray, width: int, height: int, name: str, keep: bool) -> Callable:
    """A function of the image: SAM's person mask prompted with `pose`, given in a width x height frame.
    With `keep`, the mask is kept for a second call (the sample grid's images), which then costs no SAM
    run."""
    kept: list[np.ndarray] = []

    def make(rgb: np.ndarray) -> np.ndarray:
        if kept:
            return kept[0]
        scaled = pose.copy()
        scaled[:, 0] *= rgb.shape[1] / width
        scaled[:, 1] *= rgb.shape[0] / height
        mask = sam.segment_person(rgb, scaled, name=name)
        if keep:
            kept.append(mask)
        return mask

    return make


def holistic_masks(run: PoseRun, paths: Sequence[Path]) -> list[Path | None]:
    """Holistic's person mask of each image, kept by the pose extraction, or None (no body found)."""
    masks: list[Path | None] = []
    for path in paths:
        found = run.poses.get(Path(path))
        mask = None if found is None or not found["body"] else run.cache.person_mask_path(found["sha256"])
        masks.append(mask if mask is not None and mask.is_file() else None)
    return masks


def person_masks(
    config: Config,
    records: Sequence[dict],
    real_rows: Sequence[dict],
    real_paths: Sequence[Path],
    generated: PoseRun | None,
    progress: bool = True,
) -> FgMasks:
    """The fg metrics' person masks (TWOSTAGE.md §10), prompted with the known pose where a model can be
    prompted: `evaluate.fg_masks = "sam"`, SAM with the ground-truth pose of a real image and the pose a
    generated one was made from; "holistic", Holistic's segmentation of each image (of the generated
    ones from `generated`, the evaluation's one pose extraction). No body, no mask."""
    kind = config.evaluate.fg_masks
    if kind not in FG_MASKS:
        raise HandsynthError(f"evaluate.fg_masks must be one of {', '.join(FG_MASKS)}, got '{kind}'")
    if kind == "holistic":
        real = detect_poses(
            list(real_paths), _pose_cache(config), config.pose.workers, True, progress, "real images"
        )
        return FgMasks(
            "holistic segmentation",
            holistic_masks(real, real_paths),
            holistic_masks(generated, [Path(r["image"]) for r in records]),
            f"holistic {settings_tag()}",
        )
    from handsynth.perception.sam import SamSegmenter

    model = config.pose.sam_model
    if not model:
        raise HandsynthError('evaluate.fg_masks = "sam" needs pose.sam_model (a SAM id or folder)')
    sam = SamSegmenter.from_pretrained(model, config.run.device, config_key="pose.sam_model")

    def masks(items: Sequence[dict], names: Sequence[Any], shown: int = 0) -> list[Callable | None]:
        out: list[Callable | None] = []
        for i, (item, name) in enumerate(zip(items, names, strict=True)):
            pose = check_pose(np.asarray(item["keypoints"], dtype=np.float32), f"known pose of {name}")
            if not _has_body(pose):
                out.append(None)
                continue
            out.append(_sam_mask(sam, pose, item["width"], item["height"], str(name), keep=i < shown))
        return out

    real_poses = [np.asarray(row["keypoints"], dtype=np.float32).round(3).tolist() for row in real_rows]
    return FgMasks(
        f"SAM ({model}) prompted with the known body pose",
        masks(real_rows, real_paths),
        masks(records, [r["image"] for r in records], config.evaluate.grid_images),
        f"sam {model} {files.folder_stamp(model) if Path(model).is_dir() else ''} {real_poses}",
    )


def _pose_cache(config: Config) -> Path:
    """The evaluation's pose and person-mask cache, beside its feature cache."""
    return Path(config.evaluate.cache_dir or Path(config.run.output_dir) / "cache") / "poses"


def read_samples(samples_dir: str | os.PathLike) -> list[dict]:
    """The records of a `handsynth twostage generate` folder, image paths made whole; a skipped pose's
    record has no image and says why under "skipped"."""
    samples_dir = Path(samples_dir)
    path = samples_dir / "records.jsonl"
    if not path.is_file():
        raise HandsynthError(
            f"no records.jsonl in {samples_dir}; make the images with `handsynth twostage generate`"
        )
    records = files.read_jsonl(path, torn_end_ok=True)
    return [{**r, "image": str(samples_dir / r["image"])} if "image" in r else r for r in records]


def evaluate_samples(
    config: Config,
    samples_dir: str | os.PathLike,
    real_manifest: str | os.PathLike,
    out: str | os.PathLike,
    wanted: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """`evaluate_twostage` of a generated folder (of its poses in `keys` only, when given). MediaPipe
    Holistic (hands filled from Hands) runs once per image, in `pose.workers` processes and cached by
    content (twostage.data.extract): its pose feeds DAP and MPJPE, its segmentation the "holistic" fg
    masks, and both the sample grid. A full-image real set (YouTube-ASL) gets no fg metrics."""
    wanted = scored_metrics(wanted or config.evaluate.twostage_metrics, real_manifest)
    check_twostage_settings(config, wanted)
    records = read_samples(samples_dir)
    if keys is not None:
        chosen = set(keys)
        records = [r for r in records if r["key"] in chosen]
    made = check_records([r for r in records if "skipped" not in r])
    need_masks = bool({"fid_fg", "kid_fg"} & set(wanted))
    holistic = need_masks and config.evaluate.fg_masks == "holistic"
    detections = run = None
    if POSE_METRICS & set(wanted) or holistic:
        paths = [Path(r["image"]) for r in made]
        run = detect_poses(paths, _pose_cache(config), config.pose.workers, holistic, progress, "generated")
        unreadable = {str(p): e for p, e in run.unreadable.items()}
        unreadable.update({str(p): "missing" for p in run.missing})
        detections = Detections([run.poses.get(p) for p in paths], unreadable)
    fg = None
    if need_masks:
        from handsynth.twostage.data.dataset import read_image_rows

        manifest, rows = read_image_rows(real_manifest, "test")
        real_paths = [manifest.parent / row["image"] for row in rows]
        fg = person_masks(config, made, rows, real_paths, run, progress)
    skipped = len(records) - len(made)
    return evaluate_twostage(config, made, real_manifest, out, detections, fg, wanted, skipped_poses=skipped)
