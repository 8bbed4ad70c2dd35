"""InterHand2.6M (Moon et al., ECCV 2020) as released at https://github.com/facebookresearch/InterHand2.6M
(layout and files per its README and `data/InterHand2.6M/dataset.py`):

    <root>/images/<split>/<file_name>                       Capture*/<seq_name>/cam*/image*.jpg
    <root>/annotations/<split>/InterHand2.6M_<split>_data.json      COCO-style "images" and "annotations"
    <root>/annotations/<split>/InterHand2.6M_<split>_camera.json    capture -> campos/camrot/focal/princpt
                                                                    -> camera -> values
    <root>/annotations/<split>/InterHand2.6M_<split>_joint_3d.json  capture -> frame_idx -> world_coord

An image's 42 joints are its capture's frame in world coordinates (mm), projected into its camera as
the official loader does: x_cam = R (x_world - campos), u = f x / z + c. The joints come right hand
first, then left, each hand tip to base per finger (thumb, index, middle, ring, pinky) and the wrist last;
`annotations[].joint_valid` marks the labelled ones (a hand whose wrist is not valid is left out whole,
as the official loader does). These keypoints are exact, so no Holistic run is needed; hand masks come
from SAM or the landmarks. Captions are per sequence (`seq_name`) from `pose.captions`, else a template
naming the hand; the records are grouped by `hand_type` (right, left, interacting).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handsynth.errors import HandsynthError
from handsynth.twostage.data.sources.records import (
    SourceIndex,
    SourceRecord,
    array,
    hand_keypoints,
    hands_caption,
    malformed,
    read_json,
    sequence_captions,
    to_pixels,
    two_hands_pose,
)

SPLITS = ("train", "val", "test")
HAND_TYPES = ("right", "left", "interacting")
JOINTS_PER_HAND = 21
CAMERA_SHAPES = {"campos": (3,), "camrot": (3, 3), "focal": (2,), "princpt": (2,)}
# MediaPipe's point i is InterHand2.6M's joint MEDIAPIPE_FROM_INTERHAND[i] of the same hand
MEDIAPIPE_FROM_INTERHAND = np.array([20] + [4 * finger + 3 - k for finger in range(5) for k in range(4)])


def project(world: np.ndarray, campos, camrot, focal, princpt) -> np.ndarray:
    """(N, 3) world points (mm) -> (N, 3) pixel x, y and camera depth z."""
    return to_pixels((camrot @ (world - campos).T).T, focal, princpt)


def hands_from_42(pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) hands in MediaPipe's order from InterHand2.6M's 42 joints (pixels (42, 3): x, y, z)."""
    hands = []
    for first in (0, JOINTS_PER_HAND):  # right, then left
        labelled = valid[first : first + JOINTS_PER_HAND][MEDIAPIPE_FROM_INTERHAND]
        if not labelled[0]:  # no wrist: the official loader drops the whole hand
            labelled = np.zeros_like(labelled)
        hands.append(
            hand_keypoints(pixels[first : first + JOINTS_PER_HAND][MEDIAPIPE_FROM_INTERHAND], labelled)
        )
    return hands[0], hands[1]


def _split_files(root: Path, split: str) -> dict[str, Path]:
    folder = root / "annotations" / split
    return {kind: folder / f"InterHand2.6M_{split}_{kind}.json" for kind in ("data", "camera", "joint_3d")}


def read_interhand(root: Path, captions_file: str = "") -> SourceIndex:
    splits = [s for s in SPLITS if _split_files(root, s)["data"].is_file()]
    if not splits:
        raise HandsynthError(
            f"{root} is not an InterHand2.6M folder: expected "
            "annotations/<split>/InterHand2.6M_<split>_data.json with its _camera.json and _joint_3d.json, "
            "and images/<split>/, as the official release"
        )
    captions = sequence_captions(captions_file, "InterHand2.6M")
    records, missing = [], []
    for split in splits:
        paths = _split_files(root, split)
        data = read_json(paths["data"], "InterHand2.6M annotations")
        cameras = read_json(paths["camera"], "InterHand2.6M cameras")
        joints = read_json(paths["joint_3d"], "InterHand2.6M 3D joints")
        images = {image.get("id"): image for image in data.get("images", [])}
        for n, ann in enumerate(data.get("annotations", [])):
            name = f"annotation {ann.get('id', f'#{n}')}"
            record = _record(root, split, ann, images, cameras, joints, captions, paths, name)
            if record.image_path.is_file():
                records.append(record)
            else:
                missing.append((record.key, record.image_path))
    groups = [t for t in HAND_TYPES if any(r.gesture == t for r in records)]
    return SourceIndex(records=records, missing=missing, groups=groups)


def _record(root, split, ann, images, cameras, joints, captions, paths, name) -> SourceRecord:
    image = images.get(ann.get("image_id"))
    if image is None:
        raise malformed(paths["data"], name, f"its image_id {ann.get('image_id')} is not in 'images'")
    try:
        capture, camera, frame = str(image["capture"]), str(image["camera"]), str(image["frame_idx"])
        file_name = image["file_name"]
    except KeyError as exc:
        raise malformed(paths["data"], name, f"its image {image.get('id')} has no {exc}") from None
    try:
        camera_params = {k: cameras[capture][k][camera] for k in CAMERA_SHAPES}
    except (KeyError, TypeError) as exc:
        raise malformed(
            paths["camera"], name, f"no camera entry {exc} for its image {image.get('id')}"
        ) from None
    camera_params = {
        k: array(v, CAMERA_SHAPES[k], paths["camera"], name, k) for k, v in camera_params.items()
    }
    try:
        world = joints[capture][frame]["world_coord"]
    except (KeyError, TypeError) as exc:
        raise malformed(
            paths["joint_3d"], name, f"no 3D joints {exc} for capture {capture}, frame {frame}"
        ) from None
    world = array(world, (2 * JOINTS_PER_HAND, 3), paths["joint_3d"], name, "world_coord")
    valid = ann.get("joint_valid")
    nested = isinstance(valid, list) and bool(valid) and isinstance(valid[0], list)  # 42 x [v], or 42 flags
    shape = (2 * JOINTS_PER_HAND, 1) if nested else (2 * JOINTS_PER_HAND,)
    valid = array(valid, shape, paths["data"], name, "joint_valid").reshape(-1)
    hand_type = ann.get("hand_type")
    if hand_type not in HAND_TYPES:
        raise malformed(paths["data"], name, f"hand_type must be one of {HAND_TYPES}, got {hand_type!r}")
    right, left = hands_from_42(project(world, **camera_params), valid > 0)
    sequence = image.get("seq_name", "")
    return SourceRecord(
        key=f"ih-{split}-{image['id']}",
        image_path=root / "images" / split / file_name,
        gesture=hand_type,
        split=split,
        caption=captions.get(sequence) or hands_caption(hand_type),
        keypoints=two_hands_pose(right, left),
        user_id=str(image.get("subject", "")) or None,
    )
