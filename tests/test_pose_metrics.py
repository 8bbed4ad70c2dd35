"""DAP against pycocotools called directly and against a numpy OKS-AP written here; MPJPE by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from handsynth.errors import HandsynthError
from handsynth.evaluation import pose_metrics
from handsynth.perception.wholebody import HAND_INDICES, HAND_SIGMAS, LEFT_HAND, SIGMAS, empty_pose

THRESHOLDS = np.linspace(0.5, 0.95, 10)
PARTS = [("wholebody", SIGMAS, np.arange(133)), ("hands", HAND_SIGMAS, HAND_INDICES)]


def random_poses(n: int, seed: int) -> tuple[list, list, list]:
    """Ground truths inside [100, 400] px with ~20% keypoints absent; predictions = truth + noise of
    growing size, every 5th image undetected and ~3% predicted keypoints absent; random scores."""
    rng = np.random.default_rng(seed)
    truths, predictions, scores = [], [], []
    for i in range(n):
        gt = empty_pose()
        gt[:, :2] = rng.uniform(100, 400, (133, 2))
        gt[:, 2] = np.where(rng.random(133) < 0.8, 2, 0)
        truths.append(gt)
        if i % 5 == 4:
            predictions.append(None)
            scores.append(None)
            continue
        pred = gt.copy()
        pred[:, :2] += rng.normal(0, 0.2 + 0.3 * i, (133, 2))
        pred[:, 2] = np.where(rng.random(133) < 0.97, 2, 0)
        pred[pred[:, 2] == 0, :2] = 0.0
        predictions.append(pred)
        scores.append(rng.uniform(0, 1, 133))
    return truths, predictions, scores


def pycocotools_directly(truths, predictions, scores, sigmas, indices) -> np.ndarray:
    """COCOeval as a user would call it: a JSON ground-truth dataset and loadRes on a result list."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (gt, pred) in enumerate(zip(truths, predictions, strict=True)):
        part = gt[indices]
        vis = part[:, 2] > 0
        if not vis.any():
            continue
        images.append({"id": 100 + i})
        w, h = np.ptp(part[vis, 0]), np.ptp(part[vis, 1])
        annotations.append(
            {
                "id": 1000 + i,
                "image_id": 100 + i,
                "category_id": 1,
                "keypoints": [float(v) for v in part.ravel()],
                "num_keypoints": int(vis.sum()),
                "area": float(w * h),
                "bbox": [float(part[vis, 0].min()), float(part[vis, 1].min()), float(w), float(h)],
                "iscrowd": 0,
            }
        )
        if pred is not None and (pred[indices, 2] > 0).any():
            present = pred[indices, 2] > 0
            score = float(scores[i][indices][present].mean()) if scores else 1.0
            flat = [float(v) for v in pred[indices].ravel()]
            results.append({"image_id": 100 + i, "category_id": 1, "keypoints": flat, "score": score})
    truth = COCO()
    truth.dataset = json.loads(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "p"}]})
    )
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(json.loads(json.dumps(results))), "keypoints")
    evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize(("part", "sigmas", "indices"), PARTS)
def test_dap_equals_pycocotools_called_directly(part, sigmas, indices):
    truths, predictions, scores = random_poses(30, seed=1)
    truths[3][indices, 2] = 0  # a ground truth with nothing to compare in this part: skipped by both
    stats = pycocotools_directly(truths, predictions, scores, sigmas, indices)
    ours = pose_metrics.dap(truths, predictions, part, scores, area="part")
    assert ours["value"] == pytest.approx(stats[0], abs=1e-12)
    others = (ours["ap50"], ours["ap75"], ours["ar"])
    assert others == pytest.approx((stats[1], stats[2], stats[5]), abs=1e-12)
    assert ours["images"] == 29 and ours["skipped_no_ground_truth"] == 1 and ours["predictions"] == 23
    assert 0.05 < ours["value"] < 0.95  # the noise spans the thresholds, so the comparison means something
    # without scores every prediction ties at 1.0 and keeps the images' order, as in pycocotools
    stats = pycocotools_directly(truths, predictions, None, sigmas, indices)
    assert pose_metrics.dap(truths, predictions, part, area="part")["value"] == pytest.approx(
        stats[0], abs=1e-12
    )


def numpy_oks(gt: np.ndarray, pred: np.ndarray, sigmas: np.ndarray, area: float) -> float:
    """OKS = mean over the truth's visible keypoints of exp(-d^2 / (2 s^2 k^2)), s^2 = area, k = 2 sigma;
    a keypoint the prediction lacks scores 0."""
    vis = gt[:, 2] > 0
    d2 = ((pred[:, :2].astype(np.float64) - gt[:, :2]) ** 2).sum(axis=1)
    terms = np.where(pred[:, 2] > 0, np.exp(-d2 / (2 * area * (2 * sigmas) ** 2)), 0.0)
    return float(terms[vis].mean())


