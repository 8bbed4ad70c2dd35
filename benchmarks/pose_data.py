"""Two-stage data layer speed per image, and Holistic's detection rates on the real photos.

Measured in this process, one image at a time, on the 33 hagrid-mini photos (about 296 px):
- baseline: MediaPipe Hands alone (2 hands), and Holistic reusing one graph, as a plain loop would;
- Holistic with the documented `reset()` before each image (results then depend on the image alone);
- `PoseDetector`: Holistic with an empty frame before each image (the same results, cheaper) and
  hands filled from MediaPipe Hands, without and with the person segmentation;
- the mask step (landmark masks, 5×5 dilation) and the crop step (square crops at pose.crop_size with
  finger heatmaps) of `pose build`, on the detected poses;
- the same two steps on synthetic renders at 512 px (exact masks read from their files).
Each timing is the best of `--repeats` passes over the images; the load average is printed beside it.
SAM's mask time is not here: it needs the SAM wrapper (handsynth.perception.sam).

    python benchmarks/pose_data.py [--repeats 3] [--crop-size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.data.synthetic import write_synthetic_hagrid
from handsynth.perception.hands import HandDetector, import_mediapipe
from handsynth.perception.pose import PoseDetector
from handsynth.perception.wholebody import HANDS
from handsynth.twostage.data.crops import crop_hands, split_hand_mask
from handsynth.twostage.data.masks import LandmarkMasker, dilate, read_mask

ROOT = Path(__file__).resolve().parents[1]
HAGRID_MINI = ROOT.parent / "shared" / "data" / "hagrid-mini" / "images"


def best(repeats: int, step, items: list) -> float:
    """Best seconds per item of `step(item)` over `repeats` passes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            step(item)
        times.append((time.perf_counter() - start) / len(items))
    return min(times)


def synthetic_items(folder: Path) -> list[tuple[Image.Image, Path, np.ndarray]]:
    """(image, exact mask file, pose) of every render in a synthetic folder."""
    items = []
    for table_path in sorted((folder / "wholebody" / "train").glob("*.json")):
        gesture = table_path.stem
        for key, keypoints in json.loads(table_path.read_text()).items():
            image = Image.open(folder / "images" / gesture / f"{key}.jpg").convert("RGB")
            items.append(
                (image, folder / "masks" / gesture / f"{key}.png", np.asarray(keypoints, np.float32))
            )
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument(
        "--synthetic", type=int, default=12, help="synthetic renders per gesture (call, palm)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pose_data.json")
    args = parser.parse_args()
    images = [files.load_rgb(p) for p in sorted(HAGRID_MINI.glob("*/*.jpg"))]
    load_before = os.getloadavg()
    mp = import_mediapipe()

    with HandDetector(max_num_hands=2) as hands:
        t_hands = best(args.repeats, hands.detect, images)
    with mp.solutions.holistic.Holistic(static_image_mode=True, model_complexity=1) as holistic:
        t_shared = best(args.repeats, holistic.process, images)
        # what PoseDetector avoids: the documented reset() before each image restarts the graph
        t_reset = best(args.repeats, lambda image: (holistic.reset(), holistic.process(image)), images)
    with PoseDetector() as detector:
        t_pose = best(args.repeats, detector.detect, images)
        poses = [detector.detect(image) for image in images]
    with PoseDetector(segmentation=True) as detector:
        t_pose_seg = best(args.repeats, detector.detect, images)

    masker = LandmarkMasker()

    def mask(item):
        rgb, pose = item
        sides = pose.hands_found
        return dict(
            zip(sides, masker.hand_masks(rgb, [pose.keypoints[HANDS[s]] for s in sides]), strict=True)
        )

    pairs = list(zip(images, poses, strict=True))
    t_mask = best(args.repeats, mask, pairs)
    triples = [(Image.fromarray(rgb), mask((rgb, pose)), pose.keypoints) for rgb, pose in pairs]
    t_crop = best(args.repeats, lambda t: crop_hands(*t, args.crop_size), triples)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_synthetic_hagrid(Path(tmp), ["call", "palm"], args.synthetic, 512, twostage=True)
        synthetic = synthetic_items(folder)
        t_syn_mask = best(args.repeats, lambda s: dilate(read_mask(s[1], 512, 512, s[1])), synthetic)
        exact = [
            (image, split_hand_mask(dilate(read_mask(m, 512, 512, m)), kp), kp) for image, m, kp in synthetic
        ]
        t_syn_crop = best(args.repeats, lambda t: crop_hands(*t, args.crop_size), exact)

    bodies = sum(p.body for p in poses)
    holistic_hands = sum(s == "holistic" for p in poses for s in p.hand_sources.values())
    filled = sum(s == "hands" for p in poses for s in p.hand_sources.values())
    load_after = os.getloadavg()
    results = {
        "images": len(images),
        "image_sizes": sorted({im.shape[:2] for im in images}),
        "repeats": args.repeats,
        "crop_size": args.crop_size,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [load_before[0], load_after[0]],
        "measured_seconds_per_image": {
            "hands_alone": t_hands,
            "holistic_shared_graph": t_shared,
            "holistic_reset_per_image": t_reset,
            "pose_detector": t_pose,
            "pose_detector_with_segmentation": t_pose_seg,
            "landmark_masks": t_mask,
            "crops": t_crop,
            "synthetic_exact_masks": t_syn_mask,
            "synthetic_crops": t_syn_crop,
        },
        "ratios": {
            "pose_detector_vs_holistic_shared_graph": t_pose / t_shared,
            "pose_detector_vs_holistic_reset_per_image": t_pose / t_reset,
            "pose_detector_vs_hands_alone": t_pose / t_hands,
        },
        "detection": {
            "bodies": bodies,
            "holistic_hands": holistic_hands,
            "hands_filled_from_mediapipe_hands": filled,
            "images_with_a_hand": sum(bool(p.hands_found) for p in poses),
        },
    }
    n = len(images)
    print(f"{n} hagrid-mini photos, {os.cpu_count()} CPUs, best of {args.repeats}, load "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f}")  # fmt: skip
    for name, seconds in results["measured_seconds_per_image"].items():
        print(f"  {name:34s} {seconds * 1000:8.1f} ms/image  x{seconds / t_shared:.2f} of Holistic alone")
    print(f"  Holistic: {bodies}/{n} bodies, {holistic_hands} hands; MediaPipe Hands filled {filled} more; "
          f"{results['detection']['images_with_a_hand']}/{n} images with a hand")  # fmt: skip
    files.write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
