"""The two-stage dataset's other sources (seed 004 §IV-A, Table II): each reader on a tiny copy of its
release, written here (tests/source_fixtures.py), `pose build` on each, the hand generator's mixed set
and the YouTube-ASL evaluation set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from source_fixtures import (
    REINTERHAND_CAPTURE,
    interhand_expected,
    reinterhand_expected,
    write_interhand,
    write_laion_human,
    write_reinterhand,
    write_video,
)

from handsynth import files
from handsynth.cli import main
from handsynth.config import load_config
from handsynth.errors import HandsynthError
from handsynth.twostage.data.crops import to_box
from handsynth.twostage.data.dataset import build_pose_dataset
from handsynth.twostage.data.sources import read_source

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
        overrides={
            "run.output_dir": str(run),
            "pose.source": str(source),
            "pose.source_format": fmt,
            **TINY,
            **overrides,
        }
    )


def _photo(hagrid: Path, gesture: str) -> Path:
    return next((hagrid / "images" / gesture).glob("*.jpg"))


def _refuse_holistic(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("this source's keypoints are exact: no Holistic run")

    monkeypatch.setattr("handsynth.perception.pose.PoseDetector.__init__", refuse)


def _detector(folder: Path):
    """The build's pose step, as `pose build` hands it to the YouTube-ASL reader."""
    from handsynth.twostage.data.extract import detect_poses

    return lambda paths: detect_poses(paths, folder / "cache", 1, person_masks=True, progress=False)


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
    assert {r["caption"] for r in hands} == {
        "a photo of a person's right hand",
        "a photo of a person's left hand",
        "a photo of a person's two hands interacting",
    }


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


def test_pose_build_command_on_reinterhand(tmp_path, monkeypatch, capsys):
    _refuse_holistic(monkeypatch)
    root = write_reinterhand(tmp_path / "rih")
    settings = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items()]
    captions = tmp_path / "captions.json"
    files.write_json(captions, {REINTERHAND_CAPTURE: "two hands with fingers interlaced"})
    command = ["pose", "build", "--format", "reinterhand", "--source", str(root), "--captions", str(captions)]
    assert main([*command, "--output-dir", str(tmp_path / "run"), *settings]) == 0
    assert "3 images" in capsys.readouterr().out
    out = tmp_path / "run" / "twostage-data"
    assert {r["caption"] for r in files.read_jsonl(out / "images.jsonl")} == {
        "two hands with fingers interlaced"
    }
    assert _check_rows_against(out, reinterhand_expected(root), lambda key: key.rsplit("-", 1)[1]) == 3


# ------------------------------------------------------------------ LAION-Human and image folders


def test_laion_human_keeps_single_person_images_and_names_a_malformed_pose_file(hagrid_mini, tmp_path):
    photos = [_photo(hagrid_mini, TWO_HANDS), _photo(hagrid_mini, ONE_HAND)]
    root = write_laion_human(tmp_path / "laion", photos)
    index = read_source(_config(tmp_path, root, "laion_human"), root, tmp_path / "out")
    # the third entry holds two people (a faint third detection does not count as one)
    assert [(r.key, r.caption) for r in index.records] == [
        ("laion-00000", "person 0"),
        ("laion-00001", "person 1"),
    ]
    assert index.filtered == {"not_one_person": 1}
    bad = write_laion_human(tmp_path / "bad", photos, malformed=True)
    with pytest.raises(HandsynthError, match=r"pose/bad.npz: .*mapping_train.json, entry bad is malformed"):
        read_source(_config(tmp_path, bad, "laion_human"), bad, tmp_path / "out")


def test_pose_build_on_laion_human_runs_holistic_and_counts_the_filters(hagrid_mini, tmp_path):
    photos = [_photo(hagrid_mini, TWO_HANDS), _photo(hagrid_mini, ONE_HAND)]
    root = write_laion_human(tmp_path / "laion", photos)
    report = build_pose_dataset(_config(tmp_path / "run", root, "laion_human"), progress=False)
    rows = files.read_jsonl(tmp_path / "run" / "twostage-data" / "images.jsonl")
    assert sorted(r["caption"] for r in rows) == ["person 0", "person 1"]
    assert report["counts"]["filtered"] == {"not_one_person": 1} and report["detections_run"] == 2
    # the 2,500-px filter counts pixels at 512 px: each of a 64-px image counts 64 times
    assert all(r["outpaint"] == (r["hand_mask_pixels"] * 64 >= 2500) for r in rows)


