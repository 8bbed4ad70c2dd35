"""The gesture classifier before and after a change, as confusion tables on four sets of images.

- real: the 33 hagrid-mini photos (one per HaGRID gesture; 6 targets, 27 others) as they are;
- real, transformed: each photo mirrored; rotated by -30, +30, 90 and 180 degrees; and small in the
  frame (pasted into a canvas 3 times its size, as whole people in rooms show their hands);
- real, shrunk: each photo scaled down until its largest hand (HaGRID's box) is 32, 44 or 56 px on
  its longer side, in the upper middle of a 512 px canvas: the hands of generated people;
- synthetic: `handsynth.data.synthetic` renders of the six gestures (a person in a room, random skin,
  pose and hand turn), rotated the same ways and at 1, 1/2 and 1/3 of their size in the frame.

"before" is the classifier of `--baseline-rev` (by default the commit before issue 21's small-hand
reading, read with `git show`; 867881f is the one before issue 16), "after" the one in this tree;
both run here on the same images. A cell counts images of a true label (rows: the six, and "other"
for the 27 non-target gestures) read as a label (columns; "no hand" when MediaPipe finds none).
What a rotated image should read as: the six keep their label up to 30 degrees either way; call,
four, ok and palm keep it at any angle (their shape defines them); `like` turned 180 degrees is a
thumbs-down (and `dislike` turned 180 a thumbs-up); like, dislike, mute and one turned 90 degrees (a
sideways thumb or a face on its side) are shown but not scored. A shrunk photo keeps its label.

    python benchmarks/classifier.py [--per-gesture 8] [--baseline-rev cf1bdd4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from handsynth import files
from handsynth.data.synthetic import SYNTHETIC_GESTURES, render_sample
from handsynth.files import load_rgb
from handsynth.perception import classifier as after_module
from handsynth.perception.classifier import TARGET_GESTURES, UNKNOWN
from handsynth.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]
HAGRID_MINI = REPO.parent / "shared" / "data" / "hagrid-mini"
RESULTS = Path(__file__).resolve().parent / "results"
BASELINE_REV = "cf1bdd4"  # the last commit before issue 21's small-hand reading
SHRUNK_HAND_PX = (32, 44, 56)
SHRUNK_CANVAS = 512
ROTATIONS = (-30, 30, 90, 180)
COLUMNS = [*TARGET_GESTURES, UNKNOWN, "no hand"]
ROWS = [*TARGET_GESTURES, "other"]
DIRECTION_DEFINED = {"like", "dislike", "mute", "one"}
TURNED_OVER = {"like": "dislike", "dislike": "like"}


def load_baseline(rev: str):
    """The classifier module as it was at `rev`."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:src/handsynth/perception/classifier.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "classifier_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("classifier_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected(gesture: str, rotation: int = 0) -> str | None:
    """The label an image of `gesture` turned by `rotation` degrees should get; None: not scored."""
    if rotation == 180 and gesture in TURNED_OVER:
        gesture = TURNED_OVER[gesture]
    elif abs(rotation) > 30 and gesture in DIRECTION_DEFINED:
        return None
    return gesture if gesture in TARGET_GESTURES else UNKNOWN


def _fill(image: Image.Image) -> tuple[int, int, int]:
    """The mean colour of the image's border: what a rotation or a bigger canvas is filled with."""
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(c) for c in border.mean(axis=0))


def rotate(image: Image.Image, degrees: int) -> Image.Image:
    """Turned counter-clockwise by `degrees`, the canvas grown to hold it all."""
    return image.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=_fill(image))


def small(image: Image.Image, factor: int) -> Image.Image:
    """The image, its pixels kept, in the upper middle of a canvas `factor` times its size."""
    canvas = Image.new("RGB", (image.width * factor, image.height * factor), _fill(image))
    canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 3))
    return canvas


