"""The two-stage dataset's other sources (seed 004 §IV-A, Table II): each reader on a tiny copy of its
release, written here (tests/source_fixtures.py), `pose build` on each, the hand generator's mixed set
and the YouTube-ASL evaluation set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handsynth import files
from handsynth.cli import main
from handsynth.config import load_config
from handsynth.errors import HandsynthError
from handsynth.twostage.data import dataset as pose_dataset
from handsynth.twostage.data.crops import to_box
from handsynth.twostage.data.dataset import build_pose_dataset
from handsynth.twostage.data.sources import read_source
from source_fixtures import (
    interhand_expected,
    reinterhand_expected,
    write_interhand,
    write_laion_human,
    write_reinterhand,
    write_video,
)

TINY = {
    "pose.n_train": 2,
    "pose.n_test": 1,
    "pose.image_size": 64,
    "pose.crop_size": 32,
    "pose.sam_model": "",
    "pose.captioner": "metadata",
    "pose.workers": 1,
}
TWO_HANDS, ONE_HAND = "holy", "call"  # hagrid-mini photos where Holistic finds both hands / one


def _config(run: Path, source: Path, fmt: str, **overrides):
    return load_config(
        overrides={"run.output_dir": str(run), "pose.source": str(source), "pose.source_format": fmt, **TINY,
                   **overrides}
    )  # fmt: skip


def _photo(hagrid: Path, gesture: str) -> Path:
    return next((hagrid / "images" / gesture).glob("*.jpg"))


def _refuse_holistic(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("this source's keypoints are exact: no Holistic run")

    monkeypatch.setattr("handsynth.perception.pose.PoseDetector.__init__", refuse)


def _check_rows_against(out: Path, expected: dict[str, np.ndarray], key_of=lambda key: key) -> int:
    """Every image row's keypoints are the expected pose moved into its square, to 1e-3 px."""
    rows = files.read_jsonl(out / "images.jsonl")
    for row in rows:
        truth = expected[key_of(row["key"])].astype(np.float32)
        square = to_box(truth, row["source_box"], row["width"])
        outside = ((square[:, :2] < 0) | (square[:, :2] > row["width"])).any(axis=1)
        square[outside, 2] = 0
        np.testing.assert_allclose(np.array(row["keypoints"]), square, atol=1e-3)
    return len(rows)


# ------------------------------------------------------------------ InterHand2.6M


def test_interhand_joints_are_projected_into_coco_wholebody_order(tmp_path):
    root = write_interhand(tmp_path / "ih")
    captions = tmp_path / "captions.json"
    files.write_json(captions, {"0002_pray": "two hands pressed together in prayer"})
    config = _config(tmp_path / "run", root, "interhand", **{"pose.captions": str(captions)})
    index = read_source(config, root, tmp_path / "out")
    expected = interhand_expected(root)
    assert sorted(r.key for r in index.records) == sorted(expected)
    for record in index.records:
        np.testing.assert_allclose(record.keypoints, expected[record.key], atol=1e-3)
    assert index.groups == ["right", "left", "interacting"]
    by_key = {r.key: r for r in index.records}
    assert by_key["ih-train-1"].caption == "a photo of a person's right hand"
    assert by_key["ih-train-3"].caption == "two hands pressed together in prayer"
    assert by_key["ih-train-3"].keypoints[112 + 8, 2] == 0  # the unlabelled right index tip
    assert (by_key["ih-train-1"].keypoints[91:112, 2] == 0).all()  # a right-hand image has no left hand


def test_a_malformed_interhand_record_is_named(tmp_path):
    root = write_interhand(tmp_path / "ih", malformed=True)
    with pytest.raises(
        HandsynthError, match=r"InterHand2.6M_train_joint_3d.json: annotation 105 is malformed.*42"
    ):
        read_source(_config(tmp_path, root, "interhand"), root, tmp_path / "out")


def test_pose_build_on_interhand_needs_no_holistic_and_keeps_the_keypoints(tmp_path, monkeypatch):
    _refuse_holistic(monkeypatch)
    root = write_interhand(tmp_path / "ih")
    # llava is never loaded: InterHand2.6M's captions are its own
    config = _config(tmp_path / "run", root, "interhand", **{"pose.captioner": "llava"})
    report = build_pose_dataset(config, progress=False)
    out = tmp_path / "run" / "twostage-data"
    assert _check_rows_against(out, interhand_expected(root)) == 4
    assert report["source_format"] == "interhand" and report["detections_run"] == 0
    assert report["counts"]["hand_sources"] == {"interhand": 6, "none": 2}  # 1 + 1 + 2 x 2 hands
    assert report["counts"]["mask_sources"] == {"landmarks": 4}
    assert report["gestures"] == ["right", "left", "interacting"]
    hands = files.read_jsonl(out / "hands.jsonl")
    assert {r["caption"] for r in hands} == {"a photo of a person's right hand", "a photo of a person's left hand",
                                             "a photo of a person's two hands interacting"}  # fmt: skip


# ------------------------------------------------------------------ Re:InterHand


def test_reinterhand_joints_are_projected_into_coco_wholebody_order(tmp_path):
    root = write_reinterhand(tmp_path / "rih")
    index = read_source(_config(tmp_path, root, "reinterhand"), root, tmp_path / "out")
    expected = reinterhand_expected(root)
    assert len(index.records) == 3 and index.groups == ["interacting"]
    for record in index.records:
        np.testing.assert_allclose(record.keypoints, expected[record.key.rsplit("-", 1)[1]], atol=1e-3)
        assert record.split == "train" and record.caption == "a photo of a person's two hands interacting"


def test_a_malformed_reinterhand_record_is_named(tmp_path):
    root = write_reinterhand(tmp_path / "rih", malformed=True)
    with pytest.raises(
        HandsynthError,
        match=r"left/Keypoints/keypoint-000020.json: capture .*, camera 401892, frame 000020 is malformed",
    ):
        read_source(_config(tmp_path, root, "reinterhand"), root, tmp_path / "out")


def test_pose_build_on_reinterhand(tmp_path, monkeypatch):
    _refuse_holistic(monkeypatch)
    root = write_reinterhand(tmp_path / "rih")
    build_pose_dataset(_config(tmp_path / "run", root, "reinterhand"), progress=False)
    out = tmp_path / "run" / "twostage-data"
    assert _check_rows_against(out, reinterhand_expected(root), lambda key: key.rsplit("-", 1)[1]) == 3
