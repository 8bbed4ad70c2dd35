"""`handsynth evaluate`: FID, KID, FID-H, KID-H, HAND-CONF, CLIPSIM and gesture accuracy of samples.

Inputs:
- real: a dataset folder (`test.jsonl`, filtered by gesture) or any folder of images;
- generated: a samples folder (`<samples>/<gesture>/images` + `records.jsonl`, whose prompts feed
  CLIPSIM) or any folder of images.
Output, per gesture in `<out>/<gesture>/` (or `<out>/` without a gesture): `report.json` (every
metric, its settings and the counts behind it), `report.md` (the metric table) and `samples.png`
(real and generated samples with the detected landmarks drawn), plus the resolved `config.toml`.
Inception features of every image set are cached in `evaluate.cache_dir`, keyed by the files and
settings, so evaluating a second model against the same real set re-reads none of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from handsynth import files
from handsynth.config import Config
from handsynth.data.gestures import PHRASE_TEMPLATES
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics
from handsynth.evaluation.common import check_shared_settings, format_value, not_computed

log = logging.getLogger(__name__)

ALL_METRICS = ("fid", "kid", "fid_h", "kid_h", "hand_conf", "clipsim", "gesture_accuracy")
INCEPTION_METRICS = {"fid", "kid", "fid_h", "kid_h"}
GRID_CELL = 160


def real_images(source: str | Path, gesture: str | None = None) -> list[Path]:
    """Real image paths: a dataset's `test.jsonl` (filtered by gesture) or every image under a folder."""
    source = Path(source)
    manifest = source / "test.jsonl" if source.is_dir() else source
    if manifest.suffix == ".jsonl" and manifest.is_file():
        records = files.read_jsonl(manifest)
        if gesture:
            records = [r for r in records if r.get("gesture") == gesture]
        paths = [manifest.parent / r["image"] for r in records if r.get("image")]
    elif source.is_dir():
        paths = files.image_files(source)
    else:
        raise HandsynthError(f"real images not found: {source} is neither a dataset folder nor a folder")
    if not paths:
        what = f" for gesture '{gesture}'" if gesture else ""
        raise HandsynthError(f"no real images{what} in {source}; check the path and --gesture")
    return paths


def generated_images(source: str | Path, gesture: str | None = None) -> tuple[list[Path], list[str] | None]:
    """(paths, prompts or None) of generated images.

    A samples folder: `<source>/<gesture>/records.jsonl`, or without a gesture every
    `<source>/*/records.jsonl` (prompts known; records whose file is missing are skipped and logged).
    Any other folder: every image under it (or under its `images/`), prompts unknown.
    A named gesture takes only `<source>/<gesture>/` when `<source>` holds per-gesture folders: when
    that one is missing, the other gestures' samples are not used in its place; it is an error.
    """
    source = Path(source)
    if gesture and (source / gesture).is_dir():
        source = source / gesture
    if (source / "records.jsonl").is_file():
        folders = [source]
    else:
        folders = sorted(p.parent for p in source.glob("*/records.jsonl"))
        if gesture:
            named = {p.name for p in source.glob("*") if p.is_dir() and p.name in PHRASE_TEMPLATES}
            if others := sorted({f.name for f in folders} | named):
                raise HandsynthError(
                    f"{source} has no samples of gesture '{gesture}' (no folder {source / gesture}); it has "
                    f"samples of: {', '.join(others)}. Make them with `handsynth generate --gesture "
                    f"{gesture}`, or pass --generated the folder that holds that gesture's samples"
                )
    if folders:
        paths: list[Path] = []
        prompts: list[str] | None = []
        for folder in folders:
            records = files.read_jsonl(folder / "records.jsonl", torn_end_ok=True)
            kept = [r for r in records if (folder / r.get("file", "")).is_file()]
            if len(kept) < len(records):
                log.warning("%s: %d records without an image file", folder, len(records) - len(kept))
            paths += [folder / r["file"] for r in kept]
            prompts += [str(r.get("prompt", "")) for r in kept]
    elif source.is_dir():
        images = source / "images"
        paths, prompts = files.image_files(images if images.is_dir() else source), None
    else:
        raise HandsynthError(f"generated images not found: {source}")
    if not paths:
        raise HandsynthError(f"no generated images in {source}; run `handsynth generate` first")
    return paths, prompts


def _crop_features(
    model: inception.InceptionV3,
    paths: Sequence[Path],
    cache_dir: Path,
    config: Config,
    weights_tag: str,
    name: str,
) -> tuple[np.ndarray, dict]:
    """Inception features of the hand crops of `paths`, and the crop counts; cached like full images."""
    ev = config.evaluate
    settings = {
        "crop": ev.hand_crop,
        "margin": ev.hand_crop_margin,
        "preprocess": ev.preprocess,
        "input_norm": model.input_norm,
        "feature_dim": model.feature_dim,
        "variant": model.variant,
        "weights": weights_tag,
    }
    key = inception.fingerprint(paths, settings)
    cache = cache_dir / f"hand-crops-{ev.hand_crop}-{model.feature_dim}-{ev.preprocess}-{key}.npz"

    def compute() -> dict[str, np.ndarray]:
        crops, stats = metrics.hand_crops(paths, ev.hand_crop, ev.hand_crop_margin, desc=f"{name} hand crops")
        feats, _ = inception.extract_features(
            model, crops, ev.preprocess, ev.batch_size, desc=f"{name} crop features"
        )
        return {"features": feats, "stats": np.array(json.dumps(stats))}

    data = inception.cached_npz(cache, compute)
    return data["features"], json.loads(str(data["stats"]))


