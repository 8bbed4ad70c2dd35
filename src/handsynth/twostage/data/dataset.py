"""`handsynth pose build|extract|merge`: the two-stage method's dataset (seed 004 §IV-A).

`pose build` turns a HaGRID-layout folder, or the synthetic one, into `<run>/twostage-data/`:
- `images.jsonl`: whole images, square, `pose.image_size` px, with the pose, hand mask, person mask
  and caption: the evaluation's ground truth, and the outpainter's data where `"outpaint"` is true
  (the hand mask has at least `pose.min_mask_pixels` at 512 px) and `"single_person"` is true (the
  source annotates at most two hands), as the paper filters its LAION-Human set;
- `hands.jsonl`: square hand crops, `pose.crop_size` px, with their keypoints, finger heatmaps
  (uint8 `.npz`), mask, box in the whole image and caption: the hand generator's data;
- `report.json` (counts, detection rates, mask sources, time per image), `contact_sheet.png`,
  `config.toml`.

Steps, each skipping finished work on a re-run:
1. read and select as `data build` does (seeded, N train / N test per gesture); `--shard K/N` keeps
   the images whose key hashes to share K, into `shard-K-of-N/`, and `pose merge` joins the shards;
2. poses: the synthetic renderer's own (`wholebody/`), or MediaPipe Holistic + Hands in worker
   processes, cached by content (twostage.extract);
3. per image: the hand mask (the renderer's exact one, SAM, or drawn from the landmarks; dilated 5×5),
   the person mask (Holistic's segmentation), the square image holding both hands and the hand crops,
   cut from the source at its full resolution; each finished image is logged in `progress.jsonl`;
4. captions (handsynth.data.captioning with `pose.captioner`, resumable);
5. manifests, report and contact sheet, each written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.config import Config, save_config
from handsynth.data.dataset import select_gesture
from handsynth.data.gestures import check_gesture
from handsynth.data.hagrid import HagridRecord, detect_layout
from handsynth.errors import HandsynthError
from handsynth.perception.pose import SIDES
from handsynth.perception.sam import dilate_mask
from handsynth.perception.wholebody import HANDS, check_pose
from handsynth.progress import progress_bar
from handsynth.twostage.data.crops import (
    box_in,
    crop_hands,
    cut_mask,
    cut_square,
    image_box,
    split_hand_mask,
    to_box,
)
from handsynth.twostage.data.extract import PoseRun, detect_poses, summarize
from handsynth.twostage.data.masks import make_masker, read_mask
from handsynth.twostage.data.sources import CAPTIONED, SourceRecord, check_format, read_source

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
REFERENCE_SIZE = 512  # pose.min_mask_pixels is counted at this image size (the paper's)
_LIST_LIMIT = 1000  # skipped items named in the report (the counts are always complete)
SKIP_REASONS = ("missing", "unreadable", "no_person", "no_hands")
HANDS_PER_PERSON = 2
SETTINGS_FILE = "settings.json"  # beside images.jsonl and hands.jsonl: what shaped the images and crops


@dataclass(frozen=True)
class Item:
    record: HagridRecord | SourceRecord
    split: str

    @property
    def key(self) -> str:
        return self.record.key

    def path(self, folder: str, index: int | None = None, suffix: str = ".png") -> str:
        """A file's path relative to the dataset folder: <folder>/<split>/<gesture>/<key>[-i]<suffix>."""
        name = self.key if index is None else f"{self.key}-{index}"
        return f"{folder}/{self.split}/{self.record.gesture}/{name}{suffix}"


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise HandsynthError(f"--shard wants K/N, e.g. 2/4, got '{text}'") from None
    if not 1 <= k <= n:
        raise HandsynthError(f"--shard K/N needs 1 <= K <= N, got '{text}'")
    return k, n


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """A key's share follows from the key alone, so it does not move when the selection grows."""
    k, n = shard
    return n == 1 or int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % n == k - 1


def default_output_dir(config: Config) -> Path:
    return Path(config.pose.output_dir or Path(config.run.output_dir) / "twostage-data")