def numpy_ap(oks: list[float | None], scores: list[float]) -> float:
    """COCO AP@[.5:.95] for one truth per image and at most one prediction (oks None: no prediction):
    stable sort by score, precision envelope, 101 recall points, mean over the 10 thresholds."""
    kept = [i for i, o in enumerate(oks) if o is not None]
    order = sorted(kept, key=lambda i: -scores[i])  # sorted() is stable, as COCO's mergesort
    aps = []
    for t in THRESHOLDS:
        tp = np.cumsum([oks[i] >= t for i in order])
        fp = np.cumsum([oks[i] < t for i in order])
        recall = tp / len(oks)
        precision = np.maximum.accumulate((tp / np.maximum(tp + fp, 1e-300))[::-1])[::-1]
        at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        aps.append(np.mean([precision[j] if j < len(precision) else 0.0 for j in at]))
    return float(np.mean(aps))


def test_perfect_prediction_gives_one_and_a_known_shift_gives_the_hand_computed_oks():
    gt = empty_pose()
    gt[LEFT_HAND, 0] = np.linspace(200, 300, 21)  # the left hand's box: 100 x 80 px, area 8000
    gt[LEFT_HAND, 1] = np.linspace(150, 230, 21)
    gt[LEFT_HAND, 2] = 2
    gt[5] = (400, 100, 2)  # a shoulder, so the whole-body box is 200 x 130
    # 1.0 up to COCOeval's float mean over 10 x 101 precisions
    assert pose_metrics.dap([gt], [gt.copy()])["value"] == pytest.approx(1.0, abs=1e-15)
    assert pose_metrics.dap([gt], [gt.copy()], "hands")["value"] == pytest.approx(1.0, abs=1e-15)

    shifted = gt.copy()
    shifted[:, 0] += 3.0
    # hands: the 21 left-hand terms exp(-9 / (2 * 8000 * (2 sigma)^2)) by hand,
    # e.g. sigma .029: exp(-9 / 53.824) = 0.8460
    hand_terms = np.exp(-9.0 / (2 * 8000 * (2 * HAND_SIGMAS[:21]) ** 2))
    assert hand_terms[0] == pytest.approx(0.846021, abs=1e-6)
    oks = float(hand_terms.mean())
    assert oks == pytest.approx(numpy_oks(gt[HAND_INDICES], shifted[HAND_INDICES], HAND_SIGMAS, 8000))
    assert oks == pytest.approx(0.787432, abs=1e-6)
    # a lone image matches at every threshold <= OKS: AP = that share of the 10 thresholds
    part_dap = pose_metrics.dap([gt], [shifted], "hands", area="part")["value"]
    assert part_dap == pytest.approx((THRESHOLDS <= oks).mean())
    assert part_dap == pytest.approx(0.6)  # .50 to .75
    # area 'pose': the same keypoints scored against the whole pose's box, 200 x 130
    loose = numpy_oks(gt[HAND_INDICES], shifted[HAND_INDICES], HAND_SIGMAS, 200 * 130)
    assert loose == pytest.approx(0.927899, abs=1e-6)
    loose_dap = pose_metrics.dap([gt], [shifted], "hands", area="pose")["value"]
    assert loose_dap == pytest.approx(0.9)  # .50 to .90
    # the default is the evaluation's (evaluate.dap_area), so a direct caller gets what it reports
    assert pose_metrics.dap([gt], [shifted], "hands")["value"] == loose_dap
    assert pose_metrics.pose_metrics([gt], [shifted], [(512, 512)])["dap_hands"]["value"] == loose_dap
    # whole body: the shoulder adds its own term, all against the 200 x 130 box
    body = numpy_oks(gt, shifted, SIGMAS, 200 * 130)
    assert pose_metrics.dap([gt], [shifted])["value"] == pytest.approx((THRESHOLDS <= body).mean())


def test_dap_agrees_with_numpy_oks_ap_over_several_images():
    truths, predictions, scores = random_poses(20, seed=2)
    for part, sigmas, indices in PARTS:
        oks, ranks = [], []
        for gt, pred, score in zip(truths, predictions, scores, strict=True):
            g = gt[indices]
            vis = g[:, 2] > 0
            area = float(np.ptp(g[vis, 0]) * np.ptp(g[vis, 1]))
            oks.append(None if pred is None else numpy_oks(g, pred[indices], sigmas, area))
            present = None if pred is None else pred[indices, 2] > 0
            ranks.append(0.0 if pred is None else float(score[indices][present].mean()))
        expected = numpy_ap(oks, ranks)
        ours = pose_metrics.dap(truths, predictions, part, scores, area="part")["value"]
        assert ours == pytest.approx(expected, abs=1e-9)


