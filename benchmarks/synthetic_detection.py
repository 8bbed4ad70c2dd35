"""How often MediaPipe Hands finds the synthetic hands, against the real HaGRID photos as baseline.

Renders N images per gesture with `handsynth.data.synthetic.render_sample` and runs the Stage I detector
(1 hand, confidence 0.5) on each; the baseline is the same detector on ../shared/data/hagrid-mini.
Also reports how far the detected landmarks sit from the drawn ones (mean |dx|,|dy|, normalised).

    python benchmarks/synthetic_detection.py [--per-gesture 50] [--size 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from handsynth import files
from handsynth.data.synthetic import SYNTHETIC_GESTURES, render_sample
from handsynth.files import load_rgb
from handsynth.perception.hands import STAGE1, HandDetector
from handsynth.progress import progress_bar

HAGRID_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "hagrid-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gesture", type=int, default=50, help="synthetic images per gesture")
    parser.add_argument("--size", type=int, default=512, help="image size in px")
    parser.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    args = parser.parse_args()

    results: dict = {"size": args.size, "per_gesture": args.per_gesture, "synthetic": {}}
    with HandDetector(**STAGE1) as detector:
        real = sorted(HAGRID_MINI.glob("images/*/*.jpg"))
        found = sum(detector.detect(load_rgb(p)).first is not None for p in progress_bar(real, desc="real"))
        results["real"] = {"images": len(real), "detected": found, "rate": found / max(1, len(real))}
        for gesture in SYNTHETIC_GESTURES:
            detected, errors = 0, []
            for index in progress_bar(range(args.per_gesture), desc=gesture):
                image, entry = render_sample(args.seed, gesture, index, args.size)
                hand = detector.detect(np.asarray(image)).first
                if hand is not None:
                    detected += 1
                    drawn = np.asarray(entry["hand_landmarks"][0])
                    errors.append(float(np.abs(hand.landmarks[:, :2] - drawn).mean()))
            results["synthetic"][gesture] = {
                "detected": detected,
                "rate": detected / args.per_gesture,
                "landmark_error": float(np.median(errors)) if errors else None,
            }
    total = sum(r["detected"] for r in results["synthetic"].values())
    results["synthetic_rate"] = total / (args.per_gesture * len(SYNTHETIC_GESTURES))
    results["ratio_to_real"] = results["synthetic_rate"] / max(results["real"]["rate"], 1e-9)
    print(f"real hagrid-mini: {results['real']['detected']}/{results['real']['images']} detected")
    for gesture, r in results["synthetic"].items():
        print(
            f"synthetic {gesture:5s}: {r['rate']:.0%} detected, median landmark error {r['landmark_error']}"
        )
    print(f"synthetic overall {results['synthetic_rate']:.1%}, ratio to real {results['ratio_to_real']:.2f}")
    out = Path(__file__).parent / "results" / "synthetic_detection.json"
    files.write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