def _fid_kid(real: np.ndarray, fake: np.ndarray, config: Config, wanted: set[str], suffix: str) -> dict:
    out: dict[str, Any] = {}
    ev = config.evaluate
    for name in ("fid", "kid"):
        key = name + suffix
        if key not in wanted:
            continue
        if min(len(real), len(fake)) < 2:
            out[key] = {
                "skipped": f"needs 2+ feature vectors per set, got {len(real)} real, {len(fake)} generated"
            }
        elif name == "fid":
            out[key] = {
                "value": metrics.fid_from_features(real, fake),
                "real": len(real),
                "generated": len(fake),
            }
        else:
            result = metrics.kid(
                real, fake, ev.kid_subsets, ev.kid_subset_size, ev.kid_estimator, seed=config.run.seed
            )
            out[key] = {**result, "real": len(real), "generated": len(fake)}
    return out


def check_evaluate_settings(config: Config) -> None:
    """Fail before any image is read, naming the config key."""
    check_shared_settings(config)
    ev = config.evaluate
    unknown = set(ev.metrics) - set(ALL_METRICS)
    checks = [
        (not unknown, f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}"),
        (ev.feature_dim in inception.TAPS, f"evaluate.feature_dim must be one of {inception.TAPS}"),
        (
            ev.hand_crop in metrics.HAND_CROP_MODES,
            f"evaluate.hand_crop must be one of {metrics.HAND_CROP_MODES}",
        ),
        (ev.hand_crop_margin >= 0, "evaluate.hand_crop_margin must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise HandsynthError(message)


def evaluate(
    config: Config,
    real: str | Path,
    generated: str | Path,
    out: str | Path,
    gesture: str | None = None,
) -> dict:
    """Every metric in `config.evaluate.metrics` for one real/generated pair; writes the report files."""
    from handsynth.hub import resolve_device

    ev = config.evaluate
    wanted = set(ev.metrics)
    check_evaluate_settings(config)
    out = Path(out)
    real_paths = real_images(real, gesture)
    fake_paths, prompts = generated_images(generated, gesture)
    cache_dir = Path(ev.cache_dir or Path(config.run.output_dir) / "cache")
    device = resolve_device(config.run.device)
    report: dict[str, Any] = {
        "gesture": gesture,
        "real": {"source": str(real), "images": len(real_paths)},
        "generated": {"source": str(generated), "images": len(fake_paths), "prompts": prompts is not None},
        "settings": {
            "preprocess": ev.preprocess,
            "feature_dim": ev.feature_dim,
            "kid_subsets": ev.kid_subsets,
            "kid_subset_size": ev.kid_subset_size,
            "kid_estimator": ev.kid_estimator,
            "kid_seed": config.run.seed,
            "hand_crop": ev.hand_crop,
            "hand_crop_margin": ev.hand_crop_margin if ev.hand_crop == "per-hand" else 0.0,
            "clip_model": ev.clip_model,
        },
        "metrics": {},
    }
    results = report["metrics"]

    if wanted & INCEPTION_METRICS:
        weights = inception.resolve_weights(ev.inception_weights or None)
        model = inception.load_inception(weights, ev.feature_dim, device)
        tag = inception.weights_tag(weights)
        report["settings"].update(
            inception_weights=str(weights), inception_variant=model.variant, input_norm=model.input_norm
        )
        if wanted & {"fid", "kid"}:
            real_f = inception.cached_features(
                model, real_paths, cache_dir, ev.preprocess, ev.batch_size, tag, "real features"
            )
            fake_f = inception.cached_features(
                model, fake_paths, cache_dir, ev.preprocess, ev.batch_size, tag, "generated features"
            )
            results.update(_fid_kid(real_f["features"], fake_f["features"], config, wanted, ""))
        if wanted & {"fid_h", "kid_h"}:
            real_h, real_stats = _crop_features(model, real_paths, cache_dir, config, tag, "real")
            fake_h, fake_stats = _crop_features(model, fake_paths, cache_dir, config, tag, "generated")
            for key, value in _fid_kid(real_h, fake_h, config, wanted, "_h").items():
                results[key] = {**value, "real_crops": real_stats, "generated_crops": fake_stats}

    if "hand_conf" in wanted:
        results["hand_conf"] = metrics.hand_confidence(fake_paths)
    if "gesture_accuracy" in wanted:
        if gesture:
            accuracy = metrics.gesture_accuracy(fake_paths, gesture)
            accuracy["labels"] = {Path(k).name: v for k, v in accuracy["labels"].items()}
            results["gesture_accuracy"] = accuracy
        else:
            results["gesture_accuracy"] = {"skipped": "no target gesture (pass --gesture)"}
    if "clipsim" in wanted:
        if prompts is None:
            results["clipsim"] = {"skipped": "generated folder has no records.jsonl with prompts"}
        else:
            results["clipsim"] = metrics.clip_similarity(
                fake_paths, prompts, ev.clip_model, device=str(device), batch_size=ev.batch_size
            )

    files.write_json(out / "report.json", report)
    grid = _sample_grid(real_paths[: ev.grid_images], fake_paths[: ev.grid_images])
    files.save_image(out / "samples.png", grid)
    files.write_text(out / "report.md", _markdown(report))
    log.info("report: %s", out / "report.json")
    return report


def _draw_landmarks(rgb: np.ndarray, detection) -> Image.Image:
    from handsynth.perception.hands import import_mediapipe

    mp = import_mediapipe()

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    radius = max(2, round(min(w, h) / 150))
    for hand in detection.hands:
        points = [(x * w, y * h) for x, y in hand.landmarks[:, :2]]
        for a, b in mp.solutions.hands.HAND_CONNECTIONS:
            draw.line([points[a], points[b]], fill=(255, 255, 255), width=max(1, radius // 2))
        for x, y in points:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 48, 48))
    return image


def _sample_grid(real: Sequence[Path], fake: Sequence[Path]) -> Image.Image:
    """Two rows: real samples above, generated below, each with its FID-H-setting landmarks drawn."""
    from handsynth.files import load_rgb
    from handsynth.perception.hands import FID_H, HandDetector

    columns = max(len(real), len(fake), 1)
    grid = Image.new("RGB", (columns * GRID_CELL, 2 * GRID_CELL), (24, 24, 24))
    with HandDetector(**FID_H) as detector:
        for row, paths in enumerate((real, fake)):
            for col, path in enumerate(paths):
                try:
                    rgb = load_rgb(path)
                except HandsynthError as exc:
                    log.warning("grid: %s", exc)
                    continue
                detection = detector.detect(rgb)
                # fit the cell both ways (64 px samples grow), then draw the normalised landmarks
                fitted = ImageOps.contain(
                    Image.fromarray(rgb), (GRID_CELL, GRID_CELL), Image.Resampling.LANCZOS
                )
                cell = _draw_landmarks(np.asarray(fitted), detection)
                grid.paste(cell, (col * GRID_CELL + (GRID_CELL - cell.width) // 2, row * GRID_CELL))
    return grid


def _markdown(report: dict) -> str:
    m = report["metrics"]
    rows = []  # a skipped metric: "not computed" and why (its other fields are absent)
    for key, label in (("fid", "FID"), ("fid_h", "FID-H")):
        if key in m:
            r = m[key]
            rows.append(
                not_computed(label, r)
                or (label, format_value(r["value"], 3), f"{r['real']} real / {r['generated']} generated")
            )
    for key, label in (("kid", "KID"), ("kid_h", "KID-H")):
        if key in m:
            r = m[key]
            rows.append(
                not_computed(label, r)
                or (
                    label,
                    f"{format_value(r['mean'])} ± {format_value(r['std'])}",
                    f"{r['subsets']} subsets of {r['subset_size']}, {r['estimator']}",
                )
            )
    if "hand_conf" in m:
        r = m["hand_conf"]
        rows.append(
            (
                "HAND-CONF",
                format_value(r["hand_conf"]),
                f"{r['hands']} hands; detection rate {format_value(r['detection_rate'], 3)}",
            )
        )
    if "clipsim" in m:
        r = m["clipsim"]
        rows.append(
            not_computed("CLIPSIM", r)
            or ("CLIPSIM", format_value(r["clipsim"], 2), f"{r['pairs']} pairs, {r['model']}")
        )
    if "gesture_accuracy" in m:
        r = m["gesture_accuracy"]
        rows.append(
            not_computed("gesture accuracy", r)
            or (
                "gesture accuracy",
                format_value(r["accuracy"], 3),
                f"{r['correct']}/{r['images']} correct, {r['no_hand']} without hand",
            )
        )
    title = f"gesture `{report['gesture']}`" if report["gesture"] else "all images"
    lines = [
        f"# Evaluation: {title}",
        "",
        f"Real: {report['real']['images']} images from `{report['real']['source']}`  ",
        f"Generated: {report['generated']['images']} images from `{report['generated']['source']}`",
        "",
        "| metric | value | counts |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()),
        "",
        "Top row real, bottom row generated; landmarks as detected for FID-H (2 hands, confidence 0.5).",
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(lines)


def headline(report: dict) -> dict[str, float | None]:
    """One number per metric, for logs and the multi-gesture summary."""
    m, out = report["metrics"], {}
    for key, field in (
        ("fid", "value"),
        ("kid", "mean"),
        ("fid_h", "value"),
        ("kid_h", "mean"),
        ("hand_conf", "hand_conf"),
        ("clipsim", "clipsim"),
        ("gesture_accuracy", "accuracy"),
    ):
        if key in m:
            out[key] = m[key].get(field)
    return out
