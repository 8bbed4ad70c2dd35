"""The HaGRID reader on the real hagrid-mini photos, on v1 layout, and with broken images."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from handsynth.data.gestures import PHRASE_TEMPLATES
from handsynth.data.hagrid import check_image, read_hagrid, verify_images
from handsynth.errors import HandsynthError

ALL_GESTURES = sorted(PHRASE_TEMPLATES)
TWO_HANDED = {"hand_heart", "hand_heart2", "take_photo", "thumb_index2", "timeout", "xsign"}


def test_reads_all_33_real_records(hagrid_mini):
    index = read_hagrid(hagrid_mini, ALL_GESTURES, verify=True)
    assert len(index.records) == 33
    assert index.missing == [] and index.corrupt == []
    assert sorted(r.gesture for r in index.records) == ALL_GESTURES
    for record in index.records:
        assert record.image_path == hagrid_mini / "images" / record.gesture / f"{record.key}.jpg"
        assert record.split == "test" and record.user_id == "hagrid-readme-sheet"
        assert record.landmarks.shape == (21, 2)
        assert record.landmarks_3d is None and record.caption is None
        x, y, w, h = record.bbox
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1.0001 and y + h <= 1.0001
        # the gesture's box holds its hand's landmarks (HaGRID v2 pads boxes around them)
        assert np.all(record.landmarks >= np.array([x, y]) - 0.02)
        assert np.all(record.landmarks <= np.array([x + w, y + h]) + 0.02)
        assert (record.united_bbox is not None) == (record.gesture in TWO_HANDED)
        assert record.gesture_box == (record.united_bbox or record.bbox)
    call = index.by_gesture("call")[0]
    assert call.key == "af467351-13ea-5abd-b3f2-360021206880"
    np.testing.assert_allclose(call.bbox, [0.16277924776077268, 0.07320164740085601, 0.8307512283325196,
                                           0.7719838500022889])  # fmt: skip
    np.testing.assert_allclose(call.landmarks[0], [0.23200851678848267, 0.6983637809753418])


def test_two_hand_gesture_uses_its_united_box(hagrid_mini):
    (record,) = read_hagrid(hagrid_mini, ["hand_heart"]).records
    entry = json.loads((hagrid_mini / "annotations/test/hand_heart.json").read_text())[record.key]
    assert record.bbox == tuple(entry["bboxes"][0])
    assert record.united_bbox == tuple(entry["united_bbox"][0])
    np.testing.assert_allclose(record.landmarks, entry["hand_landmarks"][0])


def test_missing_and_corrupt_images_are_reported_by_key(hagrid_mini, tmp_path, caplog):
    root = tmp_path / "hagrid"
    shutil.copytree(hagrid_mini, root)
    gestures = ["call", "four", "like", "mute", "ok", "palm"]
    index = read_hagrid(root, gestures)
    by_gesture = {r.gesture: r for r in index.records}
    broken, gone = by_gesture["like"], by_gesture["mute"]
    data = broken.image_path.read_bytes()
    broken.image_path.write_bytes(data[: len(data) // 2])  # a truncated download
    gone.image_path.unlink()
    (root / "images" / "palm" / "stray.jpg").write_bytes(b"not indexed, never read")

    with caplog.at_level(logging.WARNING):
        index = read_hagrid(root, gestures, verify=True)
    assert sorted(r.gesture for r in index.records) == ["call", "four", "ok", "palm"]
    assert index.missing == [(gone.key, root / "images" / "mute" / f"{gone.key}.jpg")]
    assert [(k, p) for k, p, _ in index.corrupt] == [(broken.key, broken.image_path)]
    assert "truncated" in index.corrupt[0][2]
    assert gone.key in caplog.text and broken.key in caplog.text
    assert "1 annotated image(s) are missing" in caplog.text
    assert "1 image(s) could not be read" in caplog.text

    # without verify the reader does not decode: the truncated image is only caught by verify_images
    records = read_hagrid(root, gestures).records
    good, corrupt = verify_images(records)
    assert len(good) == 4 and [c[0] for c in corrupt] == [broken.key]


def test_check_image_reasons(tmp_path, hagrid_mini):
    (tmp_path / "text.jpg").write_text("hello")
    assert check_image(tmp_path / "text.jpg").startswith("UnidentifiedImageError")
    assert check_image(tmp_path / "absent.jpg").startswith("FileNotFoundError")
    assert check_image(next((hagrid_mini / "images" / "ok").glob("*.jpg"))) is None


def test_unknown_gesture_lists_the_valid_ones(hagrid_mini):
    with pytest.raises(HandsynthError, match="unknown gesture 'wave'.*call, dislike, fist, four"):
        read_hagrid(hagrid_mini, ["call", "wave"])


def test_not_a_hagrid_folder(tmp_path):
    with pytest.raises(HandsynthError, match="not a HaGRID folder"):
        read_hagrid(tmp_path, ["call"])
    (tmp_path / "annotations" / "test").mkdir(parents=True)
    with pytest.raises(HandsynthError, match="no annotations for gesture 'call'"):
        read_hagrid(tmp_path, ["call"])
    (tmp_path / "annotations" / "test" / "call.json").write_text("{ broken")
    with pytest.raises(HandsynthError, match="cannot read annotation file .*call.json"):
        read_hagrid(tmp_path, ["call"])


def test_v1_layout_with_no_gesture_boxes(hagrid_mini, tmp_path):
    """v1: ann_train_val/<g>.json, images in train_val_<g>/, `landmarks` key, no_gesture boxes mixed in."""
    source = next((hagrid_mini / "images" / "ok").glob("*.jpg"))
    (tmp_path / "train_val_ok").mkdir()
    shutil.copy(source, tmp_path / "train_val_ok" / "k1.jpg")
    shutil.copy(source, tmp_path / "train_val_ok" / "k2.jpg")
    lm = np.linspace(0.3, 0.6, 42).reshape(21, 2).tolist()
    ann = {
        "k1": {"bboxes": [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]], "labels": ["no_gesture", "ok"],
               "leading_hand": "right", "user_id": "u1", "landmarks": [[], lm]},
        "k2": {"bboxes": [[0.2, 0.2, 0.1, 0.1]], "labels": ["no_gesture"], "user_id": "u2"},  # idle only
        "k3": {"bboxes": [[0.2, 0.2, 0.1, 0.1]], "labels": ["ok"], "user_id": "u3"},  # image missing
    }  # fmt: skip
    (tmp_path / "ann_train_val").mkdir()
    (tmp_path / "ann_train_val" / "ok.json").write_text(json.dumps(ann))
    index = read_hagrid(tmp_path, ["ok"])
    (record,) = index.records
    assert record.key == "k1" and record.split == "train_val" and record.user_id == "u1"
    assert record.bbox == (0.5, 0.5, 0.3, 0.3)  # the gesture's box, not the no_gesture one
    np.testing.assert_allclose(record.landmarks, lm)
    assert record.image_path == tmp_path / "train_val_ok" / "k1.jpg"
    assert [k for k, _ in index.missing] == ["k3"]
