"""Re:InterHand (Moon et al., NeurIPS 2023 Datasets and Benchmarks, https://mks0601.github.io/ReInterHand/)
as its authors read it in https://github.com/facebookresearch/InterWild (`data/ReInterHand/ReInterHand.py`):

    <root>[/data]/<capture_id>/Mugsy_cameras/cam_params.json            camera -> R, t (mm), focal, princpt
    <root>[/data]/<capture_id>/Mugsy_cameras/<envmap>/images/<camera>/<frame:06d>.png
    <root>[/data]/<capture_id>/orig_fits/{right,left}/Keypoints/keypoint-<frame:06d>.json   24 x [x, y, z] mm

<envmap> is envmap_per_frame or envmap_per_segment (both are read when present). Each hand's 24 joints
are the wrist, thumb 0-4, index 1-4, middle 1-4, ring 1-4, pinky 0-4 and a forearm stub; MediaPipe's 21
points are the wrist and joints 1-4 of each finger (the loader maps them onto MANO's the same way).
They are projected as the loader does: x_cam = R x_world + t, u = f x / z + c. The three test captures
are the loader's; every other capture is "train". Captions are per capture from `pose.captions`, else a
template; every frame shows two hands (group "interacting").
"""

from __future__ import annotations

import hashlib
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

TEST_CAPTURES = (
    "m--20221215--0949--RNS217--pilot--ProjectGoliathScript--Hands--two-hands",
    "m--20221216--0953--NKC880--pilot--ProjectGoliathScript--Hands--two-hands",
    "m--20230317--1130--QZX685--pilot--ProjectGoliath--Hands--two-hands",
)
JOINTS = 24
MEDIAPIPE_FROM_REINTERHAND = np.array(
    [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22]
)
GROUP = "interacting"
CAMERA_SHAPES = {"R": (3, 3), "t": (3,), "focal": (2,), "princpt": (2,)}


def project(world: np.ndarray, R, t, focal, princpt) -> np.ndarray:  # noqa: N803 (the release's names)
    """(N, 3) world points (mm) -> (N, 3) pixel x, y and camera depth z."""
    return to_pixels((R @ world.T).T + t, focal, princpt)


def _hand(path: Path, record: str, camera: dict) -> np.ndarray:
    world = array(read_json(path, "Re:InterHand keypoints"), (JOINTS, 3), path, record, "the joints")
    return hand_keypoints(project(world, **camera)[MEDIAPIPE_FROM_REINTERHAND])


def _cameras(path: Path) -> dict[str, dict]:
    cameras = {}
    for name, values in read_json(path, "Re:InterHand cameras").items():
        if not isinstance(values, dict):
            raise malformed(path, f"camera {name}", "an object of R, t, focal and princpt expected")
        cameras[name] = {
            k: array(values.get(k), shape, path, f"camera {name}", k) for k, shape in CAMERA_SHAPES.items()
        }
    return cameras


def read_reinterhand(root: Path, captions_file: str = "") -> SourceIndex:
    base = root / "data" if (root / "data").is_dir() else root
    captures = sorted(p for p in base.iterdir() if (p / "Mugsy_cameras" / "cam_params.json").is_file())
    if not captures:
        raise HandsynthError(
            f"{root} is not a Re:InterHand folder: expected <capture_id>/Mugsy_cameras/cam_params.json and "
            "<capture_id>/orig_fits/{right,left}/Keypoints/, as the release (under data/ or directly)"
        )
    captions = sequence_captions(captions_file, "Re:InterHand")
    records, missing = [], []
    for capture in captures:
        cameras = _cameras(capture / "Mugsy_cameras" / "cam_params.json")
        short = hashlib.sha256(capture.name.encode()).hexdigest()[:8]
        for images in sorted((capture / "Mugsy_cameras").glob("envmap_per_*/images")):
            envmap = images.parent.name.removeprefix("envmap_per_")
            for camera_dir in sorted(p for p in images.iterdir() if p.is_dir()):
                if camera_dir.name not in cameras:
                    raise malformed(
                        capture / "Mugsy_cameras" / "cam_params.json",
                        f"camera {camera_dir.name}",
                        f"it has images in {camera_dir} but no parameters",
                    )
                for image in sorted(camera_dir.glob("*.png")):
                    frame = image.stem
                    name = f"capture {capture.name}, camera {camera_dir.name}, frame {frame}"
                    joints = {side: capture / "orig_fits" / side / "Keypoints" / f"keypoint-{frame}.json"
                              for side in ("right", "left")}  # fmt: skip
                    key = f"rih-{short}-{envmap}-{camera_dir.name}-{frame}"
                    if not all(p.is_file() for p in joints.values()):
                        missing.append((key, joints["right"].parent))
                        continue
                    camera = cameras[camera_dir.name]
                    pose = two_hands_pose(
                        _hand(joints["right"], name, camera), _hand(joints["left"], name, camera)
                    )
                    records.append(SourceRecord(
                        key=key,
                        image_path=image,
                        gesture=GROUP,
                        split="test" if capture.name in TEST_CAPTURES else "train",
                        caption=captions.get(capture.name) or hands_caption(GROUP),
                        keypoints=pose,
                        user_id=capture.name,
                    ))  # fmt: skip
    return SourceIndex(records=records, missing=missing, groups=[GROUP] if records else [])
