"""`handsynth data build|evaluate`: a HaGRID-layout folder in, a training-ready dataset folder out.

Steps, each skipping finished work on a re-run:
1. read the annotations (missing images are listed, not fatal);
2. select N train / N test images per gesture, seeded, optionally subject-disjoint; selected images
   that do not decode are reported and replaced by the next candidates;
3. prepare: resize and square-crop to `data.image_size` (`center` as the reference, or `hand`);
4. caption the prepared images (handsynth.data.captioning);
5. rewrite each caption so that it carries its gesture's exact phrase (handsynth.data.rewriting);
6. write `train.jsonl` / `test.jsonl`, the reference code's text files and `report.json`.

The folder layout and manifest keys are the contract in the project notes:
`<dataset>/images/<split>/<gesture>/<key>.jpg`, one JSON object per image in `<split>.jsonl`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.config import Config, save_config
from handsynth.data.gestures import check_gesture
from handsynth.data.hagrid import HagridRecord, check_image, detect_layout, read_hagrid
from handsynth.data.rewriting import Rewrite, rewrite_captions, summarize
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CROP_MODES = ("center", "hand")
# The reference scripts name their text files after the captioner: <g>_BLIP2_file_name.txt, ...
REFERENCE_NAMES = {
    "blip2": "BLIP2",
    "paligemma": "PaliGemma",
    "vitgpt2": "VitGpt2",
    "llava": "LLaVA",
    "metadata": "metadata",
}
JPEG_QUALITY = 95
_LIST_LIMIT = 1000  # missing/corrupt items listed in the report (the counts are always complete)


# ---------------------------------------------------------------- selection


@dataclass
class Selection:
    """One gesture's split: the records, and how many were available to choose from."""

    gesture: str
    train: list[HagridRecord]
    test: list[HagridRecord]
    available: int
    short: bool  # fewer than n_train + n_test were available


def _rank(seed: int, name: str) -> str:
    # A per-item hash instead of a shuffle: dropping one candidate (a corrupt image) leaves the
    # order of all the others, and so the rest of the selection, unchanged.
    return hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()


def split_targets(available: int, n_train: int, n_test: int) -> tuple[int, int]:
    """(train, test) sizes: the requested ones, or `available` split in the same proportion."""
    if available >= n_train + n_test:
        return n_train, n_test
    train = int(available * n_train / max(n_train + n_test, 1) + 0.5)  # half up: a lone image trains
    return train, available - train


def select_gesture(
    records: Sequence[HagridRecord],
    n_train: int,
    n_test: int,
    seed: int = 0,
    subject_disjoint: bool = False,
) -> Selection:
    """A seeded, disjoint train/test selection of one gesture's records.

    Records are ranked by sha256("<seed>/<key>"); the first `n_test` are the test split, the next
    `n_train` the training split. With `subject_disjoint`, whole subjects (user_id) go to one split:
    subjects are taken in seeded order, each into the split furthest from its target, capped there.
    """
    gesture = records[0].gesture if records else ""
    if len({r.key for r in records}) != len(records):
        raise HandsynthError(f"gesture '{gesture}': the annotations list some image key twice")
    target = dict(zip(SPLITS, split_targets(len(records), n_train, n_test), strict=True))
    short = len(records) < n_train + n_test
    if short:
        log.warning(
            "gesture '%s' has %d images, fewer than the %d requested (%d train + %d test); "
            "using %d train / %d test",
            gesture, len(records), n_train + n_test, n_train, n_test, target["train"], target["test"],
        )  # fmt: skip
    ordered = sorted(records, key=lambda r: _rank(seed, r.key))
    chosen: dict[str, list[HagridRecord]] = {s: [] for s in SPLITS}
    if not subject_disjoint:
        # Test first: asking for more training images later extends train and leaves test alone.
        chosen["test"] = ordered[: target["test"]]
        chosen["train"] = ordered[target["test"] : target["test"] + target["train"]]
    else:
        groups: dict[str, list[HagridRecord]] = defaultdict(list)
        for record in ordered:
            # An image without a user_id is its own subject.
            groups[record.user_id or f"key:{record.key}"].append(record)
        for user in sorted(groups, key=lambda u: _rank(seed, f"user/{u}")):
            open_splits = [s for s in SPLITS if len(chosen[s]) < target[s]]
            if not open_splits:
                break
            split = min(open_splits, key=lambda s: len(chosen[s]) / target[s])
            chosen[split].extend(groups[user][: target[split] - len(chosen[split])])
    return Selection(gesture, chosen["train"], chosen["test"], len(records), short)


