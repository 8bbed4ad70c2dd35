"""The project's one door to MediaPipe Hands: 21x3 landmarks, handedness, boxes.

Detection settings come from the caller so that each reference script can be reproduced exactly;
the presets below are the three the papers use. Images go in as RGB: the reference FID-H passes
RGB through a BGR->RGB conversion, and that mix-up is not repeated here.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from handsynth.errors import HandsynthError

STAGE1 = dict(max_num_hands=1, min_detection_confidence=0.5)  # Hand1000 cal_mean_feature.py
HAND_CONF = dict(max_num_hands=2, min_detection_confidence=0.0)  # HAND-CONF metric
FID_H = dict(max_num_hands=2, min_detection_confidence=0.5)  # FID-H / KID-H crops

NUM_LANDMARKS = 21


class _PyplotOnFirstUse(types.ModuleType):
    """What MediaPipe gets for matplotlib.pyplot: it imports the real pyplot when an attribute is
    first asked for, and forwards to it. (importlib's LazyLoader can't do this: an import
    statement reads the module's __spec__, which loads it.)"""

    def __getattr__(self, name: str):
        if sys.modules.get("matplotlib.pyplot") is self:
            del sys.modules["matplotlib.pyplot"]
        return getattr(importlib.import_module("matplotlib.pyplot"), name)


def import_mediapipe():
    """`import mediapipe`, without loading matplotlib.pyplot until something uses it.

    MediaPipe's drawing helpers import pyplot at load time, 0.4-0.6 s of MediaPipe's ~0.7 s import,
    though only their plotting function uses it.
    """
    stand_in = None
    if "mediapipe" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
        stand_in = sys.modules["matplotlib.pyplot"] = _PyplotOnFirstUse("matplotlib.pyplot")
    try:
        import mediapipe
    finally:  # only MediaPipe keeps the stand-in: any later import gets the real pyplot
        if stand_in is not None and sys.modules.get("matplotlib.pyplot") is stand_in:
            del sys.modules["matplotlib.pyplot"]
    return mediapipe


def worker_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """How to start worker processes that run MediaPipe; `preload` names the modules they need.

    A child forked from a process that has run a MediaPipe graph crashes in MediaPipe's allocator, so
    fork only while this process has not even imported MediaPipe (workers then start at once).
    Otherwise a fork server that has only imported it forks clean workers, after a one-off start of
    about a second (spawn pays that per worker).
    """
    if sys.platform == "linux" and "mediapipe" not in sys.modules:
        import_mediapipe()  # before the fork, so no worker imports it again
        return multiprocessing.get_context("fork")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mediapipe", *preload])
        return context
    return multiprocessing.get_context("spawn")


def detect_in_workers(
    jobs: list,
    detect: Callable,
    init: Callable,
    initargs: tuple,
    workers: int,
    context: multiprocessing.context.BaseContext | None,
    bar,
    died: str,
) -> Iterator:
    """Yield `detect(job)` for every job as it finishes, ticking `bar`: in `workers` processes started
    by `context` and set up by `init(*initargs)`, or in this process when `context` is None (`init`
    then returns the detector, closed at the end). A worker that dies raises HandsynthError(died)."""
    if context is None:
        detector = init(*initargs)
        try:
            for job in jobs:
                yield detect(job)
                bar.update()
        finally:
            detector.close()
        return
    # an executor, not a Pool: a Pool silently replaces a worker that dies and then waits forever for
    # its task; the executor raises BrokenProcessPool
    pool = ProcessPoolExecutor(workers, context, init, initargs)
    try:
        # one image per task: a detection (~30 ms) dwarfs the round trip (~0.1 ms), and at the end no
        # worker sits idle while another finishes a chunk of several images
        for future in as_completed([pool.submit(detect, job) for job in jobs]):
            yield future.result()
            bar.update()
    except BrokenProcessPool:
        raise HandsynthError(died) from None
    finally:  # a caller that stops early (an error, Ctrl-C) does not wait for the images still queued
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Hand:
    landmarks: np.ndarray = field(compare=False)  # (21, 3) float64: x, y normalised to the image; z
    handedness: str  # "Left" or "Right", as MediaPipe labels it
    score: float  # handedness score
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, with the detector's margin

    @property
    def feature(self) -> np.ndarray:
        """The Stage I feature: the 63 numbers x0, y0, z0, x1, ... in MediaPipe's order."""
        return self.landmarks.reshape(-1)


@dataclass(frozen=True)
class Detection:
    hands: list[Hand]
    width: int
    height: int

    @property
    def first(self) -> Hand | None:
        return self.hands[0] if self.hands else None

    def union_box(self) -> tuple[int, int, int, int] | None:
        """Pixel box around the landmarks of every hand, no margin: the reference FID-H crop.

        Coordinates are truncated to int and clipped like the reference's slice
        `image[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]`; None when there is no hand.
        """
        if not self.hands:
            return None
        points = np.concatenate([hand.landmarks[:, :2] for hand in self.hands])
        return _pixel_box(points, self.width, self.height, margin=0.0, truncate=True)


def _pixel_box(
    points: np.ndarray, width: int, height: int, margin: float, truncate: bool = False
) -> tuple[int, int, int, int]:
    x0, y0 = points.min(axis=0) * (width, height)
    x1, y1 = points.max(axis=0) * (width, height)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    x0, y0, x1, y1 = x0 - dx, y0 - dy, x1 + dx, y1 + dy
    if truncate:
        box = (int(x0), int(y0), int(x1), int(y1))
    else:  # the smallest integer box that holds every landmark
        box = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
    return (
        min(max(box[0], 0), width),
        min(max(box[1], 0), height),
        min(max(box[2], 0), width),
        min(max(box[3], 0), height),
    )


class HandDetector:
    """MediaPipe Hands in static-image mode; `.calls` counts the images it really ran on.

    `box_margin` widens each hand's box by that fraction of its width and height on every side.
    """

    def __init__(
        self,
        max_num_hands: int = 1,
        min_detection_confidence: float = 0.5,
        model_complexity: int = 1,
        box_margin: float = 0.0,
    ) -> None:
        mp = import_mediapipe()  # imported here: it takes a second and most commands don't need it

        if max_num_hands < 1:
            raise HandsynthError(f"max_num_hands must be at least 1, got {max_num_hands}")
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise HandsynthError(
                f"min_detection_confidence must be in [0, 1], got {min_detection_confidence}"
            )
        if model_complexity not in (0, 1):
            raise HandsynthError(f"model_complexity must be 0 or 1, got {model_complexity}")
        self.settings = dict(
            max_num_hands=max_num_hands,
            min_detection_confidence=min_detection_confidence,
            model_complexity=model_complexity,
        )
        self.box_margin = box_margin
        self.calls = 0
        self._hands = mp.solutions.hands.Hands(static_image_mode=True, **self.settings)

    def detect(self, rgb: np.ndarray) -> Detection:
        """Hands in an (H, W, 3) uint8 RGB image, in MediaPipe's order."""
        is_rgb = isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3
        if not (is_rgb and rgb.dtype == np.uint8):
            shape = getattr(rgb, "shape", None)
            raise HandsynthError(
                f"HandDetector.detect wants an (H, W, 3) uint8 RGB array, got {type(rgb).__name__} "
                f"with shape {shape}; read files with handsynth.files.load_rgb"
            )
        if self._hands is None:
            raise HandsynthError("this HandDetector is closed; create a new one")
        height, width = rgb.shape[:2]
        result = self._hands.process(np.ascontiguousarray(rgb))
        self.calls += 1
        hands = []
        for landmarks, handedness in zip(
            result.multi_hand_landmarks or [], result.multi_handedness or [], strict=True
        ):
            points = np.array([(p.x, p.y, p.z) for p in landmarks.landmark], dtype=np.float64)
            label = handedness.classification[0]
            hands.append(
                Hand(
                    landmarks=points,
                    handedness=label.label,
                    score=float(label.score),
                    box=_pixel_box(points[:, :2], width, height, self.box_margin),
                )
            )
        return Detection(hands=hands, width=width, height=height)

    def close(self) -> None:
        if self._hands is not None:
            self._hands.close()
            self._hands = None

    def __enter__(self) -> HandDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