def read_image_rows(data: str | Path, split: str) -> tuple[Path, list[dict]]:
    """(the manifest, its `split` rows) of a two-stage dataset: its folder or its images.jsonl."""
    manifest = Path(data)
    if manifest.is_dir():
        manifest = manifest / "images.jsonl"
    if not manifest.is_file():
        raise HandsynthError(
            f"no image manifest at {manifest}; build the two-stage dataset with `handsynth pose build`"
        )
    rows = [row for row in files.read_jsonl(manifest) if row.get("split") == split]
    if not rows:
        raise HandsynthError(f"{manifest} has no '{split}' rows")
    return manifest, rows


def shard_dir(base: Path, shard: tuple[int, int]) -> Path:
    return base if shard[1] == 1 else base / f"shard-{shard[0]}-of-{shard[1]}"


def resolve_source(config: Config) -> Path:
    """`pose.source` as a folder; "synthetic" is the run's synthetic-hagrid folder (data.synthetic_*),
    written or completed with its two-stage files."""
    if config.pose.source != "synthetic" or config.pose.source_format != "hagrid":
        source = Path(config.pose.source)
        if not source.is_dir():
            raise HandsynthError(
                f"pose.source {source} is not a folder; give a {config.pose.source_format} folder"
                + (" or 'synthetic'" if config.pose.source_format == "hagrid" else "")
            )
        return source
    from handsynth.data.synthetic import write_synthetic_hagrid

    return write_synthetic_hagrid(
        Path(config.run.output_dir) / "synthetic-hagrid",
        config.pose.gestures,
        per_gesture=config.data.synthetic_per_gesture,
        size=config.data.synthetic_size,
        seed=config.run.seed,
        twostage=True,
    )


class SourcePoses:
    """The source's own whole-body keypoints, and exact hand masks where it has them: the synthetic
    renderer writes `wholebody/<split>/<g>.json` and `masks/<g>/<key>.png`; the readers of other formats
    (InterHand2.6M, Re:InterHand) give keypoints with each record, without masks."""

    def __init__(self, root: Path, fmt: str = "hagrid") -> None:
        self.root = root
        self.format = fmt
        self._tables: dict[Path, dict] = {}

    def label(self, record) -> str | None:
        """Where the record's own keypoints come from ("synthetic": with exact masks), None without any."""
        if getattr(record, "keypoints", None) is not None:
            return self.format
        return "synthetic" if self.keypoints(record) is not None else None

    def keypoints(self, record: HagridRecord | SourceRecord) -> np.ndarray | None:
        if getattr(record, "keypoints", None) is not None:
            return record.keypoints
        path = self.root / "wholebody" / str(record.split) / f"{record.gesture}.json"
        if path not in self._tables:
            self._tables[path] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        value = self._tables[path].get(record.key)
        return None if value is None else check_pose(value, f"{path}, key {record.key}")

    def mask(self, record: HagridRecord, width: int, height: int) -> np.ndarray:
        path = self.root / "masks" / record.gesture / f"{record.key}.png"
        return read_mask(path, width, height, record.image_path)


def check_pose_settings(config: Config) -> None:
    """The `[pose]` keys, checked before any image is read."""
    from handsynth.data.captioning import KINDS

    pose = config.pose
    check_format(pose.source_format)
    for gesture in pose.gestures if pose.source_format == "hagrid" else ():
        check_gesture(gesture)
    if pose.captioner not in KINDS:
        raise HandsynthError(
            f"pose.captioner '{pose.captioner}' is not available in this installation; valid captioners are: "
            f"{', '.join(KINDS)} (metadata uses the captions the synthetic renderer wrote)"
        )
    if pose.n_train < 1 or pose.n_test < 0:
        raise HandsynthError(
            f"pose.n_train must be >= 1 and pose.n_test >= 0, got {pose.n_train}, {pose.n_test}"
        )
    if pose.image_size < 8 or pose.crop_size < 8:
        raise HandsynthError(f"pose.image_size and pose.crop_size must be >= 8 px, got {pose.image_size}, "
                             f"{pose.crop_size}")  # fmt: skip
    if pose.crop_margin < 0:
        raise HandsynthError(f"pose.crop_margin must be >= 0, got {pose.crop_margin}")