def select_verified(
    records: Sequence[HagridRecord],
    n_train: int,
    n_test: int,
    seed: int = 0,
    subject_disjoint: bool = False,
    corrupt: dict[str, tuple[str, Path, str]] | None = None,
    trusted: set[str] | frozenset[str] = frozenset(),
) -> Selection:
    """`select_gesture`, with every selected image decoded; unreadable ones go to `corrupt` and the
    next candidates take their place. Keys in `trusted` (already prepared by an earlier run) are
    not decoded again."""
    corrupt = corrupt if corrupt is not None else {}
    checked: set[str] = set(trusted)
    pool = list(records)
    while True:
        selection = select_gesture(pool, n_train, n_test, seed, subject_disjoint)
        todo = [r for r in selection.train + selection.test if r.key not in checked]
        bad = set()
        for record in progress_bar(todo, desc=f"verifying {selection.gesture}", unit="img", leave=False):
            checked.add(record.key)
            error = check_image(record.image_path)
            if error is not None:
                corrupt[record.key] = (record.key, record.image_path, error)
                log.warning("unreadable image %s: %s (%s)", record.key, record.image_path, error)
                bad.add(record.key)
        if not bad:
            return selection
        pool = [r for r in pool if r.key not in bad]


# ---------------------------------------------------------------- preparation


@dataclass(frozen=True)
class CropPlan:
    """Resize the source to `resized` (w, h), then take the square (left, top, side) and resize it
    to the output size if `side` differs."""

    resized: tuple[int, int]
    left: int
    top: int
    side: int
    center_cuts_box: bool  # the reference centre crop would cut the gesture box
    padded: bool  # the box did not fit any square inside the image: the crop extends past it


def _shorter_side_resize(width: int, height: int, size: int) -> tuple[int, int]:
    # torchvision.transforms.Resize(size) on a PIL image (the reference load_img): the long side
    # is truncated, not rounded.
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _place(length: int, side: int, a0: float, a1: float) -> int:
    """Offset of a `side` window on an axis of `length` px holding [a0, a1], nearest the centre."""
    eps = 1e-6
    box_lo, box_hi = math.ceil(a1 - side - eps), math.floor(a0 + eps)  # offsets that hold the box
    img_lo, img_hi = sorted((0, length - side))  # offsets inside the image (or covering all of it)
    lo, hi = max(box_lo, img_lo), min(box_hi, img_hi)
    if lo > hi:  # only within a pixel of an exact fit: hold the box as well as integers allow
        lo, hi = box_lo, box_hi
    return min(max(int(round((length - side) / 2.0)), lo), hi)


def plan_crop(
    width: int, height: int, size: int, box: Sequence[float] | None, mode: str = "center"
) -> CropPlan:
    """Where to crop a `width` x `height` image with gesture `box` ([x, y, w, h] normalised).

    Both modes first resize the shorter side to `size`, as the reference load_img
    (torchvision Resize(size)). `center` then takes the centre square (CenterCrop(size)). `hand`
    takes the square of that size nearest the centre that holds the whole box; when the box is
    longer than the shorter side, the square grows to the box (the part past the image is black)
    and is resized back to `size`.
    """
    if mode not in CROP_MODES:
        raise HandsynthError(f"data.crop must be one of {', '.join(CROP_MODES)}, got '{mode}'")
    rw, rh = _shorter_side_resize(width, height, size)
    # torchvision CenterCrop rounds its offsets with Python's round()
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    if box is None:
        return CropPlan((rw, rh), left, top, size, False, False)
    x0, y0 = box[0] * rw, box[1] * rh
    x1, y1 = x0 + box[2] * rw, y0 + box[3] * rh
    eps = 1e-6
    cuts = x0 < left - eps or y0 < top - eps or x1 > left + size + eps or y1 > top + size + eps
    if mode == "center":
        return CropPlan((rw, rh), left, top, size, cuts, False)
    side = max(size, math.ceil(max(x1 - x0, y1 - y0) - eps))
    return CropPlan((rw, rh), _place(rw, side, x0, x1), _place(rh, side, y0, y1), side, cuts, side > size)


