"""YouTube-ASL (Uthus, Tanzer and Georg, 2023; https://github.com/google-research/google-research/tree/master/youtube_asl):
the release is a list of YouTube video ids, so the source is the folder the user downloaded them to
(.mp4, .webm, .mkv, .mov, .avi; the file name is the video id).

Seed 004 evaluates on 2,000 frames with two-handed signs from 50 videos (Table II). Per video, OpenCV
reads CANDIDATES_PER_FRAME x `pose.frames_per_video` evenly spaced frames into `<dataset>/frames/`,
MediaPipe Holistic (+ Hands) finds their poses (cached, so the build's own pose step reads them again
at no cost), and of the frames where both hands are found, `pose.frames_per_video` evenly spaced ones
are kept. Every kept frame is a "test" image: the set is for evaluation, and its report scores full
images (the videos have no background clutter).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from handsynth import files
from handsynth.errors import HandsynthError
from handsynth.perception.pose import SIDES
from handsynth.progress import progress_bar
from handsynth.twostage.data.sources.records import SourceIndex, SourceRecord

SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi"}
CANDIDATES_PER_FRAME = 4  # ours: frames read per frame kept, room for the one-handed ones
GROUP = "asl"


def sample_frames(video: Path, count: int, folder: Path) -> list[Path]:
    """`count` evenly spaced frames of `video` as PNGs in `folder` (reused when already there)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        if total < 1:
            raise HandsynthError(
                f"cannot read video {video}: OpenCV finds no frames in it; re-download it or remove it from "
                "the folder"
            )
        wanted = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
        paths, index = [], 0
        for frame in wanted:
            path = folder / f"{frame:06d}.png"
            if path.is_file():
                paths.append(path)
                continue
            while index < frame and capture.grab():  # grab() skips without decoding
                index += 1
            ok, bgr = capture.read()
            if not ok:
                break  # the container over-reports its frames: the rest are not there
            index += 1
            files.save_image(path, Image.fromarray(bgr[:, :, ::-1]))
            paths.append(path)
    finally:
        capture.release()
    if not paths:
        raise HandsynthError(
            f"cannot decode any frame of video {video}; re-download it or remove it from the folder"
        )
    return paths


def read_youtube_asl(root: Path, work: Path, per_video: int, detect, progress: bool = True) -> SourceIndex:
    """The videos' frames with both hands; `detect(paths) -> PoseRun` finds their poses."""
    videos = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)
    if not videos:
        raise HandsynthError(
            f"no videos ({', '.join(sorted(SUFFIXES))}) in {root}; give the YouTube-ASL folder"
        )
    if per_video < 1:
        raise HandsynthError(f"pose.frames_per_video must be >= 1, got {per_video}")
    frames = {
        video: sample_frames(video, CANDIDATES_PER_FRAME * per_video, work / "frames" / video.stem)
        for video in progress_bar(videos, desc="sampling video frames", unit="video", disable=not progress)
    }
    paths = [p for video_frames in frames.values() for p in video_frames]
    poses = detect(paths)
    records, dropped = [], 0
    for video, video_frames in frames.items():
        both = [p for p in video_frames if _both_hands(poses.poses.get(p))]
        dropped += len(video_frames) - len(both)
        if len(both) > per_video:
            both = [both[i] for i in np.linspace(0, len(both) - 1, per_video).round().astype(int)]
        stem = re.sub(r"[^A-Za-z0-9_.-]", "-", video.stem)
        records += [
            SourceRecord(
                key=f"{stem}-{p.stem}", image_path=p, gesture=GROUP, split="test", user_id=video.stem
            )
            for p in both
        ]
    return SourceIndex(
        records=records, groups=[GROUP], fixed_split=True, filtered={"not_both_hands": dropped}
    )


def _both_hands(found: dict | None) -> bool:
    return bool(found and found["keypoints"] is not None and all(found["hand_sources"][s] for s in SIDES))
