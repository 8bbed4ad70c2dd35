"""Pose accuracy of generated images (seed 004 §IV-C): DAP and MPJPE, over the 133 whole-body keypoints
and over the 42 hand keypoints.

The ground truth of an image is the pose it was generated from; the prediction is the pose a detector
(MediaPipe Holistic) finds on the generated image, None when it finds nothing. Both are (133, 3) arrays
of x, y in the pixels of the same frame and a COCO visibility v (v > 0: present).

DAP is COCO keypoint AP@[.5:.95], computed by pycocotools' COCOeval (iouType "keypoints") on COCO
objects built in memory, one ground truth and at most one prediction per image:
- sigmas: the 133 COCO-WholeBody sigmas, or the 42 hand sigmas on the 42 hand keypoints for DAP-hands;
- ground-truth area: w * h of the box around its present keypoints (HumanSD's DAP; TWOSTAGE.md §10),
  by default the whole pose's box for every part ("pose", COCO-WholeBody's convention of scoring each
  part against the person's area, and `evaluate.dap_area`'s default), or the evaluated keypoints' box
  ("part");
- an image whose ground truth has no present keypoint in the part is skipped: it holds nothing to
  compare with (COCO ignores such a ground truth, num_keypoints == 0) and is counted in the result;
- no prediction, or one without a present keypoint in the part, is a miss (recall, not a false positive);
- a predicted keypoint that is absent is put far outside the image, so it scores an OKS term of 0
  instead of being read as a point at (0, 0);
- a ground truth whose present keypoints span no area (one keypoint, or all on a line) can only be
  matched exactly: COCO divides by area + eps;
- the prediction's score, which ranks predictions across images, is the mean of the detector's keypoint
  scores over its present keypoints in the part, or 1.0 for an image without scores. Tied scores keep
  the input order (COCOeval sorts with a stable mergesort), so without scores DAP depends on the
  images' order.
- maxDets stays at COCO's 20 (there is at most one prediction per image), params.useSegm at None (any
  other value would turn the evaluation into segm or bbox), and the value is the 'all' area range,
  as COCOeval.summarize reports it. Over 12,000 images one DAP takes about 6 s on one core.

MPJPE is the mean Euclidean distance in normalised coordinates (x / W, y / H) over every keypoint
present in both the ground truth and the prediction, pooled over images. An image without a prediction
has no distance: it is left out of MPJPE and counted in the detection rate beside it, and the keypoint
rate says which share of the ground truth's present keypoints the detector found.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HAND_INDICES, HAND_SIGMAS, NUM_KEYPOINTS, SIGMAS, check_pose

PARTS = {"wholebody": (np.arange(NUM_KEYPOINTS), SIGMAS), "hands": (HAND_INDICES, HAND_SIGMAS)}
AREA_MODES = ("part", "pose")
CONSTANT_SCORE = 1.0
# Where an absent predicted keypoint goes: far enough that exp(-d^2 / (2 s^2 k^2)) is 0 for any image.
ABSENT_COORDINATE = -1e7


def _check_part(part: str) -> tuple[np.ndarray, np.ndarray]:
    if part not in PARTS:
        raise HandsynthError(f"unknown pose part '{part}'; use one of {', '.join(PARTS)}")
    return PARTS[part]


def check_poses(
    ground_truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray | None],
    scores: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray | None]]:
    """The poses as (133, 3) float32 arrays and the scores as (133,) arrays, or a HandsynthError
    naming the image."""
    if len(ground_truths) != len(predictions):
        raise HandsynthError(
            f"pose metrics: {len(ground_truths)} ground truths but {len(predictions)} predictions "
            "(pass None for an image where nothing was detected)"
        )
    if scores is not None and len(scores) != len(predictions):
        raise HandsynthError(f"pose metrics: {len(predictions)} predictions but {len(scores)} score arrays")
    gts = [check_pose(gt, f"ground-truth pose of image {i}") for i, gt in enumerate(ground_truths)]
    preds = [
        None if p is None else check_pose(p, f"predicted pose of image {i}")
        for i, p in enumerate(predictions)
    ]
    checked: list[np.ndarray | None] = []
    for i, s in enumerate(scores if scores is not None else [None] * len(preds)):
        if s is not None:
            s = np.asarray(s, dtype=np.float64)
            if s.shape != (NUM_KEYPOINTS,) or not np.isfinite(s).all():
                raise HandsynthError(f"keypoint scores of image {i}: want 133 finite floats, got {s.shape}")
        checked.append(s)
    return gts, preds, checked


def _box_area(points: np.ndarray) -> float:
    (x0, y0), (x1, y1) = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    return float((x1 - x0) * (y1 - y0))


def coco_keypoint_sets(
    ground_truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray | None],
    part: str = "wholebody",
    scores: Sequence[np.ndarray | None] | None = None,
    area: str = "pose",
) -> tuple[dict, list[dict], int]:
    """(ground-truth dataset, prediction annotations, images skipped) in COCO's keypoint format.

    Image i has id i + 1; annotation ids start at 1, because COCOeval stores a match as the partner's
    id and reads 0 as unmatched.
    """
    indices, _ = _check_part(part)
    if area not in AREA_MODES:
        raise HandsynthError(f"DAP area must be one of {AREA_MODES}, got {area!r}")
    gts, preds, scores = check_poses(ground_truths, predictions, scores)
    images, gt_annotations, dt_annotations = [], [], []
    skipped = 0
    for i, (gt_pose, pred_pose, score) in enumerate(zip(gts, preds, scores, strict=True)):
        gt = gt_pose[indices]
        visible = gt[:, 2] > 0
        if not visible.any():
            skipped += 1
            continue
        images.append({"id": i + 1})
        whole = gt_pose[gt_pose[:, 2] > 0] if area == "pose" else gt[visible]
        x0, y0 = gt[visible, :2].min(axis=0)
        x1, y1 = gt[visible, :2].max(axis=0)
        gt_keypoints = gt.astype(np.float64)
        gt_keypoints[:, 2] = np.where(visible, 2, 0)
        gt_annotations.append(
            {
                "id": len(gt_annotations) + 1,
                "image_id": i + 1,
                "category_id": 1,
                "keypoints": gt_keypoints.ravel().tolist(),
                "num_keypoints": int(visible.sum()),
                "area": _box_area(whole),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "iscrowd": 0,
            }
        )
        if pred_pose is None:
            continue
        pred = pred_pose[indices].astype(np.float64)
        present = pred[:, 2] > 0
        if not present.any():
            continue
        pred[~present, :2] = ABSENT_COORDINATE
        (px0, py0), (px1, py1) = pred[present, :2].min(axis=0), pred[present, :2].max(axis=0)
        value = CONSTANT_SCORE if score is None else float(score[indices][present].mean())
        dt_annotations.append(
            {
                "id": len(dt_annotations) + 1,
                "image_id": i + 1,
                "category_id": 1,
                "keypoints": pred.ravel().tolist(),
                "score": value,
                "area": float((px1 - px0) * (py1 - py0)),
                "bbox": [float(px0), float(py0), float(px1 - px0), float(py1 - py0)],
            }
        )
    dataset = {"images": images, "categories": [{"id": 1, "name": "person"}], "annotations": gt_annotations}
    return dataset, dt_annotations, skipped


def dap(
    ground_truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray | None],
    part: str = "wholebody",
    scores: Sequence[np.ndarray | None] | None = None,
    area: str = "pose",
) -> dict:
    """COCO keypoint AP@[.5:.95] of `predictions` against `ground_truths` (see the module docstring).

    Returns {'value' (None when no image has a ground truth in the part), 'ap50', 'ap75', 'ar',
    'images' (evaluated), 'predictions', 'skipped_no_ground_truth', 'part', 'area', 'score'}.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, sigmas = _check_part(part)
    dataset, detections, skipped = coco_keypoint_sets(ground_truths, predictions, part, scores, area)
    result = {
        "images": len(dataset["images"]),
        "predictions": len(detections),
        "skipped_no_ground_truth": skipped,
        "part": part,
        "area": area,
        "score": "constant" if scores is None else "mean keypoint score",
    }
    if not dataset["images"]:
        return {"value": None, "ap50": None, "ap75": None, "ar": None, **result}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found = COCO()
        found.dataset = {
            "images": dataset["images"],
            "categories": dataset["categories"],
            "annotations": detections,
        }
        found.createIndex()
        evaluator = COCOeval(truth, found, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75, ar = (float(evaluator.stats[k]) for k in (0, 1, 2, 5))
    return {"value": ap, "ap50": ap50, "ap75": ap75, "ar": ar, **result}


def mpjpe(
    ground_truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray | None],
    sizes: Sequence[tuple[int, int]],
    part: str = "wholebody",
) -> dict:
    """Mean per-joint position error in normalised coordinates, with the detection rates beside it.

    `sizes`: (width, height) of each image's frame. Returns {'value' (None without a matched keypoint),
    'images' (with a ground truth in the part), 'detected_images', 'detection_rate',
    'ground_truth_keypoints', 'matched_keypoints', 'keypoint_rate', 'skipped_no_ground_truth', 'part'}.
    """
    indices, _ = _check_part(part)
    gts, preds, _ = check_poses(ground_truths, predictions)
    if len(sizes) != len(gts):
        raise HandsynthError(f"MPJPE: {len(gts)} poses but {len(sizes)} image sizes")
    distances: list[np.ndarray] = []
    images = detected = gt_keypoints = skipped = 0
    for i, (gt_pose, pred_pose, size) in enumerate(zip(gts, preds, sizes, strict=True)):
        width, height = size
        if not (width > 0 and height > 0):
            raise HandsynthError(f"MPJPE: image {i} has size {size}; want a positive (width, height)")
        gt = gt_pose[indices]
        visible = gt[:, 2] > 0
        if not visible.any():
            skipped += 1
            continue
        images += 1
        gt_keypoints += int(visible.sum())
        if pred_pose is None:
            continue
        pred = pred_pose[indices]
        if not (pred[:, 2] > 0).any():
            continue
        detected += 1
        both = visible & (pred[:, 2] > 0)
        scale = np.array([width, height], dtype=np.float64)
        offset = (pred[both, :2].astype(np.float64) - gt[both, :2]) / scale
        distances.append(np.linalg.norm(offset, axis=1))
    matched = np.concatenate(distances) if distances else np.zeros(0)
    return {
        "value": float(matched.mean()) if len(matched) else None,
        "images": images,
        "detected_images": detected,
        "detection_rate": detected / images if images else None,
        "ground_truth_keypoints": gt_keypoints,
        "matched_keypoints": len(matched),
        "keypoint_rate": len(matched) / gt_keypoints if gt_keypoints else None,
        "skipped_no_ground_truth": skipped,
        "part": part,
    }


def pose_metrics(
    ground_truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray | None],
    sizes: Sequence[tuple[int, int]],
    scores: Sequence[np.ndarray | None] | None = None,
    area: str = "pose",
) -> dict[str, dict]:
    """{'dap', 'dap_hands', 'mpjpe', 'mpjpe_hands'}: the four pose metrics of seed 004's Table I."""
    return {
        "dap": dap(ground_truths, predictions, "wholebody", scores, area),
        "dap_hands": dap(ground_truths, predictions, "hands", scores, area),
        "mpjpe": mpjpe(ground_truths, predictions, sizes, "wholebody"),
        "mpjpe_hands": mpjpe(ground_truths, predictions, sizes, "hands"),
    }
