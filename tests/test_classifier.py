"""The landmark gesture classifier on the 33 real HaGRID photos, copies of them mirrored, turned and
small in the frame, and its invariances. benchmarks/classifier.py measures the same on more images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from handsynth.errors import HandsynthError
from handsynth.files import load_rgb
from handsynth.perception.classifier import (
    FACING_MIN_COS,
    TARGET_GESTURES,
    GestureClassifier,
    classify_landmarks,
    finger_states,
    palm_facing,
    two_hands,
)
from handsynth.perception.hands import Hand

# A non-target photo may be "unknown" or its nearest target: the same hand shape, read differently.
NEAREST_TARGET = {
    "one": "mute",  # a lone index finger up; only the face position tells them apart
    "stop": "palm",  # five fingers up, held together
    "stop_inverted": "palm",
    "timeout": "four",  # the flat hand of the T, thumb folded
}


@pytest.fixture(scope="module")
def photos(hagrid_mini):
    """gesture -> (RGB image, label, first-hand landmarks, aspect)."""
    out = {}
    with GestureClassifier() as classifier:
        for path in sorted((hagrid_mini / "images").glob("*/*.jpg")):
            rgb = load_rgb(path)
            label, hand = classifier.classify_with_hand(rgb)
            out[path.parent.name] = (rgb, label, hand.landmarks, rgb.shape[1] / rgb.shape[0])
    return out


def test_the_six_paper_gestures_are_recognised(photos):
    assert {g: photos[g][1] for g in TARGET_GESTURES} == {g: g for g in TARGET_GESTURES}


def test_non_target_gestures_are_unknown_or_their_nearest_target(photos):
    others = {g: label for g, (_, label, _, _) in photos.items() if g not in TARGET_GESTURES}
    assert len(others) == 27
    wrong = {g: label for g, label in others.items() if label not in ("unknown", NEAREST_TARGET.get(g))}
    assert wrong == {}
    assert sum(label == "unknown" for label in others.values()) >= 24


def test_mute_needs_the_index_tip_at_the_mouth(hagrid_mini, photos):
    rgb, _, landmarks, aspect = photos["mute"]
    with GestureClassifier() as classifier:
        faces = classifier.face_boxes(rgb)
    assert len(faces) == 1  # the mute photo shows the face, and the classifier uses it
    assert classify_landmarks(landmarks, face_box=faces[0], aspect=aspect) == "mute"
    far_face = (0.0, 0.6, 0.2, 0.9)  # a face in the lower-left corner, away from the fingertip
    assert classify_landmarks(landmarks, face_box=far_face, aspect=aspect) == "unknown"
    assert finger_states(landmarks, aspect) == {
        "thumb": "bent",
        "index": "extended",
        "middle": "curled",
        "ring": "curled",
        "pinky": "curled",
    }


def rotate(landmarks, degrees):
    """Rotate in the image plane about the hand's centre (x, y) and scale by 1.7."""
    theta = np.radians(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    out = landmarks.copy()
    centre = landmarks[:, :2].mean(axis=0)
    out[:, :2] = (landmarks[:, :2] - centre) @ rotation.T * 1.7 + centre
    out[:, 2] *= 1.7
    return out


@pytest.mark.parametrize("gesture", TARGET_GESTURES)
@pytest.mark.parametrize("degrees", [30, 90, 180])
def test_finger_states_ignore_scale_and_rotation(photos, gesture, degrees):
    _, _, landmarks, _ = photos[gesture]
    assert finger_states(rotate(landmarks, degrees)) == finger_states(landmarks)


def test_direction_matters_where_the_gesture_defines_it(photos):
    like = photos["like"][2]
    assert classify_landmarks(like) == "like"
    assert classify_landmarks(rotate(like, 180)) == "unknown"  # thumbs down: dislike, not like
    for gesture in ("call", "four", "ok", "palm"):  # shape-only gestures survive a turned hand
        assert classify_landmarks(rotate(photos[gesture][2], 90)) == gesture


def test_two_dimensional_annotation_landmarks_classify_the_same(photos):
    for gesture in ("call", "four", "like", "ok", "palm"):
        assert classify_landmarks(photos[gesture][2][:, :2]) == gesture


def test_ok_needs_thumb_index_contact(photos):
    ok = photos["ok"][2].copy()
    ok[4, :2] = ok[8, :2] + (ok[4, :2] - ok[8, :2]) * 8  # pull the thumb tip away from the index tip
    assert classify_landmarks(ok) == "unknown"


def test_blank_image_is_unknown_and_bad_shapes_are_errors():
    with GestureClassifier() as classifier:
        assert classifier.classify(np.full((64, 64, 3), 255, dtype=np.uint8)) == "unknown"
    with pytest.raises(HandsynthError, match="21 landmarks"):
        classify_landmarks(np.zeros((20, 3)))


def test_aspect_keeps_angles_true_on_non_square_images(photos):
    for gesture in TARGET_GESTURES:
        _, _, landmarks, aspect = photos[gesture]
        wide = landmarks.copy()  # the same hand, in an image padded to 3x its width
        wide[:, 0] /= 3
        wide[:, 2] /= 3  # MediaPipe z is on the scale of x
        assert classify_landmarks(wide, aspect=3 * aspect) == gesture
    squeezed = photos["palm"][2].copy()
    squeezed[:, [0, 2]] /= 3
    assert classify_landmarks(squeezed) == "four"  # aspect ignored: the thumb looks folded


TWO_HAND_GESTURES = ["hand_heart", "hand_heart2", "holy", "take_photo", "thumb_index2", "timeout", "xsign"]


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    rgb = np.asarray(image)
    return tuple(int(c) for c in np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0))


