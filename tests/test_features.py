"""Stage I on real photos: mean feature, content-hash cache, bad input, annotation fallback, CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
import pytest
from PIL import Image
from tqdm import tqdm

from handsynth import cli, files
from handsynth.config import FeaturesSection
from handsynth.errors import HandsynthError
from handsynth.hand1000 import features
from handsynth.hand1000.features import compute_gesture_feature
from handsynth.perception.hands import detect_in_workers

PAPER_GESTURES = ["call", "four", "like", "mute", "ok", "palm"]


def photo(hagrid_mini, gesture):
    return next((hagrid_mini / "images" / gesture).glob("*.jpg"))


def link_photos(folder, hagrid_mini, gestures):
    """A plain folder of the real photos, as symlinks (the photos are never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for gesture in gestures:
        (folder / f"{gesture}.jpg").symlink_to(photo(hagrid_mini, gesture))
    return folder


def direct_landmarks(paths):
    """First-hand landmarks the way the reference cal_mean_feature.py gets them."""
    rows = []
    with mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=1, min_detection_confidence=0.5) as h:
        for path in paths:
            result = h.process(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            rows.append([(p.x, p.y, p.z) for p in result.multi_hand_landmarks[0].landmark])
    return np.asarray(rows, dtype=np.float64).reshape(len(paths), 63)


def test_mean_feature_of_the_six_paper_gestures_and_cached_rerun(tmp_path, hagrid_mini):
    folder = link_photos(tmp_path / "paper6", hagrid_mini, PAPER_GESTURES)
    settings = FeaturesSection(workers=2)  # 6 images: runs the worker-process pool
    first = compute_gesture_feature(folder, tmp_path / "features", settings=settings, progress=False)

    expected = direct_landmarks([folder / f"{g}.jpg" for g in PAPER_GESTURES])
    assert first.keys == PAPER_GESTURES
    np.testing.assert_allclose(first.features, expected, rtol=0, atol=1e-6)
    mean = np.load(tmp_path / "features" / "paper6" / "mean.npy")
    assert mean.dtype == np.float32 and mean.shape == (63,)
    np.testing.assert_allclose(mean, expected.mean(axis=0), rtol=0, atol=1e-6)
    saved = np.load(tmp_path / "features" / "paper6" / "features.npz")
    assert saved["keys"].tolist() == PAPER_GESTURES
    np.testing.assert_array_equal(saved["features"], first.features)
    report = json.loads((tmp_path / "features" / "paper6" / "report.json").read_text())
    assert report["images"] == 6 and report["detected"] == 6 and report["coverage_percent"] == 100.0
    assert report["detections_run"] == 6 and report["cache_hits"] == 0
    assert report["worker_start"] in ("fork", "forkserver")
    np.testing.assert_allclose(report["feature_std"], expected.std(axis=0), rtol=0, atol=1e-6)

    second = compute_gesture_feature(folder, tmp_path / "features", settings=settings, progress=False)
    assert second.report["detections_run"] == 0 and second.report["cache_hits"] == 6
    assert second.report["worker_start"] == "none"
    np.testing.assert_array_equal(second.features, first.features)
    assert np.load(tmp_path / "features" / "paper6" / "mean.npy").tobytes() == mean.tobytes()

    # the cache is keyed by content: a renamed file is a hit, a new photo is the only detection
    (folder / "call.jpg").rename(folder / "renamed_call.jpg")
    (folder / "fist.jpg").symlink_to(photo(hagrid_mini, "fist"))
    third = compute_gesture_feature(folder, tmp_path / "features", settings=settings, progress=False)
    assert third.report["detections_run"] == 1 and third.report["cache_hits"] == 6
    assert third.report["detected"] == 7


FRESH_PROCESS = """
import json, sys
from handsynth.config import FeaturesSection
from handsynth.hand1000.features import compute_gesture_feature
settings = FeaturesSection(workers=2)
result = compute_gesture_feature(sys.argv[1], sys.argv[2], settings=settings, progress=False)
print(json.dumps({"start": result.report["worker_start"], "features": result.features.tolist()}))
"""


def test_a_fresh_process_forks_its_workers_and_agrees(tmp_path, hagrid_mini):
    folder = link_photos(tmp_path / "paper6", hagrid_mini, PAPER_GESTURES)
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), str(tmp_path / "out")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    output = json.loads(run.stdout.strip().splitlines()[-1])
    assert output["start"] == "fork"  # MediaPipe not loaded in the parent yet: the fast start
    expected = direct_landmarks([folder / f"{g}.jpg" for g in PAPER_GESTURES])
    np.testing.assert_allclose(np.asarray(output["features"]), expected, rtol=0, atol=1e-6)