def _check_settings(out: Path, config: Config) -> None:
    """Finished images are reused on a re-run, so what shapes them must not change under a folder."""
    pose = config.pose
    settings = {
        "image_size": pose.image_size,
        "crop_size": pose.crop_size,
        "crop_margin": pose.crop_margin,
        "sam_model": pose.sam_model,
    }
    advice = "build into another pose.output_dir, or delete the folder to build it again"
    files.check_settings_stamp(out / SETTINGS_FILE, settings, out, "built", advice)


def _preflight(config: Config, need_masker: bool) -> None:
    """Check that the captioner's and SAM's ids load (their configs only) before any work is done."""
    from transformers import AutoConfig

    from handsynth import hub
    from handsynth.data.captioning import DEFAULT_MODELS

    pose = config.pose
    captioner = pose.captioner_model or DEFAULT_MODELS.get(pose.captioner)
    if pose.captioner != "metadata" and captioner:
        hub.from_pretrained(AutoConfig, captioner, config_key="pose.captioner_model")
    if need_masker and pose.sam_model:
        hub.from_pretrained(AutoConfig, pose.sam_model, config_key="pose.sam_model")


def _save_mask(path: Path, mask: np.ndarray) -> None:
    files.save_image(path, Image.fromarray(mask.astype(np.uint8) * 255))


def process_item(item: Item, out: Path, config: Config, own: SourcePoses, poses: PoseRun, masker_for) -> dict:
    """Masks, square image and crops of one image, written under `out`; its progress entry.

    `masker_for()` gives the HandMasker (built on first use). Raises _Skip for an image that cannot
    be used, naming why.
    """
    pose = config.pose
    record = item.record
    keypoints = own.keypoints(record)
    seconds = {"holistic": None}
    person = None
    if keypoints is not None:
        label = own.label(record)
        sources = {side: label if (keypoints[HANDS[side], 2] > 0).any() else None for side in SIDES}
    else:
        if record.image_path in poses.unreadable:
            raise _Skip("unreadable", f"{record.image_path}: {poses.unreadable[record.image_path]}")
        found = poses.poses.get(record.image_path)
        if found is None:
            raise _Skip("missing", f"{record.image_path} is missing")
        seconds["holistic"] = found.get("seconds")
        if found["keypoints"] is None:
            raise _Skip("no_person", f"{record.image_path}: MediaPipe found no person; the image is left out")
        keypoints = np.asarray(found["keypoints"], dtype=np.float32)
        sources = dict(found["hand_sources"])
        person_path = poses.cache.person_mask_path(found["sha256"])
        person = person_path if found["body"] and person_path.is_file() else None
    present = [side for side in SIDES if sources[side] is not None]
    if not present:
        why = "its pose from the source has none" if seconds["holistic"] is None else "MediaPipe found none"
        raise _Skip("no_hands", f"{record.image_path}: a person without hands ({why}); the image is left out")
    try:
        rgb = files.load_rgb(record.image_path)
    except HandsynthError as exc:
        raise _Skip("unreadable", str(exc)) from None
    height, width = rgb.shape[:2]

    start = time.perf_counter()
    if sources[present[0]] == "synthetic":  # one exact mask of both hands
        mask, mask_source = dilate_mask(own.mask(record, width, height)), "synthetic"
        hand_masks = split_hand_mask(mask, keypoints)
    else:
        masker = masker_for()
        hand_masks = dict(
            zip(present, masker.hand_masks(rgb, [keypoints[HANDS[s]] for s in present]), strict=True)
        )
        mask, mask_source = np.logical_or.reduce(list(hand_masks.values())), masker.source
    seconds["mask"] = time.perf_counter() - start

    start = time.perf_counter()
    source = Image.fromarray(rgb)
    crops = crop_hands(source, hand_masks, keypoints, pose.crop_size, pose.crop_margin)
    seconds["crop"] = time.perf_counter() - start

    size = pose.image_size
    box = image_box(keypoints, width, height)
    square = to_box(keypoints, box, size)
    outside = ((square[:, :2] < 0) | (square[:, :2] > size)).any(axis=1)
    square[outside, 2] = 0.0  # cut off by the square: absent in this image, as COCO does
    hand_mask = cut_mask(mask, box, size)
    files.save_image(out / item.path("images"), cut_square(source, box, size))
    _save_mask(out / item.path("hand_masks"), hand_mask)
    person_rel = None
    if person is not None:
        with Image.open(person) as file:
            person_mask = np.asarray(files.to_gray(file)) > 127
        person_rel = item.path("person_masks")
        _save_mask(out / person_rel, cut_mask(person_mask, box, size))
    image_row = {
        "key": item.key,
        "split": item.split,
        "gesture": record.gesture,
        "image": item.path("images"),
        "width": size,
        "height": size,
        "keypoints": square.astype(np.float64).round(3).tolist(),
        "hand_mask": item.path("hand_masks"),
        "person_mask": person_rel,
        "mask_source": mask_source,
        "hand_sources": sources,
        # beyond the contract
        "hand_mask_pixels": int(hand_mask.sum()),
        "source_image": str(record.image_path),
        "source_box": list(box),
    }
    hand_rows = []
    for i, crop in enumerate(crops):
        files.save_image(out / item.path("crops", i), crop.image)
        _save_mask(out / item.path("crop_masks", i), crop.mask)
        files.write_npz(out / item.path("heatmaps", i, ".npz"), heatmaps=crop.heatmaps)
        hand_rows.append({
            "key": f"{item.key}-{i}",
            "source": item.key,
            "split": item.split,
            "gesture": record.gesture,
            "image": item.path("crops", i),
            "mask": item.path("crop_masks", i),
            "heatmaps": item.path("heatmaps", i, ".npz"),
            "hands": crop.hands.astype(np.float64).round(3).tolist(),
            "box": box_in(crop.plan.box, box, size),
            "sides": list(crop.plan.sides),
            "mask_source": mask_source,
        })  # fmt: skip
    return {"key": item.key, "image_row": image_row, "hand_rows": hand_rows, "seconds": seconds}