def turned(image: Image.Image, degrees: int) -> Image.Image:
    """Turned counter-clockwise, the canvas grown to hold it, filled with the border's mean colour
    (as benchmarks/classifier.py does)."""
    return image.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=border_colour(image))


def small_in_frame(image: Image.Image, factor: int = 3) -> Image.Image:
    """The photo, its pixels kept, in the upper middle of a canvas `factor` times its size."""
    canvas = Image.new("RGB", (image.width * factor, image.height * factor), border_colour(image))
    canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 3))
    return canvas


@pytest.fixture(scope="module")
def copies(hagrid_mini):
    """(gesture, copy) -> label, for the copies the tests below pin."""
    wanted = {g: ["mirrored"] for g in (*TARGET_GESTURES, *TWO_HAND_GESTURES)}
    for gesture in ("call", "four", "ok", "palm"):
        wanted[gesture] += ["turned 90", "turned 180"]
    for gesture in ("like", "mute"):
        wanted[gesture] += ["turned 30"]
    wanted["like"] += ["turned 180"]
    wanted["mute"] += ["turned -30"]
    wanted["ok"] += ["small"]
    out = {}
    with GestureClassifier() as classifier:
        for gesture, names in wanted.items():
            photo = Image.open(next((hagrid_mini / "images" / gesture).glob("*.jpg"))).convert("RGB")
            for name in names:
                if name == "mirrored":
                    image = ImageOps.mirror(photo)
                elif name == "small":
                    image = small_in_frame(photo)
                else:
                    image = turned(photo, int(name.split()[1]))
                out[gesture, name] = classifier.classify(np.asarray(image))
    return out


def test_every_non_target_photo_is_unknown(photos):
    """Stronger than the nearest-target allowance above: all 27, the two-hand timeout included."""
    assert {g: label for g, (_, label, _, _) in photos.items() if g not in TARGET_GESTURES} == {
        g: "unknown" for g in photos if g not in TARGET_GESTURES
    }


@pytest.mark.slow
def test_two_hand_gestures_are_never_read_as_a_target(photos, copies):
    """Palms pressed together (holy, found as one hand or two) and hands that touch (timeout's T) read
    as a one-hand gesture before: holy mirrored and timeout were `four`."""
    for gesture in TWO_HAND_GESTURES:
        assert (photos[gesture][1], copies[gesture, "mirrored"]) == ("unknown", "unknown"), gesture


@pytest.mark.slow
def test_the_six_survive_mirroring_turning_and_a_small_hand(copies):
    for (gesture, name), label in copies.items():
        if gesture in TARGET_GESTURES and (gesture, name) != ("like", "turned 180"):
            assert label == gesture, (gesture, name)
    assert copies["like", "turned 180"] == "unknown"  # a thumbs-down


def _hand(landmarks: np.ndarray, handedness: str) -> Hand:
    return Hand(landmarks=landmarks, handedness=handedness, score=1.0, box=(0, 0, 1, 1))


def test_two_hands_are_the_same_touching_or_apart(photos):
    with GestureClassifier() as classifier:
        for gesture, relation in (
            ("hand_heart", "touching"),
            ("timeout", "touching"),
            ("thumb_index2", "apart"),
        ):
            rgb = photos[gesture][0]
            first, second = classifier.hands.detect(rgb).hands
            assert two_hands(first, second, rgb.shape[1] / rgb.shape[0]) == relation, gesture
    palm = photos["palm"][2]
    assert two_hands(_hand(palm, "Right"), _hand(palm + 0.005, "Right")) == "same"  # found twice
    assert two_hands(_hand(palm, "Right"), _hand(palm + 0.005, "Left")) == "touching"  # pressed palms
    away = palm.copy()
    away[:, 0] += 2.5 * (palm[:, 0].max() - palm[:, 0].min())
    assert two_hands(_hand(palm, "Right"), _hand(away, "Left")) == "apart"


def _turn_about(
    landmarks: np.ndarray, start: int, end: int, degrees: float, joints=slice(None)
) -> np.ndarray:
    """The landmarks in `joints` turned in 3-D about the axis through `start` and `end` (aspect 1)."""
    points = landmarks.copy()
    axis = (points[end] - points[start]) / np.linalg.norm(points[end] - points[start])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.radians(degrees)
    rotation = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k  # Rodrigues
    points[joints] = (points[joints] - points[start]) @ rotation.T + points[start]
    return points