def transform_points(points: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Normalised source (x, y[, z]) to normalised coordinates of the prepared image.

    z (MediaPipe's depth, on the x scale) scales with x.
    """
    points = np.asarray(points, dtype=np.float64)
    out = points.copy()
    out[:, 0] = (points[:, 0] * plan.resized[0] - plan.left) / plan.side
    out[:, 1] = (points[:, 1] * plan.resized[1] - plan.top) / plan.side
    if points.shape[1] > 2:
        out[:, 2] = points[:, 2] * plan.resized[0] / plan.side
    return out


def transform_box(box: Sequence[float], plan: CropPlan) -> list[float] | None:
    """[x, y, w, h] normalised to the prepared image, clipped to it; None if nothing stays visible."""
    corners = transform_points(np.array([[box[0], box[1]], [box[0] + box[2], box[1] + box[3]]]), plan)
    (x0, y0), (x1, y1) = np.clip(corners, 0.0, 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def apply_crop(image: Image.Image, plan: CropPlan, size: int) -> Image.Image:
    """The prepared image: bilinear (torchvision Resize's default on PIL), to `size` x `size`."""
    image = files.eight_bit(image).convert("RGB")
    if not plan.padded:
        # Resizing only the crop's source region equals resizing all and then cropping (same filter
        # centres and support; PIL's two passes may round a pixel 1/255 differently), at half the cost.
        sx, sy = image.width / plan.resized[0], image.height / plan.resized[1]
        region = (plan.left * sx, plan.top * sy, (plan.left + plan.side) * sx, (plan.top + plan.side) * sy)
        return image.resize((size, size), Image.BILINEAR, box=region)
    image = image.resize(plan.resized, Image.BILINEAR)
    image = image.crop((plan.left, plan.top, plan.left + plan.side, plan.top + plan.side))  # black outside
    return image.resize((size, size), Image.BILINEAR)


@dataclass
class Prepared:
    record: HagridRecord
    split: str
    image: str  # relative to the dataset folder
    plan: CropPlan


def image_relpath(split: str, record: HagridRecord) -> str:
    return f"images/{split}/{record.gesture}/{record.key}.jpg"


def prepare_images(
    selections: Sequence[Selection], dataset_dir: Path, size: int, mode: str
) -> tuple[list[Prepared], list[tuple[str, Path, str]]]:
    """Write every selected image prepared (skipping those already written); also returns the
    images that failed to decode after all, as (key, path, error)."""
    jobs = [(split, r) for s in selections for split in SPLITS for r in getattr(s, split)]
    prepared, failed = [], []
    for split, record in progress_bar(jobs, desc=f"preparing images ({mode} crop)", unit="img"):
        rel = image_relpath(split, record)
        try:
            with Image.open(record.image_path) as image:
                plan = plan_crop(image.width, image.height, size, record.gesture_box, mode)
                if not (dataset_dir / rel).is_file():
                    files.save_image(dataset_dir / rel, apply_crop(image, plan, size), quality=JPEG_QUALITY)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's failures
            failed.append((record.key, record.image_path, f"{type(exc).__name__}: {exc}"))
            log.warning("could not prepare %s: %s (%s)", record.key, record.image_path, exc)
            continue
        prepared.append(Prepared(record, split, rel, plan))
    return prepared, failed


# ---------------------------------------------------------------- captions and rewriting


def caption_prepared(config: Config, prepared: Sequence[Prepared], dataset_dir: Path) -> dict[str, str]:
    """Raw captions of the prepared images, key -> caption (resumable, in captions/<captioner>.jsonl).

    A key missing from the result could not be captioned; the captioner logs why.
    """
    from handsynth.data.captioning import caption_images, make_captioner

    data = config.data
    metadata = {p.record.key: p.record.caption for p in prepared if p.record.caption is not None}
    captioner = make_captioner(
        data.captioner, model_id=data.captioner_model, device=config.run.device, captions=metadata or None
    )
    items = [(p.record.key, dataset_dir / p.image) for p in prepared]
    out = dataset_dir / "captions" / f"{data.captioner}.jsonl"
    return dict(caption_images(captioner, items, out, data.caption_batch_size))


def rewrite_prepared(
    config: Config, prepared: Sequence[Prepared], raw: dict[str, str], dataset_dir: Path
) -> dict[str, Rewrite]:
    """Rewritten captions, key -> Rewrite. Finished ones are kept in captions/rewritten-<mode>.jsonl
    and reused while their raw caption and the LLM are unchanged."""
    data = config.data
    path = dataset_dir / "captions" / f"rewritten-{data.rewrite}.jsonl"
    model = data.rewrite_model if data.rewrite == "llm" else ""
    done = {}
    if path.is_file():
        for row in files.read_jsonl_repairing(path):
            if raw.get(row["key"]) == row["caption_raw"] and row.get("model", "") == model:
                done[row["key"]] = Rewrite(row["caption"], row["method"], row["reason"])
    todo = [p for p in prepared if p.record.key not in done]
    if todo:
        generator = None
        if data.rewrite == "llm":
            from handsynth.data.rewriting import make_llm_generator

            generator = make_llm_generator(data.rewrite_model, device=config.run.device)

        def save(start: int, batch: list[Rewrite]) -> None:
            for p, rewrite in zip(todo[start : start + len(batch)], batch, strict=True):
                row = {"key": p.record.key, "caption_raw": raw[p.record.key], "model": model}
                row.update(rewrite._asdict())
                files.append_jsonl(path, row)
                done[p.record.key] = rewrite

        rewrite_captions(
            [(raw[p.record.key], p.record.gesture) for p in todo],
            mode=data.rewrite,
            generator=generator,
            batch_size=data.rewrite_batch_size,
            on_batch=save,
        )
    return done


# ---------------------------------------------------------------- manifests and report


def manifest_row(p: Prepared, raw: str, rewrite: Rewrite, captioner: str) -> dict:
    record = p.record
    lm = None if record.landmarks is None else transform_points(record.landmarks, p.plan).round(6).tolist()
    lm3 = None if record.landmarks_3d is None else transform_points(record.landmarks_3d, p.plan).round(6)
    return {
        "key": record.key,
        "image": p.image,
        "gesture": record.gesture,
        "split": p.split,
        "caption_raw": " ".join(raw.split()),  # one line: the reference text files are line-aligned
        "caption": rewrite.caption,
        "captioner": captioner,
        "bbox": transform_box(record.bbox, p.plan),
        "landmarks": lm,
        "user_id": record.user_id,
        # extras beyond the contract
        "landmarks_3d": None if lm3 is None else lm3.tolist(),
        "united_bbox": None if record.united_bbox is None else transform_box(record.united_bbox, p.plan),
        "rewrite": rewrite.method,
        "source_image": str(record.image_path),
    }


def write_reference_files(dataset_dir: Path, rows: Sequence[dict], captioner: str) -> None:
    """The official scripts' inputs: per gesture, image file names (sorted, as BLIP2.py writes them),
    raw captions and rewritten captions, line by line. Train split in reference/, test split in
    reference/test/; the images are in images/<split>/<gesture>/."""
    name = REFERENCE_NAMES.get(captioner, captioner)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["split"], row["gesture"])].append(row)
    for (split, gesture), group in groups.items():
        group = sorted(group, key=lambda r: Path(r["image"]).name)
        folder = dataset_dir / "reference" / ("" if split == "train" else split)
        files.write_text(
            folder / f"{gesture}_{name}_file_name.txt", "".join(Path(r["image"]).name + "\n" for r in group)
        )
        files.write_text(folder / f"{gesture}_{name}.txt", "".join(r["caption_raw"] + "\n" for r in group))
        files.write_text(
            folder / f"{gesture}_{name}_modified.txt", "".join(r["caption"] + "\n" for r in group)
        )


def _items(entries: Sequence[tuple[str, Path, str]] | Sequence[tuple[str, Path]]) -> dict:
    return {"count": len(entries), "items": [[str(x) for x in e] for e in entries[:_LIST_LIMIT]]}


# ---------------------------------------------------------------- build


def resolve_source(config: Config) -> Path:
    """`data.source` as a folder; "synthetic" is written (or completed) under the run folder."""
    data = config.data
    if data.source != "synthetic":
        return Path(data.source)
    from handsynth.data.synthetic import write_synthetic_hagrid

    folder = Path(config.run.output_dir) / "synthetic-hagrid"
    return write_synthetic_hagrid(
        folder,
        data.gestures,
        per_gesture=data.synthetic_per_gesture,
        size=data.synthetic_size,
        seed=config.run.seed,
    )


def _check_settings(dataset_dir: Path, config: Config) -> None:
    """Prepared images and captions are reused on a re-run, so the settings that shape them must not
    change under an existing folder."""
    data = config.data
    settings = {"image_size": data.image_size, "crop": data.crop}
    advice = "build into another --dataset-dir, or delete its images/ folder to prepare them again"
    files.check_settings_stamp(
        dataset_dir / "images" / "settings.json", settings, dataset_dir, "prepared", advice
    )


def default_dataset_dir(config: Config) -> Path:
    return Path(config.run.output_dir) / "dataset"


def build_dataset(config: Config, dataset_dir: str | Path | None = None) -> dict:
    """Build (or finish building) the dataset folder; returns the report also written to report.json."""
    from handsynth.data.captioning import KINDS

    data = config.data
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else default_dataset_dir(config)
    for gesture in data.gestures:
        check_gesture(gesture)
    if data.crop not in CROP_MODES:
        raise HandsynthError(f"data.crop must be one of {', '.join(CROP_MODES)}, got '{data.crop}'")
    if data.captioner not in KINDS:
        raise HandsynthError(
            f"unknown captioner '{data.captioner}'; valid captioners are: {', '.join(KINDS)}"
        )
    if data.rewrite not in ("llm", "deterministic"):
        raise HandsynthError(f"data.rewrite must be 'llm' or 'deterministic', got '{data.rewrite}'")
    if data.n_train < 1 or data.n_test < 0:
        raise HandsynthError(
            f"data.n_train must be >= 1 and data.n_test >= 0, got {data.n_train}, {data.n_test}"
        )
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    source = resolve_source(config)
    if not source.is_dir():
        raise HandsynthError(f"data.source {source} is not a folder; give a HaGRID folder or 'synthetic'")
    lap("source")
    log.info("[data 1/6] reading annotations in %s", source)
    index = read_hagrid(source, data.gestures)
    if data.captioner == "metadata" and not any(r.caption for r in index.records):
        raise HandsynthError(
            f"data.captioner = 'metadata' needs captions in the annotations, and {source} has none; "
            f"pick a model captioner ({', '.join(k for k in KINDS if k != 'metadata')})"
        )
    lap("read")
    log.info(
        "[data 2/6] selecting %d train / %d test per gesture (seed %d)",
        data.n_train,
        data.n_test,
        config.run.seed,
    )
    _check_settings(dataset_dir, config)
    trusted = {p.stem for p in (dataset_dir / "images").glob("*/*/*.jpg")}
    corrupt: dict[str, tuple[str, Path, str]] = {}
    selections = []
    for gesture in data.gestures:
        records = index.by_gesture(gesture)
        if not records:
            raise HandsynthError(f"no readable images for gesture '{gesture}' under {source}")
        selections.append(
            select_verified(
                records, data.n_train, data.n_test, config.run.seed, data.subject_disjoint, corrupt, trusted
            )
        )
    lap("select")
    log.info("[data 3/6] preparing %d px images (%s crop)", data.image_size, data.crop)
    prepared, failed = prepare_images(selections, dataset_dir, data.image_size, data.crop)
    lap("prepare")
    log.info("[data 4/6] captioning with %s", data.captioner)
    raw = caption_prepared(config, prepared, dataset_dir)
    lap("caption")
    log.info("[data 5/6] rewriting captions (%s)", data.rewrite)
    uncaptioned = [p for p in prepared if not raw.get(p.record.key)]
    if uncaptioned:
        log.warning("%d image(s) got no caption and are left out", len(uncaptioned))
        prepared = [p for p in prepared if raw.get(p.record.key)]
    rewrites = rewrite_prepared(config, prepared, raw, dataset_dir)
    lap("rewrite")
    log.info("[data 6/6] writing manifests and report")
    rows = [manifest_row(p, raw[p.record.key], rewrites[p.record.key], data.captioner) for p in prepared]
    for split in SPLITS:
        files.write_jsonl(dataset_dir / f"{split}.jsonl", [r for r in rows if r["split"] == split])
    write_reference_files(dataset_dir, rows, data.captioner)
    lap("manifest")
    unreadable = list(corrupt.values()) + failed
    report = _report(
        config, source, selections, prepared, rows, index.missing, unreadable, uncaptioned, rewrites
    )
    report["timings_s"] = timings
    files.write_json(dataset_dir / "report.json", report)
    save_config(config, dataset_dir / "config.toml")
    log.info(
        "dataset: %d train / %d test images in %s; centre crop would cut the hand in %.1f%%",
        report["totals"]["train"], report["totals"]["test"], dataset_dir, 100 * report["center_cut"]["rate"],
    )  # fmt: skip
    return report


def _report(
    config: Config,
    source: Path,
    selections: Sequence[Selection],
    prepared: Sequence[Prepared],
    rows: Sequence[dict],
    missing: Sequence[tuple[str, Path]],
    corrupt: Sequence[tuple[str, Path, str]],
    uncaptioned: Sequence[Prepared],
    rewrites: dict[str, Rewrite],
) -> dict:
    data = config.data
    counts = {}
    for s in selections:
        counts[s.gesture] = {
            "available": s.available,
            "selected_train": len(s.train),
            "selected_test": len(s.test),
            "short": s.short,
            **{
                split: sum(r["gesture"] == s.gesture and r["split"] == split for r in rows)
                for split in SPLITS
            },
        }
    cuts, sizes = defaultdict(int), defaultdict(int)
    for p in prepared:
        cuts[p.record.gesture] += p.plan.center_cuts_box
        sizes[p.record.gesture] += 1
    n = len(prepared)
    return {
        "source": str(source),
        "layout": detect_layout(source),
        "gestures": list(data.gestures),
        "seed": config.run.seed,
        "image_size": data.image_size,
        "crop": data.crop,
        "subject_disjoint": data.subject_disjoint,
        "captioner": data.captioner,
        "captioner_model": data.captioner_model,
        "rewrite": data.rewrite,
        "rewrite_model": data.rewrite_model if data.rewrite == "llm" else None,
        "counts": counts,
        "totals": {split: sum(r["split"] == split for r in rows) for split in SPLITS},
        "missing": _items(missing),
        "corrupt": _items(corrupt),
        "uncaptioned": _items([(p.record.key, p.record.image_path) for p in uncaptioned]),
        "center_cut": {
            "count": sum(cuts.values()),
            "rate": sum(cuts.values()) / n if n else 0.0,
            "per_gesture": {g: {"count": cuts[g], "rate": cuts[g] / sizes[g]} for g in sizes},
        },
        "padded": sum(p.plan.padded for p in prepared),
        "rewrites": summarize([rewrites[p.record.key] for p in prepared if p.record.key in rewrites]),
    }


# ---------------------------------------------------------------- evaluate


def evaluate_dataset(
    dataset_dir: str | Path,
    clip_model: str,
    splits: Sequence[str] = SPLITS,
    captions: str = "caption",
    device: str = "auto",
) -> dict[str, dict]:
    """CLIP image-caption and caption-caption similarity (dataset_evaluate.py) per split, over the
    whole split and per gesture; returns {"<split>/<gesture or all>": result}."""
    from handsynth.data.quality import image_features, load_clip, similarities, text_features

    dataset_dir = Path(dataset_dir)
    model, processor = load_clip(clip_model, device)
    results: dict[str, dict] = {}
    for split in splits:
        path = dataset_dir / f"{split}.jsonl"
        if not path.is_file():
            raise HandsynthError(f"{path} not found: build the dataset first with `handsynth data build`")
        rows = files.read_jsonl(path)
        if not rows:
            log.info("dataset quality: %s lists no images, skipped", path)
            continue
        image_emb, skipped = image_features(model, processor, [dataset_dir / r["image"] for r in rows])
        if skipped:
            log.warning("dataset quality: %d unreadable image(s) in %s", len(skipped), split)
        kept = [i for i in range(len(rows)) if i not in skipped]
        text_emb = text_features(model, processor, [rows[i][captions] for i in kept])
        gesture_of = np.array([rows[i]["gesture"] for i in kept])
        for gesture in ["all", *sorted(set(gesture_of.tolist()))]:
            mask = np.ones(len(kept), bool) if gesture == "all" else gesture_of == gesture
            lost = [i for i in skipped if gesture == "all" or rows[i]["gesture"] == gesture]
            results[f"{split}/{gesture}"] = {
                "clip_model": clip_model,
                "captions": captions,
                "n_pairs": int(mask.sum()),
                "n_skipped": len(lost),
                "skipped": {rows[i]["image"]: skipped[i] for i in lost},
                **similarities(image_emb[mask], text_emb[mask]),
            }
    if not results:
        raise HandsynthError(f"no images to evaluate in {dataset_dir} ({', '.join(splits)})")
    return results


# ---------------------------------------------------------------- CLI
