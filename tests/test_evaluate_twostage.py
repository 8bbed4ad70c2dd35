"""The two-stage evaluation on real HaGRID photos, with an injected detector and segmenter that return
known poses and masks (the metric code is what is under test), a random Inception and a tiny CLIP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics, pose_metrics
from handsynth.perception.wholebody import HAND_INDICES, empty_pose
from handsynth.tiny.inception import write_random_inception
from handsynth.twostage import evaluate as ets

REAL = ["call", "four", "like", "mute", "ok", "palm"]
GENERATED = ["dislike", "fist", "one", "peace", "stop"]
FRAME = 256  # the ground-truth poses' frame; the generated images are half that size


def _digest(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _central_mask(rgb: np.ndarray) -> np.ndarray:
    """A person mask: the image's central half."""
    h, w = rgb.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    return mask


@pytest.fixture(scope="module")
def setup(hagrid_mini, tmp_path_factory) -> dict:
    """A two-stage images.jsonl (6 real photos as 'test', 1 as 'train'), 5 generated images (other
    photos, 128 px) with ground-truth poses in a 256 px frame, and what a detector finds on each."""
    from handsynth.tiny.clip import write_tiny_clip

    root = tmp_path_factory.mktemp("twostage-eval")
    rng = np.random.default_rng(0)
    rows = []
    for i, gesture in enumerate([*REAL, "holy"]):
        rel = f"images/{i:03d}.png"
        photo = Image.open(next((hagrid_mini / "images" / gesture).glob("*.jpg"))).convert("RGB")
        files.save_image(root / "data" / rel, photo.resize((96, 96)))
        truth = empty_pose()
        truth[:, :2] = rng.uniform(10, 86, (133, 2))
        truth[:, 2] = 2
        body = i not in (0, 3)
        if not body:  # a close-up: hands and face only
            truth[:23, 2] = 0
        row = {"key": f"k{i}", "split": "test" if i < 6 else "train", "image": rel, "gesture": gesture}
        rows.append({**row, "keypoints": truth.tolist(), "width": 96, "height": 96, "body": body})
    files.write_jsonl(root / "data" / "images.jsonl", rows)

    records, detections = [], {}
    for i, gesture in enumerate(GENERATED):
        photo = Image.open(next((hagrid_mini / "images" / gesture).glob("*.jpg"))).convert("RGB")
        path = root / "generated" / f"{i:03d}.png"
        files.save_image(path, photo.resize((FRAME // 2, FRAME // 2)))
        truth = empty_pose()
        truth[:, :2] = rng.uniform(40, 220, (133, 2))
        truth[:, 2] = 2
        truth[23:91, 2] = 0  # no face in the ground truth
        # found at half size, shifted by i px there: i * 2 px in the ground truth's frame
        found = truth.copy()
        found[:, :2] = truth[:, :2] / 2 + i
        if i == 3:
            found = None  # nothing detected
        elif i == 2:
            found[HAND_INDICES, 2] = 0  # a body without hands
        rgb = files.load_rgb(path)
        detections[_digest(rgb)] = found
        records.append(
            {
                "key": f"g{i}",
                "image": str(path),
                "prompt": f"a person, {gesture} gesture, {i}",
                "keypoints": truth,
            }
        )
        records[-1].update(width=FRAME, height=FRAME)
    return {
        "root": root,
        "records": records,
        "detections": detections,
        "weights": write_random_inception(root / "weights" / inception.WEIGHTS_NAME, seed=0),
        "clip": write_tiny_clip(root / "clip", seed=0),
    }


def _config(setup: dict) -> Config:
    config = Config()
    config.run.output_dir = str(setup["root"] / "run")
    config.run.device = "cpu"
    config.evaluate.inception_weights = str(setup["weights"])
    config.evaluate.kid_subsets = 10
    config.evaluate.kid_subset_size = 4
    config.evaluate.clip_model = str(setup["clip"])
    config.evaluate.grid_images = 4
    return config


def _detections(setup: dict, records: list[dict] | None = None) -> ets.Detections:
    """What the detector found on each generated image, as the pose extraction gives it."""
    poses = []
    for record in records or setup["records"]:
        rgb = files.load_rgb(record["image"])
        found = setup["detections"][_digest(rgb)]
        keypoints = None if found is None else found.tolist()
        poses.append({"keypoints": keypoints, "scores": None, "width": rgb.shape[1], "height": rgb.shape[0]})
    return ets.Detections(poses)


def _central_masks(setup: dict, real=None, generated=None) -> ets.FgMasks:
    n_real = len(ets.real_image_paths(setup["root"] / "data"))
    return ets.FgMasks(
        "central half",
        [_central_mask] * n_real if real is None else real,
        [_central_mask] * len(setup["records"]) if generated is None else generated,
        "central",
    )


@pytest.mark.slow
def test_every_metric_equals_its_independent_computation(setup, monkeypatch):
    root, records = setup["root"], setup["records"]
    config = _config(setup)
    out = root / "run" / "eval-twostage"
    report = ets.evaluate_twostage(
        config, records, root / "data" / "images.jsonl", out, _detections(setup), _central_masks(setup)
    )
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    m = report["metrics"]
    assert set(m) == set(ets.TWOSTAGE_METRICS)
    assert report["real"]["images"] == 6 and report["generated"]["images"] == 5

    # pose metrics: the detections rescaled to the 256 px frame are the truth shifted by 2 i px
    truths = [r["keypoints"] for r in records]
    expected = []
    for i, truth in enumerate(truths):
        found = None if i == 3 else truth.copy()
        if found is not None:
            found[:, :2] += 2 * i
            if i == 2:
                found[HAND_INDICES, 2] = 0
        expected.append(found)
    poses = pose_metrics.pose_metrics(truths, expected, [(FRAME, FRAME)] * 5, area=Config().evaluate.dap_area)
    for key in ("dap", "dap_hands", "mpjpe", "mpjpe_hands"):
        assert m[key] == pytest.approx(poses[key]), key
    assert m["mpjpe"]["detection_rate"] == 0.8 and m["mpjpe_hands"]["detection_rate"] == 0.6
    # shifts of 0, 2, 4 and 8 px along both axes in a 256 px frame, pooled over the matched keypoints:
    # 65 per image (no face), 23 on image 2 (no hands)
    pooled = (0 * 65 + 2 * 65 + 4 * 23 + 8 * 65) / (3 * 65 + 23)
    assert m["mpjpe"]["value"] == pytest.approx(pooled * np.sqrt(2) / 256, rel=1e-5)
    assert (
        0.0 < m["dap"]["value"] < 1.0 and m["dap"]["predictions"] == 4 and m["dap_hands"]["predictions"] == 3
    )
    detections = files.read_jsonl(out / "detections.jsonl")
    assert detections[3]["keypoints"] is None
    np.testing.assert_allclose(np.array(detections[1]["keypoints"]), expected[1], atol=1e-4)

    # FID at the 192-d tap equals the generic FID on features from a 192-d network, and so at 2048
    real_paths = ets.real_image_paths(root / "data")
    fake_paths = [r["image"] for r in records]
    assert m["fid"]["feature_dim"] == 192 and set(m["fid"]["by_dim"]) == {"192", "768", "2048"}
    for dim in (192, 2048):
        model = inception.load_inception(setup["weights"], feature_dim=dim)
        real_f, _ = inception.extract_features(model, real_paths)
        fake_f, _ = inception.extract_features(model, fake_paths)
        generic = metrics.fid_from_features(real_f, fake_f)
        assert m["fid"]["by_dim"][str(dim)] == pytest.approx(generic, rel=1e-6)
        kid = metrics.kid(real_f, fake_f, 10, 4, seed=0)["mean"]
        assert m["kid"]["by_dim"][str(dim)]["mean"] == pytest.approx(kid, rel=1e-5, abs=1e-9)
        if dim == 192:
            assert m["fid"]["value"] == pytest.approx(generic, rel=1e-6)
            assert m["kid"]["mean"] == pytest.approx(kid, rel=1e-5, abs=1e-9)
            # fg: the same, on images whose outside of the central half is black
            blacked = []
            for path in [*real_paths, *fake_paths]:
                rgb = files.load_rgb(path)
                rgb[~_central_mask(rgb)] = 0
                blacked.append(rgb)
            real_fg, _ = inception.extract_features(model, blacked[:6])
            fake_fg, _ = inception.extract_features(model, blacked[6:])
            fg = metrics.fid_from_features(real_fg, fake_fg)
            assert m["fid_fg"]["value"] == pytest.approx(fg, rel=1e-6)
            assert abs(fg - generic) > 1e-3 * generic  # removing the background changed the features
    assert m["fid_fg"]["left_out"] == {"real": 0, "generated": 0} == report["fg_left_out"]
    assert report["settings"]["fg_masks"] == "central half"
    assert m["kid_fg"]["real"] == 6 and m["kid_fg"]["generated"] == 5

    clip = metrics.clip_similarity(fake_paths, [r["prompt"] for r in records], str(setup["clip"]), "cpu")
    assert m["clipsim"]["clipsim"] == pytest.approx(clip["clipsim"], rel=1e-6)

    page = (out / "report.md").read_text()
    for label in (
        "DAP",
        "DAP hands",
        "MPJPE hands",
        "FID (192-d)",
        "KID fg (192-d)",
        "CLIPSIM",
        "samples.png",
    ):
        assert label in page
    grid = Image.open(out / "samples.png")
    assert grid.size == (4 * ets.GRID_CELL, 3 * ets.GRID_CELL)
    # column 3 had no detection: its middle cell is the image darkened to a third
    cell = np.asarray(grid)[ets.GRID_CELL : 2 * ets.GRID_CELL, 3 * ets.GRID_CELL : 4 * ets.GRID_CELL]
    top = np.asarray(grid)[: ets.GRID_CELL, 3 * ets.GRID_CELL : 4 * ets.GRID_CELL].astype(int)
    assert cell.max() <= 255 // 3 + 1 and top.max() > 200
    assert (
        ets.headline(report)["fid"] == m["fid"]["value"]
        and ets.headline(report)["kid_fg"] == m["kid_fg"]["mean"]
    )

    # a second evaluation against the same real set reads none of its images again
    seen = []
    original = inception.extract_tap_features

    def counting(model, images, *args, **kwargs):
        seen.extend(str(p) for p in images if isinstance(p, str | Path))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(inception, "extract_tap_features", counting)
    again = ets.evaluate_twostage(
        config,
        records[:3],
        root / "data",
        root / "run" / "again",
        _detections(setup, records[:3]),
        wanted=["fid"],
    )
    assert seen == fake_paths[:3] and set(again["metrics"]) == {"fid"}
    assert again["metrics"]["fid"]["real"] == 6


def test_skipped_poses_are_counted_in_the_report(setup, tmp_path):
    records, manifest = setup["records"], setup["root"] / "data" / "images.jsonl"
    report = ets.evaluate_twostage(
        _config(setup), records, manifest, tmp_path, _detections(setup), wanted=["mpjpe"], skipped_poses=2
    )
    assert report["generated"]["images"] == 5 and report["generated"]["skipped_poses"] == 2
    assert (
        "Generated: 5 images; 2 poses skipped, records.jsonl says why" in (tmp_path / "report.md").read_text()
    )


def test_remove_background_reads_every_mask_kind(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) + 1
    keep = np.array([[True, False, True], [False, False, True]])
    expected = np.where(keep[..., None], rgb, 0)
    png = tmp_path / "mask.png"
    Image.fromarray(keep.astype(np.uint8) * 255).save(png)
    for mask in (
        keep,
        keep.astype(np.uint8),
        keep.astype(np.uint8) * 255,
        keep * 0.9 + 0.05,
        png,
        keep[..., None],
    ):
        np.testing.assert_array_equal(ets.remove_background(rgb, mask), expected)
    grey = ets.remove_background(rgb, keep, background=(7, 8, 9))
    np.testing.assert_array_equal(grey[0, 1], [7, 8, 9])
    np.testing.assert_array_equal(grey[0, 0], rgb[0, 0])
    assert not ets.remove_background(rgb, None).any()  # no person found: all background
    with pytest.raises(HandsynthError, match=r"person mask of photo.png is \(3, 2\), the image is \(2, 3\)"):
        ets.remove_background(rgb, keep.T, name="photo.png")


def test_foreground_loaders_leave_out_images_without_a_mask(tmp_path):
    rgbs = [np.full((4, 4, 3), 100 + i, np.uint8) for i in range(4)]
    paths = []
    for i, rgb in enumerate(rgbs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    calls = []
    made = lambda rgb: calls.append(int(rgb[0, 0, 0])) or rgb[..., 0] > 102  # noqa: E731
    masks = [np.eye(4, dtype=bool), None, made, made]
    loaders, kept = ets.foreground_loaders(paths, masks)
    assert kept == [0, 2, 3] and len(loaders) == 3 and calls == []  # nothing is read before Inception asks
    np.testing.assert_array_equal(loaders[0]()[..., 0], np.eye(4) * 100)
    with pytest.raises(HandsynthError, match="2.png: no person in its mask"):
        loaders[1]()  # a made mask that is empty: skipped by Inception, never scored black
    assert (loaders[2]() == 103).all() and calls == [102, 103]
    with pytest.raises(HandsynthError, match="4 images but 2 masks"):
        ets.foreground_loaders(paths, masks[:2])


@pytest.mark.slow
def test_images_without_a_person_mask_are_left_out_of_the_fg_sets_and_counted(setup):
    root, records = setup["root"], setup["records"]
    config = _config(setup)
    config.evaluate.cache_dir = str(root / "fg-cache")
    real_paths = ets.real_image_paths(root / "data")
    empty = lambda rgb: np.zeros(rgb.shape[:2], bool)  # noqa: E731
    real = [_central_mask] * 6
    real[1] = None
    generated = [_central_mask, _central_mask, empty, _central_mask, _central_mask]
    fg = _central_masks(setup, real, generated)
    out = root / "run" / "left-out"
    report = ets.evaluate_twostage(config, records, root / "data", out, None, fg, wanted=["fid_fg", "kid_fg"])
    m = report["metrics"]
    assert report["fg_left_out"] == {"real": 1, "generated": 1} == m["fid_fg"]["left_out"]
    assert m["fid_fg"]["real"] == 5 and m["fid_fg"]["generated"] == 4

    def blacked(paths):
        images = []
        for path in paths:
            rgb = files.load_rgb(path)
            rgb[~_central_mask(rgb)] = 0
            images.append(rgb)
        return images

    model = inception.load_inception(setup["weights"], feature_dim=192)
    real_fg, _ = inception.extract_features(model, blacked([p for i, p in enumerate(real_paths) if i != 1]))
    fake_fg, _ = inception.extract_features(
        model, blacked([r["image"] for i, r in enumerate(records) if i != 2])
    )
    assert m["fid_fg"]["value"] == pytest.approx(metrics.fid_from_features(real_fg, fake_fg), rel=1e-6)
    assert "without a person mask, left out: 1 real, 1 generated" in (out / "report.md").read_text()
    # the real fg features come from the cache the second time; another set of masks is another entry
    cached = sorted((root / "fg-cache").glob("*.npz"))
    ets.evaluate_twostage(config, records, root / "data", out, None, fg, wanted=["fid_fg"])
    assert sorted((root / "fg-cache").glob("*.npz")) == cached
    ets.evaluate_twostage(config, records, root / "data", out, None, _central_masks(setup), wanted=["fid_fg"])
    assert len(list((root / "fg-cache").glob("*.npz"))) == len(cached) + 1


def test_detections_are_rescaled_to_the_truth_frame():
    found = empty_pose()
    found[0] = (10, 20, 2)
    records = [{"image": "a.png", "width": 200, "height": 200}] * 2
    detections = ets.Detections(
        [{"keypoints": found.tolist(), "scores": [0.5] * 133, "width": 100, "height": 50}, None]
    )
    predictions, scores = ets.in_truth_frames(records, detections)
    np.testing.assert_allclose(predictions[0][0], (20, 80, 2))  # x * 200/100, y * 200/50
    assert scores[0][0] == 0.5 and predictions[1] is None and scores[1] is None
    with pytest.raises(HandsynthError, match="pose detected on a.png"):
        ets.in_truth_frames(
            records[:1], ets.Detections([{"keypoints": [[0, 0, 2]], "width": 1, "height": 1}])
        )
    with pytest.raises(HandsynthError, match="2 generated images but 1 detections"):
        ets.in_truth_frames(records, ets.Detections([None]))


def test_bad_records_settings_and_manifests_are_named(tmp_path):
    record = {"image": "x.png", "prompt": "p", "keypoints": empty_pose(), "width": 64, "height": 64}
    assert ets.check_records([record])[0]["keypoints"].shape == (133, 3)
    with pytest.raises(HandsynthError, match=r"record 0 \(x.png\) lacks prompt"):
        ets.check_records([{**record, "prompt": None}])
    with pytest.raises(HandsynthError, match="record 0 .* positive integers"):
        ets.check_records([{**record, "width": "wide"}])
    with pytest.raises(HandsynthError, match="ground truth of record 0"):
        ets.check_records([{**record, "keypoints": [[0, 0, 2]]}])
    with pytest.raises(HandsynthError, match="no generated images"):
        ets.check_records([])
    with pytest.raises(HandsynthError, match="handsynth pose build"):
        ets.real_image_paths(tmp_path)
    files.write_jsonl(tmp_path / "images.jsonl", [{"split": "train", "image": "a.png"}])
    with pytest.raises(HandsynthError, match="no 'test' rows"):
        ets.real_image_paths(tmp_path)
    config = Config()
    with pytest.raises(HandsynthError, match="unknown metrics"):
        ets.evaluate_twostage(config, [record], tmp_path, tmp_path / "out", None, wanted=["fid_h"])
    with pytest.raises(HandsynthError, match="need the detected poses"):
        ets.evaluate_twostage(config, [record], tmp_path, tmp_path / "out", None)
    config.evaluate.twostage_feature_dims = [100]
    with pytest.raises(HandsynthError, match="twostage_feature_dims"):
        ets.evaluate_twostage(config, [record], tmp_path, tmp_path / "out", None)
    # the settings both evaluations read are checked here too: a KID subset of 1 divides by zero
    for key, value, message in [
        ("evaluate.kid_subset_size", 1, "kid_subset_size >= 2"),
        ("evaluate.kid_estimator", "biased", "kid_estimator must be one of"),
        ("evaluate.fg_masks", "rembg", "fg_masks must be one of"),
    ]:
        config = Config()
        config.set(key, value)
        with pytest.raises(HandsynthError, match=message):
            ets.check_twostage_settings(config, ets.TWOSTAGE_METRICS)


def test_evaluate_command_passes_metrics_to_the_two_stage_method_and_refuses_hand1000_flags(
    tmp_path, monkeypatch, capsys
):
    from handsynth.cli import main

    asked = []
    monkeypatch.setattr(ets, "evaluate_samples", lambda *a, **k: asked.append(a[4]) or {"metrics": {}})
    out = ["--output-dir", str(tmp_path)]
    assert main(["evaluate", "--method", "twostage", "--metrics", "fid,dap", *out]) == 0
    assert main(["evaluate", "--method", "twostage", *out]) == 0
    assert asked == [["fid", "dap"], None]  # None: evaluate.twostage_metrics
    assert main(["evaluate", "--method", "twostage", "--gesture", "call", *out]) == 2
    assert main(["evaluate", "--method", "twostage", "--feature-dim", "768", *out]) == 2
    err = capsys.readouterr().err
    assert "--gesture is for --method hand1000" in err and "twostage_feature_dims" in err


def _sample_lines(setup: dict, samples: Path, n: int) -> list[dict]:
    """The first `n` generated images in a samples folder, with their records.jsonl lines (not written)."""
    lines = []
    for i, record in enumerate(setup["records"][:n]):
        files.save_image(samples / f"images/{i}.png", Image.open(record["image"]))
        lines.append({**record, "image": f"images/{i}.png", "keypoints": record["keypoints"].tolist()})
    return lines


@pytest.mark.slow
def test_evaluate_samples_runs_holistic_once_per_image_and_feeds_poses_masks_and_grid(
    setup, tmp_path, monkeypatch
):
    from collections import Counter

    from handsynth.perception.pose import PoseDetector

    root = setup["root"]
    samples = tmp_path / "samples"
    lines = _sample_lines(setup, samples, 3)
    files.write_jsonl(samples / "records.jsonl", lines)
    calls = Counter()
    detect = PoseDetector.detect
    monkeypatch.setattr(
        PoseDetector, "detect", lambda self, rgb: calls.update([_digest(rgb)]) or detect(self, rgb)
    )
    config = _config(setup)
    config.pose.workers = 1
    config.evaluate.cache_dir = str(tmp_path / "cache")
    report = ets.evaluate_samples(config, samples, root / "data", tmp_path / "eval", progress=False)
    real = [files.load_rgb(p) for p in ets.real_image_paths(root / "data")]
    generated = [files.load_rgb(samples / line["image"]) for line in lines]
    # one Holistic run per image: for DAP/MPJPE, the fg mask and the grid together
    assert set(calls) == {_digest(rgb) for rgb in real + generated} and set(calls.values()) == {1}
    with PoseDetector(segmentation=True) as fresh:
        found = [fresh.detect(rgb) for rgb in real + generated]
    detections = files.read_jsonl(tmp_path / "eval" / "detections.jsonl")
    for pose, line in zip(found[6:], detections, strict=True):
        assert (line["keypoints"] is None) == (not pose.found)
        if pose.found:  # in the 256 px frame of the ground truth, from the 128 px image
            np.testing.assert_allclose(
                np.array(line["keypoints"])[:, :2], pose.keypoints[:, :2] * 2, atol=0.01
            )
    without = [pose.person_mask() is None or not pose.person_mask().any() for pose in found]
    assert report["fg_left_out"] == {"real": sum(without[:6]), "generated": sum(without[6:])}
    assert report["metrics"]["kid_fg"]["real"] == 6 - sum(without[:6])
    calls.clear()
    ets.evaluate_samples(config, samples, root / "data", tmp_path / "again", progress=False)
    assert not calls  # every pose and mask from the cache


@pytest.mark.slow
def test_sam_person_masks_are_prompted_with_the_known_pose(setup, tmp_path, monkeypatch):
    from handsynth.perception.pose import PoseDetector
    from handsynth.perception.sam import SamSegmenter
    from handsynth.tiny.sam import write_tiny_sam

    root = setup["root"]
    samples = tmp_path / "samples"
    lines = _sample_lines(setup, samples, 2)
    lines[1]["keypoints"] = np.where(
        np.arange(133)[:, None] < 23, 0, np.array(lines[1]["keypoints"])
    ).tolist()
    files.write_jsonl(samples / "records.jsonl", lines)
    prompts = []
    segment = SamSegmenter.segment_person
    monkeypatch.setattr(
        SamSegmenter,
        "segment_person",
        lambda self, rgb, pose, **k: prompts.append(pose) or segment(self, rgb, pose, **k),
    )
    monkeypatch.setattr(PoseDetector, "detect", lambda self, rgb: pytest.fail("Holistic is not needed"))
    config = _config(setup)
    config.evaluate.fg_masks = "sam"
    config.pose.sam_model = str(write_tiny_sam(tmp_path / "sam"))
    config.evaluate.cache_dir = str(tmp_path / "cache")
    report = ets.evaluate_samples(
        config, samples, root / "data", tmp_path / "eval", ["fid_fg"], progress=False
    )
    rows = [r for r in files.read_jsonl(root / "data" / "images.jsonl") if r["split"] == "test"]
    # real: the ground-truth pose of each row with a body; generated: the pose it was made from, at the
    # image's 128 px; the second generated pose has no body (hands and face only): no mask, left out
    expected = [np.array(r["keypoints"]) for r in rows if r["body"]] + [
        np.array(lines[0]["keypoints"]) / [2, 2, 1]
    ]
    assert len(prompts) == len(expected)
    for pose, want in zip(prompts, expected, strict=True):
        np.testing.assert_allclose(pose, want, atol=1e-4)
    assert report["fg_left_out"]["real"] >= sum(not r["body"] for r in rows)
    assert report["fg_left_out"]["generated"] >= 1
    assert "SAM" in report["settings"]["fg_masks"]


def test_the_config_asks_every_two_stage_metric_by_default():
    # config.py cannot import the evaluation (it imports config), so its default list is checked here
    assert Config().evaluate.twostage_metrics == list(ets.TWOSTAGE_METRICS)


def test_a_skipped_fid_reads_not_computed_with_its_reason_in_report_md():
    reason = "needs 2+ images per set, got 1 real, 1 generated"
    report = {
        "real": {"manifest": "images.jsonl", "split": "test", "images": 1},
        "generated": {"images": 1},
        "settings": {},
        "metrics": {"fid": {"skipped": reason, "real": 1, "generated": 1, "feature_dim": 192}},
    }
    assert f"| FID | not computed | {reason} |" in ets.markdown(report)