def _read_progress(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {entry["key"]: entry for entry in files.read_jsonl_repairing(path)}


def _captions(config: Config, items: list[Item], out: Path) -> dict[str, str]:
    from handsynth.data.captioning import caption_images, make_captioner

    pose = config.pose
    metadata = {i.key: i.record.caption for i in items if i.record.caption is not None}
    if pose.captioner == "metadata" and len(metadata) < len(items):
        missing = next(i for i in items if i.record.caption is None)
        raise HandsynthError(
            f"pose.captioner = 'metadata' needs captions in the annotations, and {missing.record.image_path} "
            "has none; pick a model captioner (pose.captioner = llava, blip2, ...)"
        )
    if not items:
        return {}
    captioner = make_captioner(
        pose.captioner,
        model_id=pose.captioner_model,
        device=config.run.device,
        captions=metadata or None,
        config_key="pose.captioner_model",
    )
    pairs = [(i.key, out / i.path("images")) for i in items]
    return dict(
        caption_images(
            captioner, pairs, out / "captions" / f"{pose.captioner}.jsonl", pose.caption_batch_size
        )
    )


def build_pose_dataset(
    config: Config,
    output_dir: str | Path | None = None,
    shard: tuple[int, int] = (1, 1),
    progress: bool = True,
) -> dict:
    """Build (or finish building) the two-stage dataset, or one shard of it; returns the report."""
    check_pose_settings(config)
    pose = config.pose
    started = time.perf_counter()
    out = shard_dir(Path(output_dir) if output_dir else default_output_dir(config), shard)
    source = resolve_source(config)
    log.info("[pose 1/5] reading and selecting %s (%s)", source, pose.source_format)
    if pose.source_format in CAPTIONED and pose.captioner != "metadata":
        log.info(
            "%s gives its own captions: pose.captioner '%s' is not used", pose.source_format, pose.captioner
        )
        config = dataclasses.replace(config, pose=dataclasses.replace(pose, captioner="metadata"))
        pose = config.pose
    _check_settings(out, config)

    # the pose step's call, which YouTube-ASL's reader makes first: the frames it keeps are cache hits
    def detect(paths: list[Path]) -> PoseRun:
        return detect_poses(
            paths, out / "cache", pose.workers, person_masks=True, progress=progress, label=out.name
        )

    index = read_source(config, source, out, detect, progress)
    groups = pose.gestures if pose.source_format == "hagrid" else index.groups
    items, available = [], {}
    for gesture in groups:
        records = index.by_gesture(gesture)
        if not records:
            raise HandsynthError(f"no images of gesture '{gesture}' under {source}")
        if getattr(index, "fixed_split", False):  # an evaluation set: every record, in its own split
            selected = {split: [r for r in records if r.split == split] for split in SPLITS}
            available[gesture] = len(records)
        else:
            selection = select_gesture(records, pose.n_train, pose.n_test, config.run.seed)
            selected = {split: getattr(selection, split) for split in SPLITS}
            available[gesture] = selection.available
        items += [Item(r, split) for split in SPLITS for r in selected[split] if in_shard(r.key, shard)]
    progress_path = out / "progress.jsonl"
    # an image finished under another split (a new seed or n_test) is made again under its new one
    splits = {item.key: item.split for item in items}
    done = {
        key: entry
        for key, entry in _read_progress(progress_path).items()
        if entry["image_row"]["split"] == splits.get(key)
    }
    todo = [item for item in items if item.key not in done]
    own = SourcePoses(source, pose.source_format)
    # every selected image without the source's own pose, finished or not: the report counts them all
    # (a finished one is a cache hit, read and hashed but not detected again)
    to_detect = [item for item in items if own.keypoints(item.record) is None]
    _preflight(config, need_masker=any(own.label(item.record) != "synthetic" for item in todo))

    log.info("[pose 2/5] whole-body poses: %d of %d image(s) from MediaPipe", len(to_detect), len(items))
    paths = list(dict.fromkeys(item.record.image_path for item in to_detect))
    poses = detect(paths)

    log.info("[pose 3/5] masks, square images and hand crops")
    masker = None

    def masker_for():
        nonlocal masker
        if masker is None:
            masker = make_masker(pose.sam_model, config.run.device)
        return masker

    skipped: dict[str, list[tuple[str, str]]] = defaultdict(list)
    skipped["missing"] = [(key, f"{path} is missing") for key, path in index.missing if in_shard(key, shard)]
    for item in progress_bar(todo, desc="two-stage images", unit="img", disable=not progress):
        try:
            entry = process_item(item, out, config, own, poses, masker_for)
        except _Skip as skip:
            skipped[skip.reason].append((item.key, str(skip)))
            log.warning("skipped %s (%s): %s", item.key, skip.reason, skip)
            continue
        files.append_jsonl(progress_path, entry)
        done[item.key] = entry
    masker = None  # SAM's memory goes before the captioner loads

    finished = [item for item in items if item.key in done]
    log.info("[pose 4/5] captioning %d image(s) with %s", len(finished), pose.captioner)
    captions = _captions(config, finished, out)

    log.info("[pose 5/5] manifests, report and contact sheet")
    image_rows, hand_rows, small, multi_person, uncaptioned = [], [], [], [], []
    scale = (REFERENCE_SIZE / pose.image_size) ** 2
    for item in finished:
        entry, caption = done[item.key], captions.get(item.key)
        if caption is None:
            uncaptioned.append(item.key)
            continue
        # the paper's outpainter data holds one person with hand masks of at least 2,500 px; the
        # other images stay as evaluation ground truth, flagged. A person has two hands, so more
        # annotated hands mean more people.
        outpaint = entry["image_row"]["hand_mask_pixels"] * scale >= pose.min_mask_pixels
        single_person = item.record.hand_boxes <= HANDS_PER_PERSON
        if not outpaint:
            small.append(item.key)
        if not single_person:
            multi_person.append(item.key)
        image_rows.append(
            {**entry["image_row"], "caption": caption, "outpaint": outpaint, "single_person": single_person}
        )
        hand_rows += [{**row, "caption": caption} for row in entry["hand_rows"]]
    files.write_jsonl(out / "images.jsonl", image_rows)
    files.write_jsonl(out / "hands.jsonl", hand_rows)
    report = make_report(
        config, source, shard, items, [done[i.key] for i in finished], image_rows, hand_rows, skipped, poses
    )
    report["gestures"] = list(groups)
    report["counts"].update(available={g: available[g] for g in groups}, small_mask=len(small),
                            multi_person=len(multi_person), uncaptioned=len(uncaptioned))  # fmt: skip
    report["counts"]["filtered"] = dict(getattr(index, "filtered", {}))  # a source's own filters
    report["small_mask"], report["uncaptioned"] = small[:_LIST_LIMIT], uncaptioned[:_LIST_LIMIT]
    report["multi_person"] = multi_person[:_LIST_LIMIT]
    report["seconds"] = round(time.perf_counter() - started, 3)
    files.write_json(out / "report.json", report)
    save_config(config, out / "config.toml")
    _write_sheet(out, image_rows, hand_rows)
    return report


def make_report(
    config, source, shard, items, entries, image_rows, hand_rows, skipped, poses: PoseRun
) -> dict:
    """Counts, detection rates, mask sources and time per image of a build (or a shard)."""
    pose = config.pose
    detected = [e for e in entries if e["seconds"]["holistic"] is not None]
    sources = Counter(e["image_row"]["hand_sources"][side] for e in entries for side in SIDES)
    report = {
        "source": str(source),
        "source_format": pose.source_format,
        "layout": detect_layout(source) if pose.source_format == "hagrid" else pose.source_format,
        "shard": list(shard),
        "gestures": list(pose.gestures),
        "seed": config.run.seed,
        "settings": {
            key: getattr(pose, key)
            for key in (
                "image_size",
                "crop_size",
                "crop_margin",
                "min_mask_pixels",
                "sam_model",
                "captioner",
                "captioner_model",
            )
        },
        "counts": {
            "selected": len(items),
            "done": len(entries),
            "images": {split: sum(r["split"] == split for r in image_rows) for split in SPLITS},
            "crops": {split: sum(r["split"] == split for r in hand_rows) for split in SPLITS},
            "shared_crops": sum(len(r["sides"]) == 2 for r in hand_rows),
            **{reason: len(skipped.get(reason, [])) for reason in SKIP_REASONS},
            "hand_sources": {k or "none": v for k, v in sources.items()},
            "mask_sources": dict(Counter(e["image_row"]["mask_source"] for e in entries)),
        },
        "skipped": {
            reason: [list(x) for x in skipped.get(reason, [])[:_LIST_LIMIT]] for reason in SKIP_REASONS
        },
        # Holistic on this run's images: each counted once, whether detected now or read from the cache
        "holistic": summarize(list(poses.poses.values())) if poses.poses else None,
        "detections_run": poses.detections_run,
        "seconds_per_image": {
            step: _mean([e["seconds"][step] for e in (detected if step == "holistic" else entries)])
            for step in ("holistic", "mask", "crop")
        },
    }
    return report


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 5) if values else None


