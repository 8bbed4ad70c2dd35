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


# ---------------------------------------------------------------- what the two-stage method reads


@pytest.mark.parametrize(
    ("gesture", "index"), [("call", 0), ("mute", 2), ("like", 3), ("palm", 1), ("ok", 4)]
)
def test_hand_mask_covers_the_drawn_hand_and_little_else(gesture, index):
    from handsynth.data.synthetic import render_figure

    figure = render_figure(0, gesture, index, 256)
    mask, keypoints = figure.hand_mask, figure.keypoints
    assert mask.shape == (256, 256) and mask.dtype == bool
    hands = keypoints[91:133]
    drawn = hands[hands[:, 2] > 0]
    assert len(drawn) >= 21
    for x, y, _ in drawn:  # every drawn joint is on the mask (within the pixel it rounds to)
        assert mask[min(int(y), 255), min(int(x), 255)], (gesture, index, x, y)
    # the mask is the hand, not the picture: inside the hands' boxes grown by 30% of their size
    inside = np.zeros_like(mask)
    for part in (slice(91, 112), slice(112, 133)):
        points = keypoints[part][keypoints[part][:, 2] > 0, :2]
        if len(points):
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            pad = 0.3 * max(x1 - x0, y1 - y0)  # the wrist's end of the forearm is the hand's
            inside[max(0, int(y0 - pad)) : int(y1 + pad) + 1, max(0, int(x0 - pad)) : int(x1 + pad) + 1] = (
                True
            )
    assert mask[~inside].sum() == 0 and 0.01 < mask.mean() < 0.5


class _DrawingLog:
    """cv2 for the renderer, logging the lines and circles it draws on the colour canvas."""

    def __init__(self, cv2):
        self._cv2, self.lines, self.circles = cv2, [], []

    def __getattr__(self, name):
        return getattr(self._cv2, name)

    def line(self, image, p, q, colour, *args, **kwargs):
        if image.ndim == 3:
            self.lines.append((tuple(p), tuple(q), tuple(int(c) for c in colour)))
        return self._cv2.line(image, p, q, colour, *args, **kwargs)

    def circle(self, image, centre, radius, colour, *args, **kwargs):
        if image.ndim == 3:
            self.circles.append((tuple(centre), tuple(int(c) for c in colour)))
        return self._cv2.circle(image, centre, radius, colour, *args, **kwargs)


@pytest.mark.parametrize(("gesture", "index"), [("call", 0), ("like", 3), ("four", 2), ("mute", 2)])
def test_body_keypoints_lie_where_the_joints_were_drawn(monkeypatch, gesture, index):
    """Every body keypoint is an end of a limb the renderer drew (logged from its cv2 calls), and the
    hands are the annotation's landmarks."""
    import cv2

    from handsynth.data import synthetic

    log = _DrawingLog(cv2)
    monkeypatch.setattr(synthetic, "cv2", log)
    figure = synthetic.render_figure(0, gesture, index, 256)
    kp = figure.keypoints * [2, 2, 1]  # drawn at 512 px, written at 256

    def drawn(a, b, colour=None):  # a line from joint a to joint b, ends within 1 px
        return any(
            np.abs(np.subtract(p, kp[a, :2])).max() <= 1 and np.abs(np.subtract(q, kp[b, :2])).max() <= 1
            for p, q, c in log.lines
            if colour is None or c == colour
        )

    eyes = [c for c, colour in log.circles if colour == (40, 30, 30)]
    assert sorted(eyes) == sorted(tuple(int(v) for v in kp[i, :2]) for i in (1, 2))
    assert kp[1, 0] > kp[2, 0]  # the subject faces us: the left eye is on the image's right
    clothing = synthetic._COLOURS[figure.entry["caption"].split(" in a ")[1].split()[0]]
    arms = 0
    for shoulder, elbow, wrist in ((5, 7, 9), (6, 8, 10)):
        assert kp[shoulder, 2] == 2  # the torso is drawn under both shoulders
        if kp[elbow, 2] > 0:
            assert drawn(shoulder, elbow, clothing), (shoulder, elbow)  # the sleeve
            assert drawn(elbow, wrist), (elbow, wrist)  # the forearm
            arms += 1
    assert arms == len(figure.entry["labels"])  # one arm per hand
    labels = figure.entry["labels"]
    for label, landmarks in zip(labels, figure.entry["hand_landmarks"], strict=True):
        side = [
            s for s in (91, 112) if np.allclose(figure.keypoints[s : s + 21, :2] / 256, landmarks, atol=1e-5)
        ]
        assert len(side) == 1, label
        np.testing.assert_array_equal(kp[9 if side[0] == 91 else 10, :2], kp[side[0], :2])  # wrist
    # not drawn: nose, ears, hips, legs, feet, face
    assert (kp[[0, 3, 4, *range(11, 91)], 2] == 0).all()


def test_twostage_files_are_written_and_added_to_an_existing_folder(tmp_path):
    from handsynth.data.synthetic import render_figure

    folder = write_synthetic_hagrid(tmp_path / "syn", ["call", "palm"], per_gesture=2, size=64, seed=3)
    annotation = (folder / "annotations" / "train" / "call.json").read_bytes()
    assert not (folder / "wholebody").exists() and not (folder / "masks").exists()
    write_synthetic_hagrid(folder, ["call", "palm"], per_gesture=2, size=64, seed=3, twostage=True)
    assert (folder / "annotations" / "train" / "call.json").read_bytes() == annotation  # Hand1000's unchanged
    table = json.loads((folder / "wholebody" / "train" / "palm.json").read_text())
    for index in range(2):
        key = _key_for(3, "palm", index)
        figure = render_figure(3, "palm", index, 64)
        np.testing.assert_allclose(table[key], figure.keypoints, atol=1e-3)
        from PIL import Image

        written = np.asarray(Image.open(folder / "masks" / "palm" / f"{key}.png")) > 127
        np.testing.assert_array_equal(written, figure.hand_mask)
    before = {p: p.stat().st_mtime_ns for p in (folder / "wholebody" / "train").iterdir()}
    write_synthetic_hagrid(folder, ["call", "palm"], per_gesture=2, size=64, seed=3, twostage=True)
    assert before == {p: p.stat().st_mtime_ns for p in (folder / "wholebody" / "train").iterdir()}


def _key_for(seed, gesture, index):
    from handsynth.data.synthetic import sample_key

    return sample_key(seed, gesture, index)
