"""`handsynth data build` and `handsynth data evaluate`: the Hand1000 dataset's commands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth import files
from handsynth.cli_options import add_config_arguments, comma_list, config_from_args
from handsynth.data.dataset import CROP_MODES, SPLITS, build_dataset, default_dataset_dir, evaluate_dataset

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build the gesture dataset from HaGRID, or evaluate a built one",
        description="Build a training-ready dataset folder from a HaGRID-layout folder "
        "(selection, cropping, captioning, gesture-phrase rewriting, manifests), or measure its "
        "caption quality with CLIP.",
    )
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    build = commands.add_parser(
        "build",
        help="turn a HaGRID folder into a dataset folder",
        description="Select, crop, caption and rewrite HaGRID images into <dataset>/images, "
        "train.jsonl, test.jsonl, reference/ and report.json. Finished work is skipped on a re-run.",
    )
    add_config_arguments(build)
    _add_dataset_dir_argument(build)
    build.add_argument(
        "--source", dest="data.source", metavar="DIR", help="HaGRID folder (v1 or v2 layout), or 'synthetic'"
    )
    build.add_argument(
        "--gestures",
        dest="data.gestures",
        metavar="LIST",
        type=comma_list,
        help="comma-separated, e.g. call,palm",
    )
    build.add_argument(
        "--n-train", dest="data.n_train", metavar="N", type=int, help="training images per gesture (1000)"
    )
    build.add_argument(
        "--n-test", dest="data.n_test", metavar="N", type=int, help="test images per gesture (1000)"
    )
    build.add_argument(
        "--subject-disjoint",
        dest="data.subject_disjoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep every user_id in one split only",
    )
    build.add_argument(
        "--image-size", dest="data.image_size", metavar="PX", type=int, help="prepared image size in px (512)"
    )
    build.add_argument("--crop", dest="data.crop", choices=CROP_MODES, help="center (reference) or hand")
    build.add_argument(
        "--captioner",
        dest="data.captioner",
        metavar="KIND",
        help="blip2 | paligemma | vitgpt2 | llava | metadata (synthetic data)",
    )
    build.add_argument(
        "--captioner-model", dest="data.captioner_model", metavar="ID", help="hub id or local folder"
    )
    build.add_argument(
        "--rewrite", dest="data.rewrite", choices=("llm", "deterministic"), help="rewrite mode"
    )
    build.add_argument(
        "--rewrite-model", dest="data.rewrite_model", metavar="ID", help="LLM hub id or local folder"
    )
    build.add_argument("--seed", dest="run.seed", metavar="N", type=int, help="selection seed (0)")
    build.set_defaults(func=run_build)

    evaluate = commands.add_parser(
        "evaluate",
        help="CLIP caption quality of a built dataset",
        description="Mean CLIP image-caption similarity and mean caption-caption similarity per "
        "split and gesture, as the official dataset_evaluate.py. Writes JSON and prints a table.",
    )
    add_config_arguments(evaluate)
    _add_dataset_dir_argument(evaluate)
    evaluate.add_argument(
        "--clip-model", dest="data.clip_model", metavar="ID", help="CLIP hub id or local folder"
    )
    evaluate.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="which split (all)")
    evaluate.add_argument(
        "--captions", choices=("caption", "caption_raw"), default="caption", help="rewritten or raw captions"
    )
    evaluate.add_argument(
        "--out", type=Path, metavar="FILE", help="JSON output (default <dataset>/quality-<captions>.json)"
    )
    evaluate.set_defaults(func=run_evaluate)


def _add_dataset_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-dir", type=Path, metavar="DIR", help="dataset folder (default <output-dir>/dataset)"
    )


def run_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = build_dataset(config, args.dataset_dir)
    print(f"{report['totals']['train']} train / {report['totals']['test']} test images; report in "
          f"{(args.dataset_dir or default_dataset_dir(config)) / 'report.json'}")  # fmt: skip
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from handsynth.data.quality import quality_table

    config = config_from_args(args)
    dataset_dir = args.dataset_dir or default_dataset_dir(config)
    splits = SPLITS if args.split == "all" else (args.split,)
    results = evaluate_dataset(dataset_dir, config.data.clip_model, splits, args.captions, config.run.device)
    out = args.out or Path(dataset_dir) / f"quality-{args.captions}.json"
    files.write_json(out, results)
    print(quality_table(results))
    print(f"written to {out}")
    return 0
