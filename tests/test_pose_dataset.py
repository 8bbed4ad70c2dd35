"""`handsynth pose build|merge`: the two-stage dataset from the synthetic source and from real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handsynth import files
from handsynth.cli import main
from handsynth.config import load_config
from handsynth.errors import HandsynthError
from handsynth.twostage.data import dataset as pose_dataset
from handsynth.twostage.data.crops import from_box
from handsynth.twostage.data.dataset import build_pose_dataset

SYNTHETIC = {
    "pose.gestures": ["call", "palm"],
    "data.synthetic_per_gesture": 4,
    "data.synthetic_size": 128,
    "pose.n_train": 3,
    "pose.n_test": 1,
    "pose.image_size": 64,
    "pose.crop_size": 32,
    "pose.captioner": "metadata",
    "pose.workers": 1,
}


def _config(run: Path, **overrides):
    return load_config(overrides={"run.output_dir": str(run), **SYNTHETIC, **overrides})


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    report = build_pose_dataset(_config(run), progress=False)
    return run, run / "twostage-data", report


def test_synthetic_build_needs_neither_holistic_nor_sam(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the synthetic source has its own poses and masks")

    monkeypatch.setattr("handsynth.perception.pose.PoseDetector.__init__", refuse)
    monkeypatch.setattr(pose_dataset, "make_masker", refuse)
    report = build_pose_dataset(_config(tmp_path), progress=False)  # pose.sam_model is still SAM ViT-H
    assert report["counts"]["mask_sources"] == {"synthetic": 8} and report["detections_run"] == 0


def test_synthetic_build_writes_the_contract(synthetic_build):
    run, out, report = synthetic_build
    rows = files.read_jsonl(out / "images.jsonl")
    crops = files.read_jsonl(out / "hands.jsonl")
    assert len(rows) == 8 and [r["split"] for r in rows].count("test") == 2
    source = run / "synthetic-hagrid"
    for row in rows:
        assert {"key", "split", "gesture", "image", "width", "height", "keypoints", "caption", "hand_mask",
                "person_mask", "mask_source", "hand_sources"} <= set(row)  # fmt: skip
        assert (row["width"], row["height"], row["person_mask"], row["mask_source"]) == (
            64,
            64,
            None,
            "synthetic",
        )
        assert _png(out / row["image"]).shape == (64, 64, 3)
        # the keypoints are the renderer's, carried into the square by its box in the source
        drawn = np.asarray(
            json.loads((source / "wholebody" / "train" / f"{row['gesture']}.json").read_text())[row["key"]]
        )
        x0, y0, x1, y1 = row["source_box"]
        expected = (drawn[:, :2] - (x0, y0)) * 64 / (x1 - x0)
        keypoints = np.asarray(row["keypoints"])
        np.testing.assert_allclose(keypoints[:, :2], expected, atol=2e-3)
        np.testing.assert_array_equal(keypoints[:, 2], drawn[:, 2])  # the hands are held in the square
        mask = _png(out / row["hand_mask"])
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        # the outpainter's images have a hand mask of 2500 px or more, counted at 512 px
        assert row["hand_mask_pixels"] == (mask == 255).sum()
        assert row["outpaint"] == ((mask == 255).sum() * (512 / 64) ** 2 >= 2500)
        hands = keypoints[91:133][keypoints[91:133, 2] > 0]
        assert (
            mask[hands[:, 1].astype(int).clip(0, 63), hands[:, 0].astype(int).clip(0, 63)] == 255
        ).mean() > 0.95
        assert row["caption"].startswith("a ")
    keys = {r["key"] for r in rows}
    for crop in crops:
        assert crop["source"] in keys and _png(out / crop["image"]).shape == (32, 32, 3)
        assert _png(out / crop["mask"]).shape == (32, 32)
        with np.load(out / crop["heatmaps"]) as data:
            assert data["heatmaps"].dtype == np.uint8 and data["heatmaps"].shape == (10, 32, 32)
        # placed back with its box, a crop's keypoints are the whole image's, within 1 px
        row = next(r for r in rows if r["key"] == crop["source"])
        hands = np.asarray(crop["hands"])
        present = hands[:, 2] > 0
        back = from_box(hands[present, :2], crop["box"], 32)
        np.testing.assert_allclose(back, np.asarray(row["keypoints"])[91:133][present, :2], atol=1.0)
    assert report["counts"]["images"] == {"train": 6, "test": 2}
    assert report["counts"]["crops"]["train"] + report["counts"]["crops"]["test"] == len(crops) >= 8
    assert report["seconds_per_image"]["mask"] is not None and report["seconds_per_image"]["holistic"] is None
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width == 4 * 160 and sheet.height == 22 + 6 * 160


def test_a_rebuild_with_another_split_moves_the_images_it_selects(tmp_path):
    build_pose_dataset(_config(tmp_path), progress=False)
    build_pose_dataset(_config(tmp_path, **{"pose.n_train": 2, "pose.n_test": 2}), progress=False)
    out = tmp_path / "twostage-data"
    rows = files.read_jsonl(out / "images.jsonl")
    assert [r["split"] for r in rows].count("test") == 4 and len(rows) == 8
    for row in rows:
        assert f"/{row['split']}/" in f"/{row['image']}" and (out / row["image"]).is_file(), row["image"]


def test_images_with_small_hand_masks_are_kept_for_evaluation_but_not_outpainting(tmp_path):
    report = build_pose_dataset(_config(tmp_path, **{"pose.min_mask_pixels": 10**6}), progress=False)
    rows = files.read_jsonl(tmp_path / "twostage-data" / "images.jsonl")
    assert len(rows) == 8 and not any(r["outpaint"] for r in rows)
    assert report["counts"]["small_mask"] == 8 and sorted(report["small_mask"]) == sorted(
        r["key"] for r in rows
    )


def test_images_of_more_than_one_person_are_flagged_and_counted(synthetic_build, tmp_path):
    run, out, _ = synthetic_build
    key = files.read_jsonl(out / "images.jsonl")[0]["key"]
    source = tmp_path / "source"
    shutil.copytree(run / "synthetic-hagrid", source)
    annotations = next(
        p for p in (source / "annotations").glob("*/*.json") if key in json.loads(p.read_text())
    )
    entries = json.loads(annotations.read_text())
    entry = entries[key]  # two more hands than one person has: a second person
    entry["bboxes"] += [[0.1, 0.1, 0.05, 0.05], [0.8, 0.1, 0.05, 0.05]]
    entry["labels"] += ["no_gesture", "no_gesture"]
    annotations.write_text(json.dumps(entries))
    report = build_pose_dataset(_config(tmp_path / "run", **{"pose.source": str(source)}), progress=False)
    rows = files.read_jsonl(tmp_path / "run" / "twostage-data" / "images.jsonl")
    flagged = [r["key"] for r in rows if not r["single_person"]]
    assert flagged == [key] and report["counts"]["multi_person"] == 1 and report["multi_person"] == [key]


def test_shards_merge_into_the_unsharded_dataset(synthetic_build, tmp_path, capsys):
    run, whole, _ = synthetic_build
    flags = ["--output-dir", str(run), "--dataset-dir", str(tmp_path / "sharded")]
    for key, value in SYNTHETIC.items():
        flags += ["--set", f"{key}={json.dumps(value)}"]
    assert main(["pose", "build", *flags, "--shard", "1/2"]) == 0
    with pytest.raises(HandsynthError, match=r"shard 2/2 is missing"):
        pose_dataset.merge_shards(tmp_path / "sharded")
    assert main(["pose", "build", *flags, "--shard", "2/2"]) == 0
    shards = [files.read_jsonl(tmp_path / "sharded" / f"shard-{k}-of-2" / "images.jsonl") for k in (1, 2)]
    assert shards[0] and shards[1]  # the keys hash to both shares
    assert main(["pose", "merge", *flags]) == 0
    assert "merged 2 shards: 8 images" in capsys.readouterr().out
    merged = tmp_path / "sharded"
    for name in ("images.jsonl", "hands.jsonl"):
        order = lambda r: (r["split"], r["gesture"], r["key"])  # noqa: E731
        assert sorted(files.read_jsonl(merged / name), key=order) == sorted(
            files.read_jsonl(whole / name), key=order
        )
    for row in files.read_jsonl(merged / "hands.jsonl"):
        assert (merged / row["image"]).read_bytes() == (whole / row["image"]).read_bytes()
    report = json.loads((merged / "report.json").read_text())
    assert report["counts"]["images"] == {"train": 6, "test": 2} and len(report["shards"]) == 2


def _real_source(hagrid_mini: Path, folder: Path, gestures) -> Path:
    """A HaGRID folder of a few real photos, with captions so the metadata captioner can run."""
    for gesture in gestures:
        annotation = hagrid_mini / "annotations" / "test" / f"{gesture}.json"
        entries = json.loads(annotation.read_text())
        for key, entry in entries.items():
            entry["caption"] = f"a person making a {gesture} gesture"
            shutil.copy(hagrid_mini / "images" / gesture / f"{key}.jpg", _mkdir(folder / "images" / gesture))
        files.write_json(folder / "annotations" / "test" / f"{gesture}.json", entries)
    return folder


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


REAL = ["call", "hand_heart", "like", "timeout"]


def _real_config(run: Path, source: Path, gestures=REAL, **overrides):
    settings = {"pose.source": str(source), "pose.gestures": gestures, "pose.n_train": 1, "pose.n_test": 0,
                "pose.sam_model": "", **overrides}  # fmt: skip
    return _config(run, **settings)


def test_a_stopped_build_resumes_without_detecting_or_masking_finished_images(
    hagrid_mini, tmp_path, monkeypatch
):
    from handsynth.perception.pose import PoseDetector
    from handsynth.twostage.data.masks import LandmarkMasker

    source = _real_source(hagrid_mini, tmp_path / "hagrid", REAL)
    calls = {"detect": 0, "mask": 0, "crop": 0}
    detect, mask, crop = PoseDetector.detect, LandmarkMasker.hand_masks, pose_dataset.crop_hands

    def counting_detect(self, rgb):
        calls["detect"] += 1
        return detect(self, rgb)

    def counting_mask(self, rgb, hands):
        calls["mask"] += 1
        return mask(self, rgb, hands)

    def crop_then_stop(*args, **kwargs):
        calls["crop"] += 1
        if calls["crop"] == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third image
        return crop(*args, **kwargs)

    monkeypatch.setattr(PoseDetector, "detect", counting_detect)
    monkeypatch.setattr(LandmarkMasker, "hand_masks", counting_mask)
    monkeypatch.setattr(pose_dataset, "crop_hands", crop_then_stop)
    config = _real_config(tmp_path / "run", source)
    with pytest.raises(KeyboardInterrupt):
        build_pose_dataset(config, progress=False)
    out = tmp_path / "run" / "twostage-data"
    assert len(files.read_jsonl(out / "progress.jsonl")) == 2 and calls["detect"] == 4
    assert not (out / "images.jsonl").exists()

    monkeypatch.setattr(pose_dataset, "crop_hands", crop)
    calls.update(detect=0, mask=0)
    report = build_pose_dataset(config, progress=False)
    assert calls == {"detect": 0, "mask": 2, "crop": 3}  # only the two unfinished images
    rows = files.read_jsonl(out / "images.jsonl")
    assert len(rows) == 4 and {r["mask_source"] for r in rows} == {"landmarks"}
    by_gesture = {r["gesture"]: r for r in rows}
    assert by_gesture["hand_heart"]["hand_sources"] == {"left": "holistic", "right": "holistic"}
    assert by_gesture["call"]["hand_sources"] == {"left": None, "right": "hands"}
    assert all(r["person_mask"] for r in rows)  # Holistic finds a body in all four
    assert _png(out / by_gesture["call"]["person_mask"]).shape == (64, 64)
    holistic = report["holistic"]
    assert holistic["bodies"] == 4 and holistic["hands"] == {"holistic": 4, "hands": 2, "none": 2}
    assert report["counts"]["shared_crops"] >= 1  # hand_heart's touching hands share a crop
    assert report["detections_run"] == 0 and report["seconds_per_image"]["holistic"] > 0

    calls.update(detect=0, mask=0)
    build_pose_dataset(config, progress=False)  # finished: nothing to do
    assert calls["detect"] == calls["mask"] == 0


def test_bad_images_are_named_and_skipped(hagrid_mini, tmp_path):
    gestures = ["call", "like", "palm"]
    source = _real_source(hagrid_mini, tmp_path / "hagrid", gestures)
    (next((source / "images" / "like").glob("*.jpg"))).write_bytes(b"\xff\xd8\xff truncated")
    blank = next((source / "images" / "palm").glob("*.jpg"))
    Image.new("RGB", (200, 160), (120, 120, 120)).save(blank)  # an empty room: no person
    annotation = source / "annotations" / "test" / "call.json"
    entries = json.loads(annotation.read_text())
    entries["0000-not-on-disk"] = {**next(iter(entries.values()))}
    files.write_json(annotation, entries)
    config = _real_config(tmp_path / "run", source, gestures, **{"pose.n_train": 2})
    report = build_pose_dataset(config, progress=False)
    skipped = report["skipped"]
    like = next(iter(json.loads((source / "annotations" / "test" / "like.json").read_text())))
    assert [k for k, _ in skipped["unreadable"]] == [like] and "cannot decode image" in skipped["unreadable"][
        0
    ][1]
    assert [k for k, _ in skipped["missing"]] == ["0000-not-on-disk"]
    assert len(skipped["no_person"]) == 1 and str(blank) in skipped["no_person"][0][1]
    assert report["counts"]["images"]["train"] == 1  # call
    assert [r["gesture"] for r in files.read_jsonl(tmp_path / "run" / "twostage-data" / "images.jsonl")] == [
        "call"
    ]


def test_a_person_without_hands_is_skipped_and_named(tmp_path):
    config = _config(tmp_path)
    source = pose_dataset.resolve_source(config)
    table_path = source / "wholebody" / "train" / "palm.json"
    table = json.loads(table_path.read_text())
    key = sorted(table)[0]
    table[key] = [[x, y, 0 if i >= 91 else v] for i, (x, y, v) in enumerate(table[key])]
    table_path.write_text(json.dumps(table))
    report = build_pose_dataset(config, progress=False)
    assert report["skipped"]["no_hands"] == [
        [
            key,
            f"{source}/images/palm/{key}.jpg: a person without hands (its pose from the source has none); "
            "the image is left out",
        ]
    ]
    assert key not in {r["key"] for r in files.read_jsonl(tmp_path / "twostage-data" / "images.jsonl")}


def test_a_mask_of_the_wrong_size_stops_the_build_and_keeps_what_was_done(tmp_path):
    config = _config(tmp_path)
    source = pose_dataset.resolve_source(config)
    out = tmp_path / "twostage-data"
    masks = sorted((source / "masks" / "palm").glob("*.png"))
    Image.new("L", (10, 10)).save(masks[0])
    with pytest.raises(
        HandsynthError, match=rf"{masks[0].name} is 10x10, but its image .* is 128x128; .*delete it"
    ):
        build_pose_dataset(config, progress=False)
    done = files.read_jsonl(out / "progress.jsonl")
    assert done  # the images before it are kept
    masks[0].unlink()  # as the message says: the synthetic source writes it again
    build_pose_dataset(config, progress=False)
    assert len(files.read_jsonl(out / "images.jsonl")) == 8
    assert [e["key"] for e in files.read_jsonl(out / "progress.jsonl")][: len(done)] == [
        e["key"] for e in done
    ]


def test_models_that_cannot_load_offline_stop_before_any_work(hagrid_mini, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, **{"pose.captioner": "vitgpt2", "pose.captioner_model": "no-such/captioner"})
    with pytest.raises(HandsynthError, match="no-such/captioner"):
        build_pose_dataset(config, progress=False)
    assert not (tmp_path / "twostage-data" / "progress.jsonl").exists()
    source = _real_source(hagrid_mini, tmp_path / "hagrid", ["call"])
    config = _real_config(tmp_path / "run", source, ["call"], **{"pose.sam_model": "no-such/sam"})
    with pytest.raises(HandsynthError, match="(?s)no-such/sam.*HF_HUB_OFFLINE is set.*pose.sam_model"):
        build_pose_dataset(config, progress=False)
    assert not (tmp_path / "run" / "twostage-data" / "progress.jsonl").exists()
    config = _config(tmp_path, **{"pose.captioner": "llava-next"})
    with pytest.raises(HandsynthError, match="captioner 'llava-next' is not available.*metadata"):
        build_pose_dataset(config, progress=False)
