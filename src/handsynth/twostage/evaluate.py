"""The two-stage method's evaluation (seed 004 §IV-C, Table I): DAP, DAP-hands, MPJPE, MPJPE-hands, FID
and KID at several Inception taps, their "fg" variants on images with the background removed, CLIPSIM.

Inputs:
- `records`: one dict per generated image: {"image": path, "prompt", "keypoints": 133 x [x, y, v] (the
  ground-truth pose it was generated from), "width", "height" (the pose's frame)}, optional "key";
- `real_manifest`: the two-stage dataset's `images.jsonl`; its `split` rows are the real image set;
- `detector(rgb) -> None | pose (133, 3) | (pose, scores (133,))`, in the pixels of the image it was
  given (MediaPipe Holistic in practice); detections are rescaled to the ground truth's frame;
- `segmenter(rgb) -> person mask (H, W) or None` (Holistic's segmentation, or SAM), for the fg metrics.

The same segmenter removes the background of the real and the generated images, so both sets carry the
same mask errors. The background becomes black. An image where no person is found is all background:
for a generated image that is a failure the fg metrics should see.

Output in `out`: `report.json` (every metric with its counts and settings), `report.md` (the table),
`samples.png` (each generated sample with the ground-truth pose, with the detected pose and, with a
segmenter, without its background) and `detections.jsonl` (the detected pose of every image).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics, pose_metrics
from handsynth.evaluation.common import check_shared_settings, format_value
from handsynth.perception.wholebody import check_pose

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
BACKGROUND = (0, 0, 0)
GRID_CELL = 160  # px per sample in samples.png, as Hand1000's evaluation grid

Detector = Callable[[np.ndarray], Any]
Segmenter = Callable[[np.ndarray], Any]


def person_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A (H, W) bool person mask from a bool array, an integer array or PNG path (nonzero: person, so
    0/1 and 0/255 masks both work), or a float array (> 0.5: person); None is an empty mask."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, str | os.PathLike):
        try:
            with Image.open(mask) as image:
                mask = np.asarray(image.convert("L"))
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
    masks: Sequence[Any] | Segmenter,
    background: tuple[int, int, int] = BACKGROUND,
    without_person: list[int] | None = None,
) -> list[Callable[[], np.ndarray]]:
    """One function per image that reads it, takes its mask (from `masks`, a sequence of masks or mask
    PNGs, or by calling `masks` as a segmenter on the image) and returns it with the background removed.

    Inception reads the functions one batch at a time, so the images are never all in memory. The index
    of every image whose mask holds no person is appended to `without_person`.
    """
    segmenter = masks if callable(masks) else None
    if segmenter is None and len(masks) != len(images):
        raise HandsynthError(f"foreground: {len(images)} images but {len(masks)} masks")

    def loader(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            item = images[i]
            is_file = isinstance(item, str | os.PathLike)
            rgb = files.load_rgb(item) if is_file else np.asarray(item)
            name = str(item) if is_file else f"image {i}"
            mask = person_mask(segmenter(rgb) if segmenter else masks[i], rgb.shape[:2], name)
            if without_person is not None and not mask.any():
                without_person.append(i)
            return remove_background(rgb, mask, background, name)

        return load

    return [loader(i) for i in range(len(images))]


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


def real_image_paths(manifest: str | os.PathLike, split: str = "test") -> list[Path]:
    """The images of `split` in a two-stage `images.jsonl` (or its folder), as paths."""
    from handsynth.twostage.data.dataset import read_image_rows

    manifest, rows = read_image_rows(manifest, split)
    return [manifest.parent / row["image"] for row in rows]


def _detected(output: Any, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The detector's answer as (pose, scores): None, a pose, or a (pose, scores) pair."""
    if output is None:
        return None, None
    pose, scores = output if isinstance(output, tuple) else (output, None)
    if pose is None:
        return None, None
    return check_pose(pose, f"pose detected on {name}").copy(), scores


def detect_poses(
    records: Sequence[dict], detector: Detector
) -> tuple[list[np.ndarray | None], list[np.ndarray | None], dict[str, str]]:
    """(predictions in each record's frame, their scores, {image: reason} of unreadable images); an
    unreadable image gets None in both lists."""
    predictions: list[np.ndarray | None] = []
    scores: list[np.ndarray | None] = []
    unreadable: dict[str, str] = {}
    for record in tqdm(records, desc="detecting poses", unit="img"):
        try:
            rgb = files.load_rgb(record["image"])
        except HandsynthError as exc:
            log.warning("skipped: %s", exc)
            unreadable[str(record["image"])] = str(exc)
            predictions.append(None)
            scores.append(None)
            continue
        pose, score = _detected(detector(rgb), str(record["image"]))
        if pose is not None:
            height, width = rgb.shape[:2]
            pose[:, 0] *= record["width"] / width
            pose[:, 1] *= record["height"] / height
        predictions.append(pose)
        scores.append(None if score is None else np.asarray(score, dtype=np.float64))
    return predictions, scores, unreadable


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