def test_palm_and_four_must_face_the_camera(photos):
    """Turned about its long axis the palm is read until it is more edge-on than face-on."""
    palm = photos["palm"][2]
    assert palm_facing(palm) > 0.9
    assert classify_landmarks(_turn_about(palm, 0, 9, 30)) == "palm"
    edge_on = _turn_about(palm, 0, 9, 60)
    assert palm_facing(edge_on) < FACING_MIN_COS and classify_landmarks(edge_on) == "unknown"
    _, label, holy, aspect = photos["holy"]  # MediaPipe takes the pressed palms for one hand ...
    states = finger_states(holy, aspect)
    assert [states[f] for f in ("index", "middle", "ring", "pinky")] == [
        "extended"
    ] * 4  # ... four fingers up
    assert palm_facing(holy, aspect) < FACING_MIN_COS and label == "unknown"


def _uncurl(landmarks: np.ndarray, share: float) -> np.ndarray:
    """The little finger moved `share` of the way from its pose to straight out from its knuckle."""
    points = landmarks.copy()
    direction = (points[17] - points[0]) / np.linalg.norm(points[17] - points[0])
    lengths = np.linalg.norm(np.diff(points[17:21], axis=0), axis=1)
    straight = points[17] + np.outer(np.cumsum(lengths), direction)
    points[18:21] = (1 - share) * points[18:21] + share * straight
    return points


def test_ok_and_like_hold_with_a_loose_finger_and_a_depth_error(photos):
    """A relaxed hand lets one finger sag into a bend; MediaPipe's depth is its least certain value."""
    ok, like = photos["ok"][2], photos["like"][2]
    sagging = _turn_about(ok, 17, 13, -60, joints=slice(18, 21))  # the little finger bends at its knuckle
    assert finger_states(sagging)["pinky"] == "bent" and classify_landmarks(sagging) == "ok"
    loose = _uncurl(like, 0.65)  # the little finger half out of the fist
    assert finger_states(loose)["pinky"] == "bent" and classify_landmarks(loose) == "like"
    deep = ok.copy()
    deep[4, 2] += 0.5 * np.linalg.norm(ok[9] - ok[0])  # the thumb tip set half a palm behind
    assert classify_landmarks(deep) == "ok"


@pytest.mark.parametrize("degrees", [-40, -20, 20, 40])
def test_ok_and_like_survive_turning_in_depth(photos, degrees):
    """Turned about the image's vertical axis (through the wrist) the hand keeps its reading."""
    for gesture in ("ok", "like"):
        landmarks = photos[gesture][2].copy()
        axis_end = landmarks[0] + np.array([0.0, -0.1, 0.0])
        turned_hand = _turn_about(np.vstack([landmarks, axis_end]), 0, 21, degrees)[:21]
        assert classify_landmarks(turned_hand) == gesture, (gesture, degrees)


def shrunk(hagrid_mini, gesture: str, hand_px: int) -> np.ndarray:
    """The photo scaled until its largest hand (HaGRID's box) is `hand_px` on its longer side, in the
    upper middle of a 512 px canvas: a generated person's hand (as benchmarks/classifier.py)."""
    path = next((hagrid_mini / "images" / gesture).glob("*.jpg"))
    annotation = json.loads((hagrid_mini / "annotations" / "test" / f"{gesture}.json").read_text())
    photo = Image.open(path).convert("RGB")
    largest = max(max(w * photo.width, h * photo.height) for _, _, w, h in annotation[path.stem]["bboxes"])
    scale = hand_px / largest
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (512, 512), border_colour(photo))
    canvas.paste(photo, ((512 - photo.width) // 2, (512 - photo.height) // 3))
    return np.asarray(canvas)


@pytest.mark.slow
def test_small_hands_in_a_large_frame_are_found_and_read(hagrid_mini):
    """Before the tile search and the three readings that must agree, at 32 px in a 512 px frame
    MediaPipe found none of the six hands, and grabbing at 44 px and stop at 56 px read as `four`."""
    cases = [(g, 32) for g in TARGET_GESTURES] + [("grabbing", 44), ("stop", 56)]
    with GestureClassifier() as classifier:
        got = {case: classifier.classify_with_hand(shrunk(hagrid_mini, *case)) for case in cases}
    assert {case: label for case, (label, _) in got.items()} == {
        **{(g, 32): g for g in TARGET_GESTURES},
        ("grabbing", 44): "unknown",
        ("stop", 56): "unknown",
    }
    # the hand it was read from is the small one, in the whole image's pixels
    x0, y0, x1, y1 = got["palm", 32][1].box
    assert 20 <= max(x1 - x0, y1 - y0) <= 40 and 150 < (x0 + x1) / 2 < 360
