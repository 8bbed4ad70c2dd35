"""handsynth.perception.hands against MediaPipe called directly, the way the reference scripts call it."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import mediapipe as mp
import numpy as np
import pytest
from PIL import Image

from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.hands import FID_H, HAND_CONF, STAGE1, HandDetector


def photo(hagrid_mini, gesture):
    return next((hagrid_mini / "images" / gesture).glob("*.jpg"))


def test_every_real_photo_has_a_hand_matching_direct_mediapipe(hagrid_mini):
    paths = sorted((hagrid_mini / "images").glob("*/*.jpg"))
    assert len(paths) == 33
    direct = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=1, min_detection_confidence=0.5)
    with HandDetector(**STAGE1) as detector, direct:
        for path in paths:
            # the reference reads with OpenCV and converts BGR -> RGB; load_rgb must give the same pixels
            reference_rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            rgb = load_rgb(path)
            np.testing.assert_array_equal(rgb, reference_rgb)
            detection = detector.detect(rgb)
            assert detection.hands, f"no hand found in {path}"
            result = direct.process(reference_rgb)
            expected = np.array([(p.x, p.y, p.z) for p in result.multi_hand_landmarks[0].landmark])
            hand = detection.first
            assert hand.landmarks.shape == (21, 3)
            np.testing.assert_allclose(hand.landmarks, expected, rtol=0, atol=1e-6)
            label = result.multi_handedness[0].classification[0]
            assert (hand.handedness, hand.score) == (label.label, pytest.approx(label.score, abs=1e-6))
            assert (detection.width, detection.height) == (rgb.shape[1], rgb.shape[0])
        assert detector.calls == 33


# MediaPipe 0.10.21 on the call photo: wrist, thumb tip, pinky tip (x, y)
EXPECTED_CALL_POINTS = [
    [0.2353537678718567, 0.6987451314926147],
    [0.5551424026489258, 0.13689541816711426],
    [0.9210162162780762, 0.7660894393920898],
]


def test_known_landmark_values_on_the_call_photo(hagrid_mini):
    with HandDetector(**STAGE1) as detector:
        hand = detector.detect(load_rgb(photo(hagrid_mini, "call"))).first
    assert hand.handedness == "Left"
    np.testing.assert_allclose(hand.landmarks[[0, 4, 20], :2], EXPECTED_CALL_POINTS, atol=1e-6)
    assert hand.feature.shape == (63,)
    np.testing.assert_array_equal(hand.feature[:3], hand.landmarks[0])


def test_union_box_is_the_reference_crop_around_both_hands(hagrid_mini):
    rgb = load_rgb(photo(hagrid_mini, "hand_heart"))
    height, width = rgb.shape[:2]
    with HandDetector(**FID_H, box_margin=0.1) as detector:
        detection = detector.detect(rgb)
    assert len(detection.hands) == 2
    points = np.concatenate([hand.landmarks[:, :2] for hand in detection.hands])
    # the reference slices image[int(ymin*h):int(ymax*h), int(xmin*w):int(xmax*w)]
    expected = (
        int(points[:, 0].min() * width),
        int(points[:, 1].min() * height),
        int(points[:, 0].max() * width),
        int(points[:, 1].max() * height),
    )
    assert detection.union_box() == expected
    for hand in detection.hands:
        x0, y0, x1, y1 = hand.box
        xs, ys = hand.landmarks[:, 0] * width, hand.landmarks[:, 1] * height
        margin_x, margin_y = 0.1 * (xs.max() - xs.min()), 0.1 * (ys.max() - ys.min())
        assert x0 == max(0, int(np.floor(xs.min() - margin_x)))
        assert y1 == min(height, int(np.ceil(ys.max() + margin_y)))
        assert x1 == min(width, int(np.ceil(xs.max() + margin_x)))
        assert y0 == max(0, int(np.floor(ys.min() - margin_y)))


def test_presets_reproduce_the_reference_settings(hagrid_mini):
    assert STAGE1 == {"max_num_hands": 1, "min_detection_confidence": 0.5}
    assert HAND_CONF == {"max_num_hands": 2, "min_detection_confidence": 0.0}
    assert FID_H == {"max_num_hands": 2, "min_detection_confidence": 0.5}
    rgb = load_rgb(photo(hagrid_mini, "xsign"))
    with HandDetector(**STAGE1) as one, HandDetector(**HAND_CONF) as two:
        assert len(one.detect(rgb).hands) == 1
        assert len(two.detect(rgb).hands) == 2


def test_blank_image_has_no_hand_and_no_box():
    with HandDetector(**HAND_CONF) as detector:
        detection = detector.detect(np.full((128, 96, 3), 200, dtype=np.uint8))
    assert detection.hands == [] and detection.first is None
    assert detection.union_box() is None
    assert detector.calls == 1


def test_detect_rejects_arrays_that_are_not_uint8_rgb():
    with HandDetector() as detector:
        with pytest.raises(HandsynthError, match="uint8 RGB"):
            detector.detect(np.zeros((32, 32), dtype=np.uint8))
        with pytest.raises(HandsynthError, match="uint8 RGB"):
            detector.detect(np.zeros((32, 32, 3), dtype=np.float32))
        assert detector.calls == 0


def test_load_rgb_normalises_grayscale_rgba_and_exif_rotation(tmp_path):
    gray = np.arange(12 * 8, dtype=np.uint8).reshape(12, 8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgb = load_rgb(tmp_path / "gray.png")
    assert rgb.shape == (12, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (10, 20, 30, 255)  # opaque top half, transparent (black) bottom half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = load_rgb(tmp_path / "rgba.png")
    np.testing.assert_array_equal(rgb[:2], np.full((2, 4, 3), (10, 20, 30)))
    np.testing.assert_array_equal(rgb[2:], np.full((2, 4, 3), 255))  # composited on white

    upright = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    stored.save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(load_rgb(tmp_path / "rotated.png"), upright)


def test_load_rgb_names_missing_and_corrupt_files(tmp_path, hagrid_mini):
    with pytest.raises(HandsynthError, match="image not found: .*nothing.jpg"):
        load_rgb(tmp_path / "nothing.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(HandsynthError, match="cannot decode image .*garbage.jpg"):
        load_rgb(tmp_path / "garbage.jpg")
    data = photo(hagrid_mini, "palm").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(HandsynthError, match="truncated.jpg"):
        load_rgb(tmp_path / "truncated.jpg")


def test_mediapipe_import_leaves_pyplot_to_load_on_first_use():
    # a fresh interpreter: this one has imported MediaPipe already
    code = (
        "import sys\n"
        "from handsynth.perception.hands import import_mediapipe\n"
        "mp = import_mediapipe()\n"
        "assert 'matplotlib.figure' not in sys.modules, 'pyplot was loaded'\n"
        "import matplotlib.pyplot as plt\n"
        "figure = plt.figure()\n"
        "assert 'matplotlib.figure' in sys.modules and figure.number == 1\n"
        "assert mp.solutions.drawing_utils.plt.gcf() is figure and sys.modules['matplotlib.pyplot'] is plt\n"
        "print('ok')\n"
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
