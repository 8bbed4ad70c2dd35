"""LAION-Human as released by HumanSD (Ju et al., ICCV 2023, https://github.com/IDEA-Research/HumanSD;
layout per its `ldm/data/humansd.py` and `configs/humansd/humansd-finetune.yaml`):

    <root>/mapping_<split>.json      {id: {"img_path": ..., "pose_path": ....npz, "prompt": ...}}, paths
                                     relative to <root> (HumanSD's `humansd_data/datasets`)
    <root>/<pose_path>               np.savez'd "arr_0": one dict per detected person, "keypoints" 17 x
                                     [x, y, score] (MMPose HigherHRNet, COCO body order)

The outpainter's data (seed 004 §IV-A): one person per image, so images where the release's detections
hold more than one person (mean keypoint score of at least PERSON_SCORE) are left out and counted; the
2,500-px hand-mask filter is the build's (`pose.min_mask_pixels`). Poses, masks and captions then come
as for HaGRID (Holistic, SAM or landmark masks, `pose.captioner`; the release's prompt is the
"metadata" caption). The pose files are pickles, as HumanSD writes them: read only a release you trust.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.twostage.data.sources.records import SourceIndex, SourceRecord, malformed, read_json

PERSON_SCORE = 0.2  # ours: HigherHRNet also lists faint detections, which are not people
GROUP = "laion"


def count_people(path: Path, record: str) -> int:
    """People in a HumanSD pose file: detections whose mean keypoint score is at least PERSON_SCORE."""
    try:
        with np.load(path, allow_pickle=True) as archive:
            people = archive["arr_0"]
        scores = [np.asarray(person["keypoints"], np.float64)[:, 2].mean() for person in people]
    except FileNotFoundError:
        raise HandsynthError(f"{record}: its pose file {path} is missing") from None
    except Exception as exc:  # np.load and the pickled dicts raise many types
        raise malformed(path, record, f"not a HumanSD pose file ({type(exc).__name__}: {exc})") from None
    return sum(score >= PERSON_SCORE for score in scores)


def read_laion_human(root: Path) -> SourceIndex:
    mappings = sorted(root.glob("mapping_*.json"))
    if not mappings:
        raise HandsynthError(
            f"{root} is not a LAION-Human folder: expected mapping_<split>.json with img_path, pose_path and "
            "prompt per image, as HumanSD's humansd_data/datasets"
        )
    records, missing, several = [], [], 0
    for mapping in mappings:
        entries = read_json(mapping, "LAION-Human mapping")
        for entry_id, entry in entries.items():
            name = f"entry {entry_id}"
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("img_path", "pose_path")
            ):
                raise malformed(mapping, name, "img_path and pose_path (strings) expected")
            key = "laion-" + re.sub(r"[^A-Za-z0-9_.-]", "-", str(entry_id))
            image = root / entry["img_path"]
            if not image.is_file():
                missing.append((key, image))
                continue
            if count_people(root / entry["pose_path"], f"{mapping}, {name}") != 1:
                several += 1
                continue
            records.append(
                SourceRecord(key=key, image_path=image, gesture=GROUP, caption=entry.get("prompt"))
            )
    return SourceIndex(
        records=records,
        missing=missing,
        groups=[GROUP] if records else [],
        filtered={"not_one_person": several},
    )