def _write_sheet(out: Path, image_rows: list[dict], hand_rows: list[dict]) -> None:
    from handsynth.twostage.data.sheet import contact_sheet

    if image_rows:
        files.save_image(out / "contact_sheet.png", contact_sheet(out, image_rows, hand_rows))


# ---------------------------------------------------------------- shards


def _sum(a, b):
    """Two reports' counts added leaf by leaf (numbers add, lists join, dicts recurse)."""
    if isinstance(a, dict):
        return {k: _sum(a.get(k), b.get(k)) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, list):
        return a + b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return a if a is not None else b


def _link(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content: a hard link where the filesystem allows, else a copy."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        files.write_bytes(target, source.read_bytes())


def merge_shards(base: Path, progress: bool = True) -> dict:
    """Join the finished `shard-K-of-N/` folders under `base` into one dataset folder at `base`."""
    import re

    shards = {}
    for folder in sorted(base.glob("shard-*-of-*")):
        match = re.fullmatch(r"shard-(\d+)-of-(\d+)", folder.name)
        if match and folder.is_dir():
            shards[(int(match[1]), int(match[2]))] = folder
    if not shards:
        raise HandsynthError(
            f"no shard-K-of-N folders under {base}; build them with `pose build --shard K/N`"
        )
    counts = {n for _, n in shards}
    if len(counts) > 1:
        raise HandsynthError(f"{base} holds shards of different splits ({sorted(counts)} shares); keep one N")
    (n,) = counts
    missing = [f"{k}/{n}" for k in range(1, n + 1) if (k, n) not in shards]
    unfinished = [str(folder) for folder in shards.values() if not (folder / "report.json").is_file()]
    if missing or unfinished:
        problems = [f"shard {m} is missing" for m in missing] + [f"{u} is not finished" for u in unfinished]
        raise HandsynthError(
            f"cannot merge {base}: {'; '.join(problems)}; run `pose build --shard K/N` for each, then "
            "merge again"
        )
    folders = [shards[(k, n)] for k in range(1, n + 1)]
    settings = [json.loads((f / SETTINGS_FILE).read_text(encoding="utf-8")) for f in folders]
    if any(s != settings[0] for s in settings):
        raise HandsynthError(f"the shards under {base} were built with different settings: {settings}")
    image_rows, hand_rows, reports, moves = [], [], [], []
    for folder in folders:
        rows = files.read_jsonl(folder / "images.jsonl")
        crops = files.read_jsonl(folder / "hands.jsonl")
        moves += [(folder, r[k]) for r in rows for k in ("image", "hand_mask", "person_mask") if r[k]]
        moves += [(folder, r[k]) for r in crops for k in ("image", "mask", "heatmaps")]
        image_rows += rows
        hand_rows += crops
        reports.append(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    for folder, rel in progress_bar(moves, desc="merging shards", unit="file", disable=not progress):
        _link(folder / rel, base / rel)
    order = {split: i for i, split in enumerate(SPLITS)}
    for rows in (image_rows, hand_rows):
        rows.sort(key=lambda r: (order[r["split"]], r["gesture"], r["key"]))
    report = _merge_reports(reports, [str(f) for f in folders])
    files.write_json(base / SETTINGS_FILE, settings[0])
    files.write_jsonl(base / "images.jsonl", image_rows)
    files.write_jsonl(base / "hands.jsonl", hand_rows)
    files.write_json(base / "report.json", report)
    files.write_bytes(base / "config.toml", (folders[0] / "config.toml").read_bytes())
    _write_sheet(base, image_rows, hand_rows)
    return report


def _merge_reports(reports: list[dict], folders: list[str]) -> dict:
    merged = {
        k: v for k, v in reports[0].items() if k not in ("counts", "skipped", "holistic", "seconds_per_image")
    }
    merged["shard"], merged["shards"] = None, folders
    merged["counts"] = reports[0]["counts"]
    merged["skipped"] = reports[0]["skipped"]
    for report in reports[1:]:
        merged["counts"] = _sum(merged["counts"], report["counts"])
        merged["skipped"] = _sum(merged["skipped"], report["skipped"])
        merged["detections_run"] += report["detections_run"]
        merged["seconds"] += report["seconds"]
    merged["counts"]["available"] = reports[0]["counts"]["available"]  # the same source in every shard
    holistic = [r["holistic"] for r in reports if r["holistic"]]
    if holistic:
        total = holistic[0]
        for h in holistic[1:]:
            total = {**_sum(total, h), "rates": None, "seconds_per_image": None}
        images = total["images"]
        hands = total["hands"]
        total["rates"] = {
            "body": total["bodies"] / images,
            "holistic_hands_per_image": hands["holistic"] / images,
            "hands_per_image": (hands["holistic"] + hands["hands"]) / images,
        }
        total["seconds_per_image"] = _weighted([(h["seconds_per_image"], h["images"]) for h in holistic])
        merged["holistic"] = total
    else:
        merged["holistic"] = None
    merged["seconds_per_image"] = {
        step: _weighted([(r["seconds_per_image"][step], r["counts"]["done"]) for r in reports])
        for step in reports[0]["seconds_per_image"]
    }
    return merged


def _weighted(pairs: list[tuple[float | None, int]]) -> float | None:
    pairs = [(v, w) for v, w in pairs if v is not None and w]
    return round(sum(v * w for v, w in pairs) / sum(w for _, w in pairs), 5) if pairs else None