def test_cache_depends_on_the_detector_settings(tmp_path, hagrid_mini):
    folder = link_photos(tmp_path / "two", hagrid_mini, ["palm", "ok"])
    settings = FeaturesSection(workers=1)
    compute_gesture_feature(folder, tmp_path / "out", settings=settings, progress=False)
    settings.min_detection_confidence = 0.6
    rerun = compute_gesture_feature(folder, tmp_path / "out", settings=settings, progress=False)
    assert rerun.report["detections_run"] == 2 and rerun.report["detector"]["min_detection_confidence"] == 0.6


def test_corrupt_and_missing_files_are_skipped_and_counted(tmp_path, hagrid_mini):
    folder = link_photos(tmp_path / "mixed", hagrid_mini, ["palm"])
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    data = photo(hagrid_mini, "ok").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    code = cli.main(["features", "--dataset", str(folder), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "mixed" / "report.json").read_text())
    assert (report["images"], report["detected"], report["corrupt"], report["missing"]) == (4, 1, 3, 0)
    assert sorted(p.rsplit("/", 1)[-1] for p in report["skipped_files"]) == [
        "empty.jpg",
        "garbage.jpg",
        "truncated.jpg",
    ]
    assert report["coverage_percent"] == 25.0
    code = cli.main(["features", "--dataset", str(folder), "--out", str(tmp_path / "out"), "--workers", "1"])
    rerun = json.loads((tmp_path / "out" / "mixed" / "report.json").read_text())
    assert code == 0 and rerun["corrupt"] == 3 and rerun["worker_start"] == "none"  # not even re-decoded