def test_misses_skips_and_absent_predicted_keypoints():
    gt = empty_pose()
    gt[0] = (0.0, 0.0, 2)  # a keypoint at the origin, where an absent prediction's zeros would land
    gt[5] = (100.0, 100.0, 2)
    pred = gt.copy()
    pred[0] = (0.0, 0.0, 0)  # not detected: it must not count as a hit at (0, 0)
    # OKS = (0 + 1) / 2 = 0.5: matched only at the 0.5 threshold
    assert pose_metrics.dap([gt], [pred])["value"] == pytest.approx(0.1)
    # an undetected image is a miss: one perfect image of two gives precision 1 up to recall 0.5
    assert pose_metrics.dap([gt, gt], [gt, None])["value"] == pytest.approx(51 / 101)
    # a truth without keypoints leaves the evaluation, whatever was predicted on it
    result = pose_metrics.dap([gt, empty_pose()], [gt, gt])
    assert result["value"] == pytest.approx(1.0)
    assert result["images"] == 1 and result["skipped_no_ground_truth"] == 1
    # hands: a body found without hands is no hand detection (a miss, not a false positive)
    hands_gt = gt.copy()
    hands_gt[HAND_INDICES] = (150, 150, 2)
    hands_gt[HAND_INDICES, 0] += np.arange(42)
    hands_gt[HAND_INDICES, 1] += np.arange(42) % 7
    result = pose_metrics.dap([hands_gt, hands_gt], [hands_gt, gt], "hands")
    assert result["value"] == pytest.approx(51 / 101) and result["predictions"] == 1
    none = pose_metrics.dap([empty_pose()], [None])
    assert none["value"] is None and none["skipped_no_ground_truth"] == 1


def test_bad_pose_input_is_named():
    gt = empty_pose()
    with pytest.raises(HandsynthError, match="2 ground truths but 1 predictions"):
        pose_metrics.dap([gt, gt], [gt])
    with pytest.raises(HandsynthError, match="predicted pose of image 1"):
        pose_metrics.dap([gt, gt], [gt, np.zeros((17, 3))])
    with pytest.raises(HandsynthError, match="unknown pose part 'feet'"):
        pose_metrics.dap([gt], [gt], "feet")
    with pytest.raises(HandsynthError, match="DAP area"):
        pose_metrics.dap([gt], [gt], area="box")
    with pytest.raises(HandsynthError, match="scores of image 0"):
        pose_metrics.dap([gt], [gt], scores=[np.ones(5)])
    with pytest.raises(HandsynthError, match="image 0 has size"):
        pose_metrics.mpjpe([gt], [gt], [(0, 10)])


def test_mpjpe_on_hand_made_cases():
    a, b, c, d = (empty_pose() for _ in range(4))
    pa = empty_pose()
    # image a (200 x 100): keypoint 0 moved 20 px in x -> 0.1; keypoint 1 not detected; keypoint 2 is
    # predicted but absent from the truth, so it is not counted
    a[0], a[1] = (10, 10, 2), (20, 20, 2)
    pa[0], pa[2] = (30, 10, 2), (50, 50, 2)
    b[3:6] = (40, 40, 2)  # image b: 3 keypoints, nothing detected
    pc = empty_pose()
    pc[7] = (1, 1, 2)  # image c: no truth, skipped whatever was predicted
    d[5] = (50, 50, 1)  # image d (100 x 100): labelled-not-visible still counts as present (v > 0)
    pd = empty_pose()
    pd[5] = (53, 54, 2)  # (0.03, 0.04) -> 0.05
    sizes = [(200, 100), (64, 64), (64, 64), (100, 100)]
    result = pose_metrics.mpjpe([a, b, c, d], [pa, None, pc, pd], sizes)
    assert result["value"] == pytest.approx((0.1 + 0.05) / 2)
    assert result["images"] == 3 and result["skipped_no_ground_truth"] == 1
    assert result["detected_images"] == 2 and result["detection_rate"] == pytest.approx(2 / 3)
    assert result["ground_truth_keypoints"] == 6 and result["matched_keypoints"] == 2
    assert result["keypoint_rate"] == pytest.approx(2 / 6)

    # hands: a is measured on its 42 hand points only; the body found on b has no hand -> not detected
    a[HAND_INDICES] = (100, 50, 2)
    pa[HAND_INDICES[:21]] = (100, 50, 2)  # the left hand exact
    pa[HAND_INDICES[21]] = (100, 60, 2)  # the right wrist 10 px low in a 100 px tall image -> 0.1
    b[HAND_INDICES[30]] = (10, 10, 2)
    body_only = empty_pose()
    body_only[0] = (10, 10, 2)
    hands = pose_metrics.mpjpe([a, b], [pa, body_only], [(200, 100), (64, 64)], "hands")
    assert hands["value"] == pytest.approx(0.1 / 22)
    assert hands["images"] == 2 and hands["detected_images"] == 1 and hands["detection_rate"] == 0.5
    assert hands["ground_truth_keypoints"] == 43 and hands["matched_keypoints"] == 22
    nothing = pose_metrics.mpjpe([a], [None], [(10, 10)])
    assert nothing["value"] is None and nothing["detection_rate"] == 0.0


def test_pose_metrics_gives_the_four_table_entries():
    truths, predictions, scores = random_poses(10, seed=3)
    sizes = [(512, 512)] * 10
    result = pose_metrics.pose_metrics(truths, predictions, sizes, scores)
    assert set(result) == {"dap", "dap_hands", "mpjpe", "mpjpe_hands"}
    assert result["dap_hands"] == pose_metrics.dap(truths, predictions, "hands", scores)
    assert result["mpjpe"] == pose_metrics.mpjpe(truths, predictions, sizes)
    assert result["mpjpe"]["detection_rate"] == pytest.approx(0.8)
