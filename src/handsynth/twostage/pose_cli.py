"""`handsynth pose extract|build|merge`: the two-stage method's data commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from handsynth.config import add_config_arguments, comma_list, config_from_args


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pose",
        help="two-stage method data: whole-body poses, hand masks, hand crops",
        description="Whole-body poses from MediaPipe Holistic (extract), and the two-stage dataset built "
        "from a HaGRID-layout folder or the synthetic one (build, merge).",
    )
    commands = parser.add_subparsers(dest="pose_command", required=True, metavar="SUBCOMMAND")

    extract = commands.add_parser(
        "extract",
        help="133 COCO-WholeBody keypoints of every image in a folder -> poses.jsonl",
        description="Run MediaPipe Holistic (hands filled from MediaPipe Hands) on every image under "
        "IMAGES_DIR and write one JSON line per image: keypoints (133 x [x, y, v]) or null when there is "
        "no person, MediaPipe's scores and where each hand came from. Unreadable images are named and "
        "skipped. Poses are cached by file content, so a re-run detects only new images.",
    )
    add_config_arguments(extract)
    extract.add_argument(
        "images_dir", type=Path, metavar="IMAGES_DIR", help="folder of images (searched deeply)"
    )
    extract.add_argument("--out", type=Path, required=True, metavar="FILE", help="poses.jsonl to write")
    _add_workers(extract)
    extract.set_defaults(func=run_extract)

    build = commands.add_parser(
        "build",
        help="turn a HaGRID folder (or the synthetic one) into the two-stage dataset",
        description="Select images, find their whole-body poses, hand masks (exact on synthetic data, SAM "
        "when pose.sam_model is set, else drawn from the landmarks, dilated 5x5), square images, hand crops "
        "with finger heatmaps, and captions; write images.jsonl, hands.jsonl, report.json and a contact "
        "sheet. Finished images are skipped on a re-run.",
    )
    add_config_arguments(build)
    _add_dataset_dir(build)
    build.add_argument("--source", dest="pose.source", metavar="DIR", help="HaGRID folder or 'synthetic'")
    build.add_argument(
        "--gestures", dest="pose.gestures", metavar="LIST", type=comma_list, help="comma-separated gestures"
    )
    build.add_argument(
        "--n-train", dest="pose.n_train", type=int, metavar="N", help="train images per gesture"
    )
    build.add_argument("--n-test", dest="pose.n_test", type=int, metavar="N", help="test images per gesture")
    build.add_argument(
        "--image-size", dest="pose.image_size", type=int, metavar="PX", help="whole images (512)"
    )
    build.add_argument("--crop-size", dest="pose.crop_size", type=int, metavar="PX", help="hand crops (512)")
    build.add_argument(
        "--sam-model",
        dest="pose.sam_model",
        metavar="ID",
        help="SAM id or folder; '' draws masks from landmarks",
    )
    build.add_argument(
        "--captioner", dest="pose.captioner", metavar="KIND", help="llava | metadata | blip2 | ..."
    )
    build.add_argument(
        "--captioner-model", dest="pose.captioner_model", metavar="ID", help="hub id or folder"
    )
    build.add_argument("--seed", dest="run.seed", type=int, metavar="N", help="selection seed (0)")
    build.add_argument(
        "--shard", metavar="K/N", default="1/1", help="build share K of N of the images into shard-K-of-N/"
    )
    _add_workers(build)
    build.set_defaults(func=run_build)

    merge = commands.add_parser(
        "merge",
        help="join finished shard-K-of-N folders into one dataset",
        description="Join the shard-K-of-N/ folders of a sharded `pose build` (all N, each finished) into "
        "one dataset folder: files are hard-linked (copied across filesystems), manifests and reports "
        "joined.",
    )
    add_config_arguments(merge)
    _add_dataset_dir(merge)
    merge.set_defaults(func=run_merge)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", dest="pose.workers", type=int, metavar="N", help="Holistic processes (2)"
    )


def _add_dataset_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-dir", dest="pose.output_dir", metavar="DIR", help="dataset folder (<run>/twostage-data)"
    )


def run_extract(args: argparse.Namespace) -> int:
    from handsynth.twostage.extract import extract_poses

    config = config_from_args(args)
    report = extract_poses(args.images_dir, args.out, config.pose.workers)
    for path, error in report["unreadable"].items():
        print(f"skipped unreadable image {path}: {error}")
    print(
        f"{report['images']} images: {report['with_person']} with a person, {report['no_person']} without "
        f"(keypoints null), {len(report['unreadable'])} unreadable; bodies {report['bodies']}, hands from "
        f"Holistic {report['hands']['holistic']}, from Hands {report['hands']['hands']} -> {args.out}"
    )
    return 0


def run_build(args: argparse.Namespace) -> int:
    from handsynth.twostage.dataset import build_pose_dataset, default_output_dir, parse_shard, shard_dir

    config = config_from_args(args)
    shard = parse_shard(args.shard)
    report = build_pose_dataset(config, shard=shard)
    counts = report["counts"]
    out = shard_dir(default_output_dir(config), shard)
    unreadable = counts["unreadable"] + counts["missing"]
    print(f"{sum(counts['images'].values())} images, {sum(counts['crops'].values())} hand crops "
          f"({counts['no_person']} without a person, {counts['no_hands']} without hands, {unreadable} "
          f"unreadable); report in {out / 'report.json'}")  # fmt: skip
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from handsynth.twostage.dataset import default_output_dir, merge_shards

    config = config_from_args(args)
    out = default_output_dir(config)
    report = merge_shards(out)
    counts = report["counts"]
    print(f"merged {len(report['shards'])} shards: {sum(counts['images'].values())} images, "
          f"{sum(counts['crops'].values())} hand crops -> {out}")  # fmt: skip
    return 0