def test_folder_without_hands_is_a_clear_cli_error(tmp_path, capsys):
    folder = tmp_path / "blank"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 96), (40 * i, 120, 200)).save(folder / f"{i}.png")
    code = cli.main(["features", "--dataset", str(folder), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no hand detected in any of the 3 'blank' images" in err and str(folder) in err
    assert "Traceback" not in err


def test_folder_of_only_corrupt_files_is_a_clear_cli_error(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"nope")
    code = cli.main(["features", "--dataset", str(folder), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 unreadable" in err and str(folder) in err


def make_dataset(root, hagrid_mini):
    """A dataset folder as `handsynth data build` writes it: a real call photo, a blank 'call'
    image whose annotation carries landmarks, a missing image, and a palm record."""
    images = root / "images" / "train"
    (images / "call").mkdir(parents=True)
    (images / "palm").mkdir(parents=True)
    (images / "call" / "real.jpg").symlink_to(photo(hagrid_mini, "call"))
    Image.new("RGB", (64, 64), "gray").save(images / "call" / "blank.jpg")
    (images / "palm" / "p.jpg").symlink_to(photo(hagrid_mini, "palm"))
    annotation = json.loads((hagrid_mini / "annotations" / "test" / "call.json").read_text())
    landmarks = next(iter(annotation.values()))["hand_landmarks"][0]

    def entry(key, image, gesture, landmarks=None):
        fields = dict(split="train", caption_raw="", caption="", captioner="metadata", bbox=None, user_id="u")
        return dict(key=key, image=f"images/train/{image}", gesture=gesture, landmarks=landmarks, **fields)

    files.write_jsonl(
        root / "train.jsonl",
        [
            entry("real", "call/real.jpg", "call"),
            entry("blank", "call/blank.jpg", "call", landmarks),
            entry("gone", "call/gone.jpg", "call"),
            entry("p", "palm/p.jpg", "palm"),
        ],
    )
    return np.asarray(landmarks, dtype=np.float64)


def test_manifest_gesture_filter_and_annotation_fallback(tmp_path, hagrid_mini):
    landmarks = make_dataset(tmp_path / "dataset", hagrid_mini)
    settings = FeaturesSection(workers=1)
    plain = compute_gesture_feature(tmp_path / "dataset", tmp_path / "f", "call", settings, progress=False)
    assert plain.keys == ["real"]
    assert (plain.report["images"], plain.report["no_hand"], plain.report["missing"]) == (3, 1, 1)
    assert plain.report["fallback"] == 0

    settings.annotation_fallback = True
    fallback = compute_gesture_feature(tmp_path / "dataset", tmp_path / "f", "call", settings, progress=False)
    assert fallback.report["detections_run"] == 0  # both readable images come from the cache
    assert fallback.keys == ["real", "blank"] and fallback.report["fallback"] == 1
    assert fallback.report["detected"] == 1 and fallback.report["used"] == 2
    expected_blank = np.concatenate([landmarks, np.zeros((21, 1))], axis=1).reshape(63)
    np.testing.assert_allclose(fallback.features[1], expected_blank, rtol=0, atol=1e-7)
    np.testing.assert_allclose(fallback.mean, (plain.features[0] + expected_blank) / 2, rtol=0, atol=1e-6)
    saved = np.load(tmp_path / "f" / "call" / "features.npz")
    assert saved["fallback"].tolist() == [False, True]


def test_cli_runs_every_configured_gesture_of_a_dataset(tmp_path, hagrid_mini):
    make_dataset(tmp_path / "dataset", hagrid_mini)
    argv = ["features", "--dataset", str(tmp_path / "dataset"), "--out", str(tmp_path / "f")]
    code = cli.main(
        [*argv, "--gesture", "call", "--gesture", "palm", "--workers", "1", "--annotation-fallback"]
    )
    assert code == 0
    assert json.loads((tmp_path / "f" / "call" / "report.json").read_text())["fallback"] == 1
    assert json.loads((tmp_path / "f" / "palm" / "report.json").read_text())["detected"] == 1
    assert "annotation_fallback = true" in (tmp_path / "f" / "config.toml").read_text()


def test_bad_inputs_name_the_problem(tmp_path, hagrid_mini):
    make_dataset(tmp_path / "dataset", hagrid_mini)
    with pytest.raises(HandsynthError, match="name the gesture"):
        compute_gesture_feature(tmp_path / "dataset", tmp_path / "f", progress=False)
    with pytest.raises(HandsynthError, match="has no 'ok' images"):
        compute_gesture_feature(tmp_path / "dataset", tmp_path / "f", "ok", progress=False)
    with pytest.raises(HandsynthError, match="input folder not found"):
        compute_gesture_feature(tmp_path / "nowhere", tmp_path / "f", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HandsynthError, match="holds no images"):
        compute_gesture_feature(tmp_path / "empty", tmp_path / "f", progress=False)


def _no_init(detector_settings):
    """Stands in for the worker initialiser: no MediaPipe in the forked child."""


def _die(job):
    os._exit(3)


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(monkeypatch):
    # fork copies this process, monkeypatches included, so the workers run _die
    monkeypatch.setattr(features, "_init_worker", _no_init)
    monkeypatch.setattr(features, "_detect_file", _die)
    jobs = [(f"digest{i}", f"image{i}.jpg") for i in range(6)]
    context = multiprocessing.get_context("fork")
    with pytest.raises(
        HandsynthError, match="worker process died while detecting hands in 'call'.*--workers 1"
    ):
        list(features._run_detections(jobs, FeaturesSection(workers=2), context, False, "call"))


def _slow_touch(path):
    time.sleep(0.1)
    Path(path).touch()
    return path


def test_a_reader_that_stops_early_leaves_the_queued_images_undone(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    jobs = [str(done / str(i)) for i in range(40)]
    context = multiprocessing.get_context("fork")
    results = detect_in_workers(jobs, _slow_touch, _no_init, ({},), 2, context, tqdm(disable=True), "died")
    next(results)
    results.close()  # the reader stops, as on an error or Ctrl-C
    assert 1 <= len(list(done.iterdir())) < 10  # the running and prefetched ones, not all 40


def test_an_interrupted_run_keeps_its_detections(tmp_path, hagrid_mini, monkeypatch):
    folder = link_photos(tmp_path / "paper6", hagrid_mini, PAPER_GESTURES)
    settings = FeaturesSection(workers=1)  # in this process, so the patched detection runs here
    real_detect, calls = features._detect_file, []

    def interrupted_after_three(job):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job)
        return real_detect(job)

    monkeypatch.setattr(features, "_detect_file", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        compute_gesture_feature(folder, tmp_path / "features", settings=settings, progress=False)
    cache = next((tmp_path / "features" / ".cache").glob("landmarks-*.jsonl"))
    assert len(files.read_jsonl(cache)) == 3  # flushed on the way out, though the batch was not due

    monkeypatch.setattr(features, "_detect_file", real_detect)
    resumed = compute_gesture_feature(folder, tmp_path / "features", settings=settings, progress=False)
    assert resumed.report["cache_hits"] == 3 and resumed.report["detections_run"] == 3
    assert resumed.keys == PAPER_GESTURES
