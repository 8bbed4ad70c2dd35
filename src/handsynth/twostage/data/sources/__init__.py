"""The sources `pose build` reads, behind one interface: `read_source` turns `pose.source` into records
(SourceRecord, or HaGRID's own HagridRecord) grouped for the seeded selection, each with its own
whole-body keypoints and caption where the source has them. `pose.source_format` picks the reader:

- hagrid (HaGRID v1/v2, or "synthetic"): handsynth.data.hagrid;
- interhand (InterHand2.6M), reinterhand (Re:InterHand): exact keypoints projected from 3D, no Holistic;
- laion_human (HumanSD's LAION-Human), images (any folder): Holistic, single-person filter where the
  source can count people;
- youtube_asl (a folder of videos): frames with both hands, for the evaluation.

Each reader's module cites the release it follows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.twostage.data.sources.records import SourceIndex, SourceRecord

FORMATS = ("hagrid", "interhand", "reinterhand", "laion_human", "images", "youtube_asl")
# formats whose records carry their captions: the build uses them whatever pose.captioner says
CAPTIONED = ("interhand", "reinterhand")

__all__ = ["CAPTIONED", "FORMATS", "SourceIndex", "SourceRecord", "check_format", "read_source"]


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise HandsynthError(f"pose.source_format '{fmt}' is not one of: {', '.join(FORMATS)}")


def read_source(
    config: Config, source: Path, work: Path, detect: Callable | None = None, progress: bool = True
):
    """The records of `source` in `pose.source_format`: a HagridIndex or a SourceIndex. `work` is the
    dataset folder, where YouTube-ASL's frames go, and `detect(paths) -> PoseRun` finds their poses (the
    build's twostage.data.extract.detect_poses with its cache)."""
    pose = config.pose
    check_format(pose.source_format)
    if pose.source_format == "hagrid":
        from handsynth.data.hagrid import read_hagrid

        return read_hagrid(source, pose.gestures)
    if pose.source_format == "interhand":
        from handsynth.twostage.data.sources.interhand import read_interhand

        return read_interhand(source, pose.captions)
    if pose.source_format == "reinterhand":
        from handsynth.twostage.data.sources.reinterhand import read_reinterhand

        return read_reinterhand(source, pose.captions)
    if pose.source_format == "laion_human":
        from handsynth.twostage.data.sources.laion_human import read_laion_human

        return read_laion_human(source)
    if pose.source_format == "images":
        from handsynth.twostage.data.sources.images import read_image_folder

        return read_image_folder(source)
    from handsynth.twostage.data.sources.youtube_asl import read_youtube_asl

    if detect is None:
        raise HandsynthError("reading YouTube-ASL needs a pose detector to find the frames with both hands")
    return read_youtube_asl(source, work, pose.frames_per_video, detect, progress)