def shrunk(image: Image.Image, hand_px: float, target_px: int) -> Image.Image:
    """The photo scaled so that a hand of `hand_px` becomes `target_px`, in the upper middle of a
    SHRUNK_CANVAS square filled with its border colour."""
    scale = target_px / hand_px
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small_image = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (SHRUNK_CANVAS, SHRUNK_CANVAS), _fill(image))
    canvas.paste(small_image, ((SHRUNK_CANVAS - size[0]) // 2, (SHRUNK_CANVAS - size[1]) // 3))
    return canvas


def largest_hand_px(photo: Path, width: int, height: int) -> float:
    """The longer side, in pixels, of the largest hand box HaGRID's annotation gives the photo."""
    path = HAGRID_MINI / "annotations" / "test" / f"{photo.parent.name}.json"
    annotation = json.loads(path.read_text(encoding="utf-8"))
    boxes = annotation[photo.stem]["bboxes"]  # x, y, w, h, normalised
    return max(max(w * width, h * height) for _, _, w, h in boxes)


def variants(image: Image.Image, scales: tuple[int, ...]) -> list[tuple[str, int, Image.Image]]:
    """(name, rotation, image): rotated copies, then smaller-in-frame copies."""
    out = [(f"rotated {r:+d}", r, rotate(image, r)) for r in ROTATIONS]
    return out + [(f"1/{k} of the frame", 0, small(image, k)) for k in scales]


def read(classifier, image: Image.Image) -> str:
    label, hand = classifier.classify_with_hand(np.asarray(image.convert("RGB")))
    return "no hand" if hand is None else label


class Tally:
    """Confusion counts per (set, side) and the scored outcome."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Counter]]] = {}
        self.scores: dict[str, dict[str, Counter]] = {}
        self.photos: dict[str, dict[str, str]] = {}
        self.shrunk: dict[str, dict[str, str]] = {}
        self.misses: dict[str, dict[str, list[str]]] = {}

    def add(self, set_name: str, side: str, image: str, gesture: str, want: str | None, got: str) -> None:
        if want is not None and got != want and not (want == UNKNOWN and got == "no hand"):
            self.misses.setdefault(set_name, {}).setdefault(side, []).append(f"{image}: {got}")
        row = gesture if gesture in TARGET_GESTURES else "other"
        table = self.tables.setdefault(set_name, {}).setdefault(side, {r: Counter() for r in ROWS})
        table[row][got] += 1
        score = self.scores.setdefault(set_name, {}).setdefault(side, Counter())
        if want is None:
            score["not scored"] += 1
        elif want == UNKNOWN:
            score["others"] += 1
            score["others read as a target"] += got in TARGET_GESTURES
        else:
            score["targets"] += 1
            score["targets right"] += got == want
            score["targets read as another target"] += got in TARGET_GESTURES and got != want


def run_real(tally: Tally, classifiers: dict) -> None:
    photos = sorted(HAGRID_MINI.glob("images/*/*.jpg"))
    if len(photos) != 33:
        sys.exit(f"expected the 33 hagrid-mini photos under {HAGRID_MINI}, found {len(photos)}")
    for path in progress_bar(photos, desc="real photos"):
        gesture = path.parent.name
        image = Image.fromarray(load_rgb(path))
        copies = [("mirrored", 0, ImageOps.mirror(image)), *variants(image, scales=(3,))]
        hand_px = largest_hand_px(path, image.width, image.height)
        small_copies = [(px, shrunk(image, hand_px, px)) for px in SHRUNK_HAND_PX]
        for side, classifier in classifiers.items():
            got = read(classifier, image)
            tally.photos.setdefault(side, {})[gesture] = got
            tally.add("real", side, gesture, gesture, expected(gesture), got)
            for name, rotation, copy in copies:
                want = expected(gesture, rotation)
                tally.add(
                    "real, transformed", side, f"{gesture} {name}", gesture, want, read(classifier, copy)
                )
            for px, copy in small_copies:
                got = read(classifier, copy)
                tally.shrunk.setdefault(side, {})[f"{gesture} {px}"] = got
                tally.add("real, shrunk", side, f"{gesture} {px} px", gesture, expected(gesture), got)


def run_synthetic(tally: Tally, classifiers: dict, per_gesture: int, seed: int) -> None:
    for gesture in SYNTHETIC_GESTURES:
        for index in progress_bar(range(per_gesture), desc=f"synthetic {gesture}"):
            image, _ = render_sample(seed, gesture, index, 512)
            copies = [("as rendered", 0, image), *variants(image, scales=(2, 3))]
            for side, classifier in classifiers.items():
                for name, rotation, copy in copies:
                    want, got = expected(gesture, rotation), read(classifier, copy)
                    tally.add("synthetic", side, f"{gesture} #{index} {name}", gesture, want, got)


def markdown(tally: Tally) -> str:
    lines = ["# Gesture classifier, before and after", ""]
    sides = list(next(iter(tally.tables.values())))
    for title, readings in (("The 33 real photos", tally.photos), ("The shrunk photos", tally.shrunk)):
        lines += [f"## {title}, one by one", "", "| photo | " + " | ".join(sides) + " |"]
        lines += ["|---|" + "---|" * len(sides)]
        for name in sorted(readings[sides[0]]):
            lines.append(f"| {name} | " + " | ".join(readings[s][name] for s in sides) + " |")
        lines.append("")
    for set_name, by_side in tally.tables.items():
        for side, table in by_side.items():
            score = tally.scores[set_name][side]
            lines += ["", f"## {set_name}: {side}", ""]
            lines += [
                f"targets right {score['targets right']}/{score['targets']}, read as another target "
                f"{score['targets read as another target']}, others read as a target "
                f"{score['others read as a target']}/{score['others']}, not scored {score['not scored']}",
                "",
                "| true \\ read | " + " | ".join(COLUMNS) + " |",
                "|---|" + "---:|" * len(COLUMNS),
            ]
            for row in ROWS:
                lines.append(f"| {row} | " + " | ".join(str(table[row][c] or ".") for c in COLUMNS) + " |")
            misses = tally.misses.get(set_name, {}).get(side, [])
            lines += ["", f"Read wrong ({len(misses)}; a non-target with no hand found is not wrong):"]
            lines += ["", "; ".join(misses) or "none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gesture", type=int, default=8, help="synthetic renders per gesture")
    parser.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of the 'before' classifier"
    )
    args = parser.parse_args()

    before = load_baseline(args.baseline_rev)
    tally = Tally()
    with before.GestureClassifier() as old, after_module.GestureClassifier() as new:
        classifiers = {"before": old, "after": new}
        run_real(tally, classifiers)
        run_synthetic(tally, classifiers, args.per_gesture, args.seed)

    print(markdown(tally))
    for set_name, by_side in tally.scores.items():
        b, a = by_side["before"], by_side["after"]
        right = f"{b['targets right']}/{b['targets']} -> {a['targets right']}/{a['targets']}"
        swapped = f"{b['targets read as another target']} -> {a['targets read as another target']}"
        wrong = (
            f"{b['others read as a target']}/{b['others']} -> {a['others read as a target']}/{a['others']}"
        )
        print(
            f"{set_name}: targets right {right}, read as another target {swapped}, "
            f"others read as a target {wrong}"
        )
    results = {
        "baseline_rev": args.baseline_rev,
        "per_gesture": args.per_gesture,
        "photos": tally.photos,
        "shrunk": tally.shrunk,
        "misses": tally.misses,
        "scores": {s: {side: dict(c) for side, c in v.items()} for s, v in tally.scores.items()},
        "tables": {
            s: {side: {row: dict(c) for row, c in t.items()} for side, t in v.items()}
            for s, v in tally.tables.items()
        },
    }
    files.write_json(RESULTS / "classifier.json", results)
    files.write_text(RESULTS / "classifier.md", markdown(tally))
    print(f"-> {RESULTS / 'classifier.md'}")


if __name__ == "__main__":
    main()
