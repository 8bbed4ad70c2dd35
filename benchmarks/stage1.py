"""Stage I speed: the reference's sequential loop vs `compute_gesture_feature`, cold and warm.

The baseline is a straight loop like Hand1000's `cal_mean_feature.py`: one MediaPipe Hands
(static image mode, 1 hand, confidence 0.5), `cv2.imread` + BGR->RGB per image, mean of the first
hand's landmarks. Ours runs worker processes with an empty cache (cold), then again on the same
output folder (warm: every image a cache hit). Cold runs of both sides happen in fresh child
processes, as the CLI and `cal_mean_feature.py` run: each starts with numpy, OpenCV and Pillow
imported and pays its own `import mediapipe`. They alternate, reference then ours, `--repeats`
times, and each side's best run counts. The reference loop time without its import is reported
too. The images are by default real HaGRID photos, each in several distinct variants (flip, small
rotation, brightness, resized to 512 px like the prepared dataset), so no two files share content
and the cache cannot short-cut the cold run.

    python benchmarks/stage1.py [--images FOLDER] [--variants 30] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from handsynth import files
from handsynth.config import FeaturesSection
from handsynth.hand1000.features import compute_gesture_feature

ROOT = Path(__file__).resolve().parents[1]
HAGRID_MINI = ROOT.parent / "shared" / "data" / "hagrid-mini" / "images"


def write_variants(source: Path, folder: Path, variants: int, size: int = 512) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for photo in sorted(source.glob("*/*.jpg")):
        base = Image.open(photo).convert("RGB")
        for i in range(variants):
            image = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else base
            image = image.rotate(
                float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, fillcolor="white"
            )
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
            path = folder / f"{photo.parent.name}_{i}.jpg"
            image.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=95)
            paths.append(path)
    return paths


def reference_loop(paths: list[Path]) -> tuple[np.ndarray, float]:
    """The reference's mean feature, and the seconds its `import mediapipe` took."""
    start = time.perf_counter()
    import mediapipe as mp  # imported inside the timer: running cal_mean_feature.py pays it too

    import_seconds = time.perf_counter() - start
    features = []
    with mp.solutions.hands.Hands(
        static_image_mode=True, max_num_hands=1, min_detection_confidence=0.5
    ) as hands:
        for path in paths:
            result = hands.process(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            if result.multi_hand_landmarks:
                features.append([c for p in result.multi_hand_landmarks[0].landmark for c in (p.x, p.y, p.z)])
    return np.mean(features, axis=0), import_seconds


def run_child(kind: str, list_file: Path, folder: Path, out_file: Path) -> None:
    """`--child`: one timed run in this fresh process: the reference loop, or ours cold."""
    if kind == "reference":
        paths = [Path(line) for line in list_file.read_text().splitlines()]
        cpu_before = time.process_time()
        (mean, import_seconds), seconds = timed(lambda: reference_loop(paths))
        cpu = time.process_time() - cpu_before  # below wall time: the loop waited for a core
        record = {"mean": mean.tolist(), "seconds": seconds, "import": import_seconds, "cpu": cpu}
    else:
        workers = int(kind.removeprefix("ours-"))
        settings = FeaturesSection(workers=workers)
        with tempfile.TemporaryDirectory() as out:
            result, seconds = timed(
                lambda: compute_gesture_feature(folder, Path(out), "bench", settings, progress=False)
            )
        record = {"mean": result.mean.tolist(), "seconds": seconds, "report": result.report}
    out_file.write_text(json.dumps(record))


def in_child(kind: str, paths: list[Path], folder: Path, tmp: Path) -> dict:
    list_file, out_file = tmp / "paths.txt", tmp / "child.json"
    list_file.write_text("\n".join(str(p) for p in paths))
    subprocess.run(
        [sys.executable, __file__, "--child", kind, str(list_file), str(folder), str(out_file)],
        check=True,
        stderr=subprocess.DEVNULL,  # MediaPipe's start-up log lines
    )
    return json.loads(out_file.read_text())


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of images (default: variants of hagrid-mini)")
    parser.add_argument(
        "--variants",
        type=int,
        default=30,
        help="variants per hagrid-mini photo (30: 990 images, a gesture's 1,000)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stage1.json")
    parser.add_argument(
        "--repeats", type=int, default=3, help="cold timings: best of this many runs of each, alternating"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, list_file, folder, out_file = args.child
        run_child(kind, Path(list_file), Path(folder), Path(out_file))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.images:
            folder = args.images
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        else:
            folder = tmp / "images"
            folder.mkdir()
            paths = write_variants(HAGRID_MINI, folder, args.variants)
        load_before = os.getloadavg()
        # cold runs, each in a fresh process as the CLI and cal_mean_feature.py run; alternating,
        # so that a busy moment of the machine falls on both
        references, colds = [], []
        for _ in range(args.repeats):
            references.append(in_child("reference", paths, folder, tmp))
            colds.append(in_child(f"ours-{args.workers}", paths, folder, tmp))
        reference = min(references, key=lambda run: run["seconds"])
        cold = min(colds, key=lambda run: run["seconds"])
        t_reference, t_cold = reference["seconds"], cold["seconds"]
        reference_mean = np.array(reference["mean"])
        t_loop = t_reference - reference["import"]

        settings = FeaturesSection(workers=args.workers)

        def ours(name: str):
            return compute_gesture_feature(folder, tmp / name, "bench", settings, progress=False)

        ours("features")  # fills the cache for the warm run
        warm, t_warm = timed(lambda: ours("features"))
        # this process has now run MediaPipe, so the workers come from the fork server
        server, t_server = timed(lambda: ours("features-again"))
        load_after = os.getloadavg()

    n = len(paths)
    results = {
        "images": n,
        "detected": cold["report"]["detected"],
        "repeats": args.repeats,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [load_before[0], load_after[0]],
        "reference_seconds": t_reference,
        "reference_seconds_runs": [run["seconds"] for run in references],
        "reference_import_seconds": reference["import"],
        "reference_loop_seconds": t_loop,
        "reference_cpu_seconds": reference["cpu"],
        "cold_seconds": t_cold,
        "cold_seconds_runs": [run["seconds"] for run in colds],
        "cold_worker_start": cold["report"]["worker_start"],
        "warm_seconds": t_warm,
        "cold_forkserver_seconds": t_server,
        "cold_forkserver_worker_start": server.report["worker_start"],
        "reference_images_per_s": n / t_reference,
        "cold_images_per_s": n / t_cold,
        "warm_images_per_s": n / t_warm,
        "cold_forkserver_images_per_s": n / t_server,
        "cold_speedup": t_reference / t_cold,
        "cold_speedup_vs_loop_without_import": t_loop / t_cold,
        "warm_speedup": t_reference / t_warm,
        "cold_forkserver_speedup": t_reference / t_server,
        "warm_detections": warm.report["detections_run"],
        "max_abs_mean_difference": float(np.abs(np.array(cold["mean"]) - reference_mean).max()),
    }
    detected = cold["report"]["detected"]
    print(f"{n} images, {detected} with a hand, {args.workers} workers, {os.cpu_count()} CPUs")
    rows = [
        ("reference loop", t_reference),
        (f"ours, cold ({cold['report']['worker_start']})", t_cold),
        ("ours, warm", t_warm),
        (f"ours, cold ({server.report['worker_start']})", t_server),
    ]
    for name, seconds in rows:
        print(f"  {name:26s} {seconds:7.2f} s  {n / seconds:8.1f} img/s  x{t_reference / seconds:.2f}")
    print(f"  reference without its import {t_loop:.2f} s: ours cold x{t_loop / t_cold:.2f}")
    print(f"  load average {load_before[0]:.1f} -> {load_after[0]:.1f}; max |mean diff| "
          f"{results['max_abs_mean_difference']:.2e}")  # fmt: skip
    files.write_json(args.out, results)


if __name__ == "__main__":
    main()
