import json

import mediapipe as mp
import numpy as np
import pytest

from handsynth.data.hagrid import read_hagrid
from handsynth.data.synthetic import SYNTHETIC_GESTURES, render_sample, write_synthetic_hagrid


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_hagrid(tmp_path_factory.mktemp("syn") / "hagrid", per_gesture=3, size=64, seed=7)


def test_writes_hagrid_v2_layout(synthetic):
    for gesture in SYNTHETIC_GESTURES:
        entries = json.loads((synthetic / "annotations" / "train" / f"{gesture}.json").read_text())
        assert len(entries) == 3
        for key, entry in entries.items():
            assert (synthetic / "images" / gesture / f"{key}.jpg").is_file()
            assert entry["labels"][0] == gesture
            assert set(entry["labels"][1:]) <= {"no_gesture"}
            assert len(entry["bboxes"]) == len(entry["labels"]) == len(entry["hand_landmarks"])
            for box in entry["bboxes"]:
                x, y, w, h = box
                assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9 and w > 0 and h > 0
            assert np.asarray(entry["hand_landmarks"][0]).shape == (21, 2)
            assert np.asarray(entry["hand_landmarks_3d"][0]).shape == (21, 3)
            assert entry["user_id"].startswith(f"synthetic-{gesture}-")
            assert entry["caption"].startswith("a ")


def test_reader_round_trip_gives_the_drawn_landmarks(synthetic):
    index = read_hagrid(synthetic, SYNTHETIC_GESTURES)
    assert len(index.records) == 18 and not index.missing
    for record in index.records:
        number = next(i for i in range(3) if record.key == _key(record.gesture, i))
        _, drawn = render_sample(7, record.gesture, number, 64)
        np.testing.assert_array_equal(record.landmarks, np.asarray(drawn["hand_landmarks"][0]))
        np.testing.assert_array_equal(record.landmarks_3d, np.asarray(drawn["hand_landmarks_3d"][0]))
        assert record.bbox == tuple(drawn["bboxes"][0])


def _key(gesture, index):
    from handsynth.data.synthetic import sample_key

    return sample_key(7, gesture, index)


def test_deterministic_for_a_seed_at_any_size():
    a, entry_a = render_sample(3, "ok", 5, 96)
    b, entry_b = render_sample(3, "ok", 5, 96)
    c, _ = render_sample(4, "ok", 5, 96)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and entry_a == entry_b
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # the landmarks are normalised, so they do not depend on the output size
    big, entry_big = render_sample(3, "ok", 5, 512)
    assert big.size == (512, 512)
    assert entry_big["hand_landmarks"] == entry_a["hand_landmarks"]


def test_resume_skips_finished_gestures(synthetic):
    before = {p: p.stat().st_mtime_ns for p in (synthetic / "annotations" / "train").iterdir()}
    write_synthetic_hagrid(synthetic, per_gesture=3, size=64, seed=7)
    after = {p: p.stat().st_mtime_ns for p in (synthetic / "annotations" / "train").iterdir()}
    assert before == after


@pytest.mark.parametrize(("gesture", "index"), [("palm", 0), ("like", 1), ("mute", 2), ("call", 2)])
def test_mediapipe_finds_the_hand_where_it_was_drawn(gesture, index):
    image, entry = render_sample(0, gesture, index, 256)
    with mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=1) as hands:
        result = hands.process(np.asarray(image))
    assert result.multi_hand_landmarks, f"MediaPipe found no hand in synthetic {gesture} #{index}"
    found = np.array([[p.x, p.y] for p in result.multi_hand_landmarks[0].landmark])
    assert np.abs(found - np.asarray(entry["hand_landmarks"][0])).mean() < 0.03


def test_gesture_without_a_pose_is_a_clear_error(tmp_path):
    from handsynth.errors import HandsynthError

    with pytest.raises(HandsynthError, match="no pose for 'peace'.*renders: call, four"):
        write_synthetic_hagrid(tmp_path, gestures=["call", "peace"], per_gesture=1, size=64)
    with pytest.raises(HandsynthError, match="unknown gesture 'wave'"):
        render_sample(0, "wave", 0, 64)
    assert not (tmp_path / "annotations").exists()  # checked before anything is written


# sha256 (first 16 hex) of the pixels and of the annotation entry, from the generator before it learnt to
# write whole-body keypoints and masks: the Hand1000 outputs must not change for a seed.
PINNED_RENDERS = {
    (0, "call", 0, 64): ("9e64f04e3391376d", "497310bf88934027"),
    (7, "mute", 2, 96): ("834144669842655c", "615d4295f70087cb"),
    (3, "palm", 5, 512): ("bae468f271251ac0", "f83d64ecd1b156ab"),
    (0, "ok", 11, 256): ("71a6f18c5a3f0951", "82a5a285ac0e088e"),
    (0, "like", 3, 64): ("6d8deeabeb94090d", "d506cede4c15f7d3"),  # with the idle second hand
}


@pytest.mark.parametrize("args", list(PINNED_RENDERS), ids=lambda a: f"{a[1]}-{a[2]}-{a[3]}")
def test_renders_are_byte_identical_to_the_pinned_ones(args):
    import hashlib

    image, entry = render_sample(*args)
    pixels = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()[:16]
    annotation = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    assert (pixels, annotation) == PINNED_RENDERS[args]