def test_an_image_folder_takes_captions_beside_the_images(hagrid_mini, tmp_path):
    root = tmp_path / "photos"
    for n, gesture in enumerate((TWO_HANDS, ONE_HAND)):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "sub" / f"p{n}.jpg").write_bytes(_photo(hagrid_mini, gesture).read_bytes())
    (root / "sub" / "p0.txt").write_text("a person with both hands raised\n")
    config = _config(tmp_path / "run", root, "images", **{"pose.captioner": "metadata"})
    index = read_source(config, root, tmp_path / "out")
    assert [(r.key, r.caption) for r in index.records] == [
        ("sub-p0", "a person with both hands raised"),
        ("sub-p1", None),
    ]
    with pytest.raises(HandsynthError, match="metadata.*p1.jpg has none"):
        build_pose_dataset(config, progress=False)
    (root / "sub" / "p1.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(HandsynthError, match=r"sub/p1.txt: the caption of p1.jpg is malformed: not UTF-8"):
        read_source(config, root, tmp_path / "out")
    (root / "sub" / "p1.txt").write_text("a person making a call sign")
    report = build_pose_dataset(config, progress=False)
    assert report["counts"]["images"] == {"train": 1, "test": 1} and report["layout"] == "images"


# ------------------------------------------------------------------ YouTube-ASL


@pytest.fixture(scope="module")
def youtube_asl(hagrid_mini, tmp_path_factory) -> Path:
    """Two videos: frames with both hands and with one, alternating; and the second with one frame."""
    root = tmp_path_factory.mktemp("youtube-asl")
    both, one = _photo(hagrid_mini, TWO_HANDS), _photo(hagrid_mini, ONE_HAND)
    write_video(root / "videos" / "vid_A.avi", [both, one, both, one, both, one, both, one])
    write_video(root / "videos" / "vid_B.avi", [one, one, both, one])
    return root


def test_youtube_asl_keeps_frames_with_both_hands_capped_per_video(youtube_asl, tmp_path):
    config = _config(tmp_path, youtube_asl / "videos", "youtube_asl", **{"pose.frames_per_video": 2})
    index = read_source(config, youtube_asl / "videos", tmp_path / "out", _detector(tmp_path), progress=False)
    # vid_A: 8 candidates (4 x 2), 4 with both hands, 2 kept evenly (first and last); vid_B: 4, one kept
    assert [r.key for r in index.records] == ["vid_A-000000", "vid_A-000006", "vid_B-000002"]
    assert {r.split for r in index.records} == {"test"} and index.fixed_split
    assert index.filtered == {"not_both_hands": 4 + 3}


@pytest.fixture(scope="module")
def youtube_build(youtube_asl) -> tuple[Path, dict]:
    """The YouTube-ASL videos built with one frame per video, captioned by a tiny ViT-GPT2."""
    from handsynth.tiny.captioners import write_tiny_vitgpt2

    captioner = {
        "pose.captioner": "vitgpt2",
        "pose.captioner_model": str(write_tiny_vitgpt2(youtube_asl / "vitgpt2")),
    }
    config = _config(
        youtube_asl / "run",
        youtube_asl / "videos",
        "youtube_asl",
        **{"pose.frames_per_video": 1, **captioner},
    )
    return youtube_asl / "run" / "twostage-data", build_pose_dataset(config, progress=False)


def test_pose_build_on_youtube_asl_is_an_evaluation_set(youtube_build, tmp_path):
    out, report = youtube_build
    assert report["counts"]["images"] == {"train": 0, "test": 2} and report["source_format"] == "youtube_asl"
    assert [r["key"] for r in files.read_jsonl(out / "images.jsonl")] == ["vid_A-000000", "vid_B-000002"]
    # the build's pose step read the reader's detections from the cache: Holistic ran once per distinct frame
    assert report["detections_run"] == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(HandsynthError, match=r"cannot read video .*broken.mp4"):
        read_source(_config(tmp_path, bad, "youtube_asl"), bad, tmp_path / "out", _detector(tmp_path), False)


def test_a_youtube_asl_real_set_is_scored_on_full_images(youtube_build, tmp_path):
    from handsynth.evaluation import inception
    from handsynth.tiny.inception import write_random_inception
    from handsynth.twostage.evaluate import evaluate_twostage

    out, _ = youtube_build
    rows = files.read_jsonl(out / "images.jsonl")
    records = [
        {
            "key": r["key"],
            "image": str(out / r["image"]),
            "prompt": r["caption"],
            "keypoints": r["keypoints"],
            "width": r["width"],
            "height": r["height"],
        }
        for r in rows
    ]

    def no_segmenter(rgb):
        raise AssertionError("YouTube-ASL is scored on full images: no background removal")

    config = load_config(
        overrides={
            "run.output_dir": str(tmp_path),
            "run.device": "cpu",
            "evaluate.kid_subsets": 2,
            "evaluate.kid_subset_size": 2,
            "evaluate.inception_weights": str(
                write_random_inception(tmp_path / inception.WEIGHTS_NAME, seed=0)
            ),
        }
    )
    report = evaluate_twostage(
        config, records, out, tmp_path / "eval", None, no_segmenter, ["fid", "fid_fg", "kid_fg"]
    )
    assert set(report["metrics"]) == {"fid"} and report["metrics"]["fid"]["value"] == pytest.approx(
        0, abs=1e-3
    )
    assert report["real"]["source_format"] == "youtube_asl" and report["real"]["full_images_only"]


# ------------------------------------------------------------------ the hand generator's mixed set


def test_pose_mix_draws_each_sources_count_keeping_its_gestures(tmp_path, capsys):
    from handsynth.twostage.data.mix import hands_manifest
    from handsynth.twostage.handgen.data import read_hand_items

    interhand = tmp_path / "ih-data"
    every_image = {"pose.output_dir": str(interhand), "pose.n_test": 0}
    build_pose_dataset(
        _config(tmp_path, write_interhand(tmp_path / "ih"), "interhand", **every_image), progress=False
    )
    hagrid = tmp_path / "hagrid-data"
    synthetic = {
        "pose.source": "synthetic",
        "pose.source_format": "hagrid",
        "pose.gestures": ["call", "palm", "like"],
        "data.synthetic_per_gesture": 4,
        "data.synthetic_size": 128,
        "pose.n_train": 4,
        "pose.n_test": 0,
        "pose.output_dir": str(hagrid),
    }
    build_pose_dataset(
        load_config(overrides={"run.output_dir": str(tmp_path), **TINY, **synthetic}), progress=False
    )
    crops = {
        name: Counter(r["gesture"] for r in files.read_jsonl(tmp_path / name / "hands.jsonl"))
        for name in ("ih-data", "hagrid-data")
    }
    assert crops == {
        "ih-data": {"interacting": 2, "right": 1, "left": 1},
        "hagrid-data": {"like": 6, "call": 5, "palm": 5},
    }

    def mix(ih: int, hg: int) -> tuple[list[dict], dict]:
        sources = f'[{{dataset = "{interhand}", count = {ih}}}, {{dataset = "{hagrid}", count = {hg}}}]'
        assert (
            main(
                ["pose", "mix", "--output-dir", str(tmp_path / "run"), "--set", f"handgen.sources={sources}"]
            )
            == 0
        )
        folder = tmp_path / "run" / "handgen-mix"
        return files.read_jsonl(folder / "hands.jsonl"), json.loads((folder / "report.json").read_text())

    rows, report = mix(2, 6)
    assert [(s["taken"], s["requested"], s["available"]) for s in report["sources"]] == [
        (2, 2, 4),
        (6, 6, 16),
    ]
    # shares in proportion to each gesture's crops, the remainder to the largest fractions (ties by name):
    # 2 of {interacting 2, left 1, right 1} -> 1, .5, .5; 6 of {like 6, call 5, palm 5} -> 2.25, 1.875, 1.875
    assert report["sources"][0]["gestures"] == {"interacting": 1, "left": 1}
    assert report["sources"][1]["gestures"] == {"call": 2, "like": 2, "palm": 2}
    assert report["gestures"] == {"call": 2, "interacting": 1, "left": 1, "like": 2, "palm": 2}
    assert report["total"] == 8 and sum(report["gestures"].values()) == 8
    assert "8 hand crops" in capsys.readouterr().out
    items = read_hand_items(tmp_path / "run" / "handgen-mix" / "hands.jsonl")  # every file found from the mix
    assert len(items) == 8 and all(item.image.is_file() for item in items)
    assert {r["dataset"] for r in rows} == {"ih-data", "hagrid-data"}
    again, _ = mix(2, 6)
    assert again == rows  # seeded
    more, _ = mix(2, 9)
    config = load_config(
        overrides={
            "run.output_dir": str(tmp_path / "run"),
            "handgen.sources": [
                {"dataset": str(interhand), "count": 2},
                {"dataset": str(hagrid), "count": 6},
            ],
        }
    )
    assert (
        hands_manifest(config) == tmp_path / "run" / "handgen-mix" / "hands.jsonl"
    )  # what handgen train reads
    assert files.read_jsonl(hands_manifest(config)) == rows
    assert {r["key"] for r in rows} <= {r["key"] for r in more}  # a larger count extends a smaller one


def test_bad_handgen_sources_are_named(tmp_path):
    from handsynth.twostage.data.mix import mix_hand_sets

    for sources, message in (
        ([{"dataset": str(tmp_path), "count": 0}], r"handgen.sources\[0\] is .*count = N\} with N >= 1"),
        ([{"path": str(tmp_path), "count": 3}], r"handgen.sources\[0\] is"),
        (
            [{"dataset": str(tmp_path / "nowhere"), "count": 3}],
            r"handgen.sources\[0\]: no hands.jsonl in .*nowhere",
        ),
    ):
        config = load_config(overrides={"run.output_dir": str(tmp_path), "handgen.sources": sources})
        with pytest.raises(HandsynthError, match=message):
            mix_hand_sets(config)
