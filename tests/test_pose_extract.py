"""`handsynth pose extract`: poses.jsonl from a folder of images, in worker processes, resumable."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.cli import main
from handsynth.perception.pose import PoseDetector


def test_extract_writes_a_line_per_readable_image_and_resumes(hagrid_mini, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for gesture in ("call", "hand_heart", "timeout"):
        shutil.copy(next((hagrid_mini / "images" / gesture).glob("*.jpg")), folder / f"{gesture}.jpg")
    Image.new("RGB", (120, 90), (128, 128, 128)).save(folder / "empty-room.png")  # no person
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "poses.jsonl"

    assert main(["pose", "extract", str(folder), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "4 images: 3 with a person, 1 without (keypoints null), 1 unreadable" in printed.out
    assert f"skipped unreadable image {folder / 'broken.jpg'}: cannot decode image" in printed.out
    lines = files.read_jsonl(out)
    names = ("call.jpg", "empty-room.png", "hand_heart.jpg", "timeout.jpg")
    assert [line["image"] for line in lines] == [str(folder / name) for name in names]
    empty = lines[1]
    assert (empty["keypoints"], empty["scores"], empty["width"], empty["height"]) == (None, None, 120, 90)
    # the worker processes gave what this process's detector gives
    with PoseDetector() as detector:
        for line in (lines[0], lines[2], lines[3]):
            pose = detector.detect(files.load_rgb(line["image"]))
            np.testing.assert_allclose(line["keypoints"], pose.keypoints, atol=1e-3)
            assert line["hand_sources"] == pose.hand_sources and len(line["scores"]) == 133
    assert lines[2]["hand_sources"] == {"left": "holistic", "right": "holistic"}  # hand_heart
    report = json.loads((tmp_path / "poses.report.json").read_text())
    assert report["worker_start"] in ("fork", "forkserver") and report["detections_run"] == 4
    assert list(report["unreadable"]) == [str(folder / "broken.jpg")]

    # a re-run detects nothing it has seen; a new image is the only work
    shutil.copy(next((hagrid_mini / "images" / "like").glob("*.jpg")), folder / "like.jpg")
    assert main(["pose", "extract", str(folder), "--out", str(out), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "poses.report.json").read_text())
    assert (report["detections_run"], report["cache_hits"], report["images"]) == (1, 5, 5)
    again = files.read_jsonl(out)
    assert [line for line in again if not line["image"].endswith("like.jpg")] == lines


def test_extract_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["pose", "extract", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_a_16_bit_photo_is_scaled_not_clipped_to_white(hagrid_mini, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = next((hagrid_mini / "images" / "hand_heart").glob("*.jpg"))  # its grey copy shows a person
    gray = np.asarray(Image.open(photo).convert("L"), dtype=np.uint16)
    Image.fromarray(gray * 257).save(folder / "heart-16bit.png")  # I;16: convert("RGB") made it all white
    assert Image.open(folder / "heart-16bit.png").mode == "I;16"
    assert (
        main(["pose", "extract", str(folder), "--out", str(tmp_path / "poses.jsonl"), "--workers", "1"]) == 0
    )
    assert "1 images: 1 with a person, 0 without" in capsys.readouterr().out
    np.testing.assert_array_equal(files.load_rgb(folder / "heart-16bit.png")[..., 0], gray)


def test_an_unwritable_out_is_refused_before_any_detection(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(folder / "room.png")
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "poses.jsonl"
    assert main(["pose", "extract", str(folder), "--out", str(out)]) == 2
    assert (
        f"cannot write {out}: {tmp_path / 'a-file'} is a file, not a folder; choose another --out"
        in capsys.readouterr().err
    )
    (tmp_path / "a-folder").mkdir()
    assert main(["pose", "extract", str(folder), "--out", str(tmp_path / "a-folder")]) == 2
    assert "a-folder: it is a folder; name a file; choose another --out" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*-cache"))  # refused before the detection made its cache


def test_extract_of_a_file_says_it_wants_a_folder(tmp_path, capsys):
    Image.new("RGB", (64, 48)).save(tmp_path / "one.png")
    assert main(["pose", "extract", str(tmp_path / "one.png"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert (
        "one.png is a file; pose extract reads every image under a folder: give the folder holding it"
        in capsys.readouterr().err
    )