def _name(segmenter: Segmenter | None) -> str | None:
    if segmenter is None:
        return None
    return getattr(segmenter, "name", getattr(segmenter, "__name__", type(segmenter).__name__))


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
    detector: Detector | None,
    segmenter: Segmenter | None = None,
    wanted: Sequence[str] = TWOSTAGE_METRICS,
    split: str = "test",
    skipped_poses: int = 0,
) -> dict:
    """Every metric in `wanted` for one set of generated images; writes the report files (module
    docstring) and returns the report. `skipped_poses`: the poses generation skipped (no image),
    counted in the report. Inception features of the real images are cached in
    `evaluate.cache_dir`; the fg features are made afresh, from the segmenter's masks. A segmenter may
    have a `name`, recorded in the settings."""
    from handsynth.hub import resolve_device

    ev = config.evaluate
    dims = check_twostage_settings(config, wanted)
    if detector is None and POSE_METRICS & set(wanted):
        raise HandsynthError("DAP and MPJPE need a pose detector; pass one, or leave them out of the metrics")
    records = check_records(records)
    real_paths = real_image_paths(real_manifest, split)
    fake_paths = [Path(r["image"]) for r in records]
    out = Path(out)
    device = resolve_device(config.run.device)
    report: dict[str, Any] = {
        "method": "twostage",
        "real": {"manifest": str(real_manifest), "split": split, "images": len(real_paths)},
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
            "segmenter": _name(segmenter),
            "clip_model": ev.clip_model,
        },
        "metrics": {},
    }
    results = report["metrics"]

    predictions: list[np.ndarray | None] | None = None
    if POSE_METRICS & set(wanted):
        predictions, scores, unreadable = detect_poses(records, detector)
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
        report["settings"].update(inception_weights=str(weights), inception_variant=model.variant)
        if {"fid", "kid"} & set(wanted):
            cache_dir = Path(ev.cache_dir or Path(config.run.output_dir) / "cache")
            tag = inception.weights_tag(weights)
            real_f, _ = inception.cached_tap_features(
                model, real_paths, dims, cache_dir, ev.preprocess, ev.batch_size, tag, "real features"
            )
            fake_f = _tap_features(model, fake_paths, dims, config, "generated")
            fid, kid = fid_kid_by_dim(real_f, fake_f, dims, config)
            results.update({k: v for k, v in (("fid", fid), ("kid", kid)) if k in wanted})
        if {"fid_fg", "kid_fg"} & set(wanted):
            if segmenter is None:
                skipped = {"skipped": "no person segmenter given"}
                results.update({k: skipped for k in ("fid_fg", "kid_fg") if k in wanted})
            else:
                real_empty: list[int] = []
                fake_empty: list[int] = []
                real_fg = _tap_features(
                    model,
                    foreground_loaders(real_paths, segmenter, without_person=real_empty),
                    dims,
                    config,
                    "real fg",
                )
                fake_fg = _tap_features(
                    model,
                    foreground_loaders(fake_paths, segmenter, without_person=fake_empty),
                    dims,
                    config,
                    "generated fg",
                )
                fid_fg, kid_fg = fid_kid_by_dim(real_fg, fake_fg, dims, config)
                masks = {"real_without_person": len(real_empty), "generated_without_person": len(fake_empty)}
                for key, value in (("fid_fg", fid_fg), ("kid_fg", kid_fg)):
                    if key in wanted:
                        results[key] = {**value, "masks": masks}

    if "clipsim" in wanted:
        results["clipsim"] = metrics.clip_similarity(
            fake_paths, [str(r["prompt"]) for r in records], ev.clip_model, str(device), ev.batch_size
        )

    files.write_json(out / "report.json", report)
    n = min(ev.grid_images, len(records))
    grid = sample_grid(records[:n], None if predictions is None else predictions[:n], segmenter)
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
    segmenter: Segmenter | None = None,
) -> Image.Image:
    """One column per sample: the ground-truth pose over the image; with `predictions`, the detected pose
    over it (the image darkened when nothing was detected); with a segmenter, the image without its
    background."""
    rows = 1 + (predictions is not None) + (segmenter is not None)
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
        if segmenter is not None:
            cells.append(np.asarray(Image.fromarray(remove_background(rgb, segmenter(rgb))).resize(size)))
        for row, image in enumerate(cells):
            x = col * GRID_CELL + (GRID_CELL - size[0]) // 2
            grid.paste(Image.fromarray(image), (x, row * GRID_CELL + (GRID_CELL - size[1]) // 2))
    return grid


def headline(report: dict) -> dict[str, float | None]:
    """One number per metric: the keys of seed 004's Table I."""
    fields = {"fid": "value", "kid": "mean", "fid_fg": "value", "kid_fg": "mean", "clipsim": "clipsim"}
    m = report["metrics"]
    return {key: m[key].get(fields.get(key, "value")) for key in TWOSTAGE_METRICS if key in m}


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
        if "skipped" in r:
            rows.append((label, r["skipped"], ""))
            continue
        if key.startswith("fid"):
            value = format_value(r["value"], 3)
        else:
            value = f"{format_value(r['mean'])} ± {format_value(r['std'])}"
        others = ", ".join(
            f"{d}-d {format_value(v if key.startswith('fid') else v['mean'])}" for d, v in r["by_dim"].items()
        )
        rows.append(
            (
                f"{label} ({r['feature_dim']}-d)",
                value,
                f"{r['real']} real / {r['generated']} generated; {others}",
            )
        )
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
        "the image without its background (with a segmenter).",
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------- generated folders, real detectors

FG_MASKS = ("holistic", "sam")


class PersonMasks:
    """The fg metrics' segmenter: Holistic's person mask, or SAM prompted with Holistic's body pose."""

    def __init__(self, detector: Any, kind: str, sam_model: str = "", device: str = "auto") -> None:
        if kind not in FG_MASKS:
            raise HandsynthError(f"evaluate.fg_masks must be one of {', '.join(FG_MASKS)}, got '{kind}'")
        self.detector = detector
        self.sam = None
        self.name = "holistic segmentation"
        if kind == "sam":
            from handsynth.perception.sam import SamSegmenter

            if not sam_model:
                raise HandsynthError('evaluate.fg_masks = "sam" needs pose.sam_model (a SAM id or folder)')
            self.sam = SamSegmenter.from_pretrained(sam_model, device, config_key="pose.sam_model")
            self.name = f"SAM ({sam_model}) prompted with Holistic's body"

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        if self.sam is None:
            return self.detector.person_mask(rgb)
        found = self.detector.pose_and_scores(rgb)
        if found is None or not (found[0][:23, 2] > 0).any():
            return None
        return self.sam.segment_person(rgb, found[0])


def read_samples(samples_dir: str | os.PathLike) -> list[dict]:
    """The records of a `handsynth twostage generate` folder, image paths made whole; a skipped pose's
    record has no image and says why under "skipped"."""
    samples_dir = Path(samples_dir)
    path = samples_dir / "records.jsonl"
    if not path.is_file():
        raise HandsynthError(
            f"no records.jsonl in {samples_dir}; make the images with `handsynth twostage generate`"
        )
    return [
        {**r, "image": str(samples_dir / r["image"])} if "image" in r else r for r in files.read_jsonl(path)
    ]


def evaluate_samples(
    config: Config,
    samples_dir: str | os.PathLike,
    real_manifest: str | os.PathLike,
    out: str | os.PathLike,
    wanted: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
) -> dict:
    """`evaluate_twostage` of a generated folder (of its poses in `keys` only, when given), with
    MediaPipe Holistic (hands filled from Hands) as the pose detector and `evaluate.fg_masks` for the
    person masks."""
    from handsynth.perception.pose import PoseDetector

    wanted = list(wanted or config.evaluate.twostage_metrics)
    records = read_samples(samples_dir)
    if keys is not None:
        chosen = set(keys)
        records = [r for r in records if r["key"] in chosen]
    made = [r for r in records if "skipped" not in r]
    need_masks = bool({"fid_fg", "kid_fg"} & set(wanted))
    with PoseDetector(segmentation=need_masks and config.evaluate.fg_masks == "holistic") as detector:
        segmenter = None
        if need_masks:
            segmenter = PersonMasks(
                detector, config.evaluate.fg_masks, config.pose.sam_model, config.run.device
            )
        return evaluate_twostage(
            config,
            made,
            real_manifest,
            out,
            detector.pose_and_scores,
            segmenter,
            wanted,
            skipped_poses=len(records) - len(made),
        )
