"""Tiny copies of each source format `pose build` reads, written as their releases lay them out
(handsynth.twostage.data.sources), with the keypoints each should give worked out here on their own:
by joint name and per-point arithmetic, not with the readers' tables."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handsynth import files

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
MEDIAPIPE_NAMES = ["wrist"] + [f"{f}{k}" for f in FINGERS for k in (1, 2, 3, 4)]
INTERHAND_NAMES = [f"{f}{k}" for f in FINGERS for k in (4, 3, 2, 1)] + ["wrist"]  # per hand, right first
REINTERHAND_NAMES = (
    ["wrist"] + [f"thumb{k}" for k in range(5)]
    + [f"{f}{k}" for f in ("index", "middle", "ring") for k in (1, 2, 3, 4)]
    + [f"pinky{k}" for k in range(5)] + ["forearm"]
)  # fmt: skip
COCO_HAND_START = {"left": 91, "right": 112}
IMAGE_SIZE = (200, 160)  # width, height


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    a, b = np.radians(yaw), np.radians(pitch)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return ry @ rx


def _pixel(camera_point, focal, princpt) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in camera_point)
    return x / z * focal[0] + princpt[0], y / z * focal[1] + princpt[1], z


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    files.save_image(path, Image.fromarray(pixels))


# ------------------------------------------------------------------ InterHand2.6M

INTERHAND_CAMERA = {"campos": [30.0, -20.0, -40.0], "camrot": _rotation(8, -5).tolist(),
                    "focal": [520.0, 515.0], "princpt": [101.5, 79.0]}  # fmt: skip
INTERHAND_IMAGES = [  # (image id, frame, sequence, hand type)
    (1, 10, "0001_fist", "right"),
    (2, 11, "0001_fist", "left"),
    (3, 12, "0002_pray", "interacting"),
    (4, 13, "0002_pray", "interacting"),
]


def write_interhand(root: Path, malformed: bool = False) -> Path:
    """One capture, one camera, four frames (a right hand, a left hand, two interacting) in the train
    split; one invalid joint. `malformed`: a fifth annotation whose 3D joints are 41."""
    rng = np.random.default_rng(1)
    images, annotations, frames = [], [], {}
    for image_id, frame, sequence, hand_type in INTERHAND_IMAGES:
        name = f"Capture0/{sequence}/cam400262/image{frame}.jpg"
        _photo(root / "images" / "train" / name, image_id)
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1],
                       "capture": 0, "subject": 0, "seq_name": sequence, "camera": "400262",
                       "frame_idx": frame})  # fmt: skip
        world = rng.uniform([-40, -40, 560], [40, 40, 640], (42, 3)) + INTERHAND_CAMERA["campos"]
        frames[str(frame)] = {"world_coord": world.tolist()}
        valid = [[1]] * 21 + [[1]] * 21
        if hand_type == "right":
            valid[21:] = [[0]] * 21
        if hand_type == "left":
            valid[:21] = [[0]] * 21
        if image_id == 3:
            valid[4] = [0]  # the right index fingertip is not labelled
        annotations.append({"id": 100 + image_id, "image_id": image_id, "bbox": [0, 0, 10, 10],
                            "joint_valid": valid, "hand_type": hand_type, "hand_type_valid": 1})  # fmt: skip
    if malformed:
        frames["14"] = {"world_coord": frames["13"]["world_coord"][:41]}
        images.append({**images[-1], "id": 5, "frame_idx": 14})
        annotations.append({**annotations[-1], "id": 105, "image_id": 5})
    folder = root / "annotations" / "train"
    files.write_json(folder / "InterHand2.6M_train_data.json", {"images": images, "annotations": annotations})
    camera = {"0": {k: {"400262": v} for k, v in INTERHAND_CAMERA.items()}}
    files.write_json(folder / "InterHand2.6M_train_camera.json", camera)
    files.write_json(folder / "InterHand2.6M_train_joint_3d.json", {"0": frames})
    return root


def interhand_expected(root: Path) -> dict[str, np.ndarray]:
    """key -> (133, 3): each valid joint projected point by point, placed by its name."""
    folder = root / "annotations" / "train"
    data = json.loads((folder / "InterHand2.6M_train_data.json").read_text())
    joints = json.loads((folder / "InterHand2.6M_train_joint_3d.json").read_text())["0"]
    rotation, campos = np.array(INTERHAND_CAMERA["camrot"]), np.array(INTERHAND_CAMERA["campos"])
    out = {}
    for ann in data["annotations"]:
        frame = next(i["frame_idx"] for i in data["images"] if i["id"] == ann["image_id"])
        world = joints[str(frame)]["world_coord"]
        pose = np.zeros((133, 3))
        for side, first in (("right", 0), ("left", 21)):
            if not ann["joint_valid"][first + 20][0]:
                continue
            for i, name in enumerate(MEDIAPIPE_NAMES):
                j = first + INTERHAND_NAMES.index(name)
                if ann["joint_valid"][j][0]:
                    camera_point = [
                        sum(rotation[r][k] * (world[j][k] - campos[k]) for k in range(3)) for r in range(3)
                    ]
                    u, v, _ = _pixel(camera_point, INTERHAND_CAMERA["focal"], INTERHAND_CAMERA["princpt"])
                    pose[COCO_HAND_START[side] + i] = (u, v, 2)
        out[f"ih-train-{ann['image_id']}"] = pose
    return out


# ------------------------------------------------------------------ Re:InterHand

REINTERHAND_CAPTURE = "m--20230101--1200--ABC123--pilot--ProjectGoliath--Hands--two-hands"
REINTERHAND_CAMERA = {"R": _rotation(-6, 4).tolist(), "t": [15.0, -10.0, 620.0], "focal": [480.0, 490.0],
                      "princpt": [98.0, 82.5]}  # fmt: skip


def write_reinterhand(root: Path, malformed: bool = False) -> Path:
    """One capture, one camera, three frames of two hands, under data/. `malformed`: a fourth frame
    whose left-hand keypoint file holds 23 joints."""
    rng = np.random.default_rng(2)
    capture = root / "data" / REINTERHAND_CAPTURE
    files.write_json(capture / "Mugsy_cameras" / "cam_params.json", {"401892": REINTERHAND_CAMERA})
    for n, frame in enumerate((5, 10, 15, 20) if malformed else (5, 10, 15)):
        _photo(
            capture / "Mugsy_cameras" / "envmap_per_frame" / "images" / "401892" / f"{frame:06d}.png", 10 + n
        )
        for side in ("right", "left"):
            world = rng.uniform(-40, 40, (24, 3))
            if malformed and frame == 20 and side == "left":
                world = world[:23]
            files.write_json(
                capture / "orig_fits" / side / "Keypoints" / f"keypoint-{frame:06d}.json", world.tolist()
            )
    return root


def reinterhand_expected(root: Path) -> dict[str, np.ndarray]:
    capture = root / "data" / REINTERHAND_CAPTURE
    rotation, t = np.array(REINTERHAND_CAMERA["R"]), REINTERHAND_CAMERA["t"]
    out = {}
    for image in sorted((capture / "Mugsy_cameras" / "envmap_per_frame" / "images" / "401892").glob("*.png")):
        pose = np.zeros((133, 3))
        for side in ("right", "left"):
            world = json.loads(
                (capture / "orig_fits" / side / "Keypoints" / f"keypoint-{image.stem}.json").read_text()
            )
            for i, name in enumerate(MEDIAPIPE_NAMES):
                point = world[REINTERHAND_NAMES.index(name)]
                camera_point = [sum(rotation[r][k] * point[k] for k in range(3)) + t[r] for r in range(3)]
                u, v, _ = _pixel(camera_point, REINTERHAND_CAMERA["focal"], REINTERHAND_CAMERA["princpt"])
                pose[COCO_HAND_START[side] + i] = (u, v, 2)
        out[image.stem] = pose
    return out


# ------------------------------------------------------------------ LAION-Human, image folders, YouTube-ASL


def _person(score: float) -> dict:
    keypoints = np.c_[np.random.default_rng(3).uniform(0, 100, (17, 2)), np.full(17, score)]
    return {"keypoints": keypoints, "score": score}


def write_laion_human(root: Path, photos: list[Path], malformed: bool = False) -> Path:
    """HumanSD's mapping_train.json with one entry per photo (one person each, plus a faint detection),
    and one entry of two people. `malformed`: an entry whose pose file is not an npz."""
    mapping = {}
    for n, photo in enumerate([*photos, photos[0]]):
        rel = f"LaionAesthetics/images/{n:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(photo.read_bytes())
        people = [_person(0.9), _person(0.05)] + ([_person(0.7)] if n == len(photos) else [])
        pose = root / "LaionAesthetics" / "pose" / f"{n:05d}.npz"
        pose.parent.mkdir(parents=True, exist_ok=True)
        np.savez(pose, np.array(people, dtype=object))
        mapping[f"{n:05d}"] = {
            "img_path": rel,
            "pose_path": str(pose.relative_to(root)),
            "prompt": f"person {n}",
        }
    if malformed:
        (root / "LaionAesthetics" / "pose" / "bad.npz").write_text("not an npz")
        mapping["bad"] = {**mapping["00000"], "pose_path": "LaionAesthetics/pose/bad.npz"}
    files.write_json(root / "mapping_train.json", mapping)
    return root


def write_video(path: Path, photos: list[Path], size: tuple[int, int] = (320, 240)) -> Path:
    """An MJPG .avi with one frame per photo (resized to `size`), in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, size)
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), size, interpolation=cv2.INTER_AREA))
    writer.release()
    return path
