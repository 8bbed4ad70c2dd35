"""The synthetic figures the tiny family is pretrained and benchmarked on, rendered once and cached.

Each figure is rendered at 128 px (the VAE's benchmark size) and kept with its 64 px version (the tiny
SD's resolution), a prompt (the renderer's caption with the gesture phrase), the exact hand mask and
the OpenPose skeleton that handsynth draws from the renderer's whole-body keypoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handsynth import files
from handsynth.data.gestures import gesture_phrase
from handsynth.data.synthetic import SYNTHETIC_GESTURES, render_figure
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar
from handsynth.twostage.data.skeleton import draw_openpose

FULL_SIZE = 128  # the VAE's benchmark resolution
MODEL_SIZE = 64  # the tiny SD's resolution
# Data seeds of the pretraining and the benchmark: the demo and the tests render seeds 0 to 7.
TRAIN_DATA_SEED = 7_340_001
HELD_OUT_DATA_SEED = 7_340_002


@dataclass
class Figures:
    """N rendered figures as arrays, index-aligned with `prompts` and `gestures`."""

    full: np.ndarray  # (N, 128, 128, 3) uint8
    small: np.ndarray  # (N, 64, 64, 3) uint8
    hand_masks: np.ndarray  # (N, 64, 64) bool, exact hand pixels at 64 px
    skeletons: np.ndarray  # (N, 64, 64, 3) uint8 OpenPose drawings at 64 px
    keypoints: np.ndarray  # (N, 133, 3) COCO-WholeBody at 64 px
    prompts: list[str]
    gestures: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def keys(self) -> list[str]:
        return [f"figure-{i}" for i in range(len(self))]


def figure_prompt(caption: str, gesture: str) -> str:
    """The renderer's caption ("a man in a red shirt in a room") and what the raised hand does."""
    pronoun = "her" if caption.startswith("a woman") else "his"
    return f"{caption}, {gesture_phrase(gesture, pronoun)}"


def render_figures(seed: int, per_gesture: int, gestures: list[str] = SYNTHETIC_GESTURES) -> Figures:
    """Render `per_gesture` figures of each gesture from data seed `seed`, with a progress bar."""
    full, small, masks, skeletons, keypoints, prompts, names = [], [], [], [], [], [], []
    jobs = [(g, i) for g in gestures for i in range(per_gesture)]
    for gesture, index in progress_bar(jobs, desc=f"rendering figures (seed {seed})", unit="figure"):
        figure = render_figure(seed, gesture, index, FULL_SIZE)
        image = np.asarray(figure.image)
        full.append(image)
        small.append(cv2.resize(image, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA))
        mask = cv2.resize(figure.hand_mask.astype(np.float32), (MODEL_SIZE, MODEL_SIZE), cv2.INTER_AREA)
        masks.append(mask >= 0.5)
        # Drawn at 128 px and reduced, so that limbs keep their width at 64 px.
        skeleton = draw_openpose(figure.keypoints, FULL_SIZE, FULL_SIZE)
        skeletons.append(cv2.resize(skeleton, (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA))
        points = figure.keypoints.copy()
        points[:, :2] *= MODEL_SIZE / FULL_SIZE
        keypoints.append(points)
        prompts.append(figure_prompt(figure.entry["caption"], gesture))
        names.append(gesture)
    return Figures(
        np.stack(full),
        np.stack(small),
        np.stack(masks),
        np.stack(skeletons),
        np.stack(keypoints),
        prompts,
        names,
    )


def cached_figures(folder: str | Path, seed: int, per_gesture: int) -> Figures:
    """`render_figures`, cached in `folder` (figures-SEED-N.npz and .json) so a resumed run skips it."""
    stem = Path(folder) / f"figures-{seed}-{per_gesture}"
    arrays, text = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if arrays.is_file() and text.is_file():
        try:
            with np.load(arrays) as data:
                loaded = {name: data[name] for name in data.files}
            meta = json.loads(text.read_text(encoding="utf-8"))
            return Figures(**loaded, prompts=meta["prompts"], gestures=meta["gestures"])
        except (OSError, ValueError, KeyError) as exc:
            raise HandsynthError(
                f"the figure cache {arrays} is unreadable ({exc}); delete it to render again"
            ) from None
    figures = render_figures(seed, per_gesture)
    files.write_npz(
        arrays,
        full=figures.full,
        small=figures.small,
        hand_masks=figures.hand_masks,
        skeletons=figures.skeletons,
        keypoints=figures.keypoints,
    )
    files.write_json(text, {"prompts": figures.prompts, "gestures": figures.gestures})
    return figures
