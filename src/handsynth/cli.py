"""`handsynth COMMAND ...`: the commands of every package, put together.

Each package keeps its command-line code in its own `cli` module, whose `add_commands(subparsers)` adds
its commands: `data.cli` (the Hand1000 dataset), `hand1000.cli` (Stage I, training, generation) and
`twostage.cli` (pose data, hand generator, outpainter, generation, ablation). The commands that span
both methods live here: `run` (the chain), `demo`, `evaluate` and `compare` (the baselines and the
papers' tables).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from handsynth import __version__
from handsynth.cli_options import add_config_arguments, comma_list, config_from_args
from handsynth.data import cli as data_cli
from handsynth.demo import DEMO_DEFAULTS, with_tiny_models
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics
from handsynth.hand1000 import cli as hand1000_cli
from handsynth.hand1000.evaluate import ALL_METRICS
from handsynth.run import check_config, run_pipeline
from handsynth.tiny import cli as tiny_cli
from handsynth.twostage import cli as twostage_cli
from handsynth.twostage.evaluate import TWOSTAGE_METRICS

log = logging.getLogger(__name__)


class _HelpFormatter(argparse.HelpFormatter):
    """Flags override config keys through `dest="section.key"`; show `KEY`, not `SECTION.KEY`."""

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return action.dest.rpartition(".")[2].upper()


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handsynth",
        description="Text-to-image diffusion that draws hands correctly: Hand1000 (gesture fine-tuning of "
        "SD) and two-stage pose-conditioned generation (a hand generator, then a ControlNet body "
        "outpainter).",
    )
    parser.add_argument("--version", action="version", version=f"handsynth {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(subparsers)
    add_run_command(subparsers)
    hand1000_cli.add_commands(subparsers)
    data_cli.add_commands(subparsers)
    add_evaluate_command(subparsers)
    add_compare_command(subparsers)
    twostage_cli.add_commands(subparsers)
    tiny_cli.add_commands(subparsers)
    for each in _all_parsers(parser):
        each.formatter_class = _HelpFormatter
    return parser


def add_run_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole chain of each method in run.methods from one config (skips finished steps)",
        description="Hand1000: dataset, quality, features, train, generate and evaluate for every gesture "
        "in the config. Two-stage: pose data, hand generator, outpainter, generate, evaluate and the "
        "blending ablation. Then the report page. Finished steps are skipped; an interrupted step resumes.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.config is None:
        raise HandsynthError(
            "`handsynth run` needs --config: start from configs/hand1000.toml or configs/twostage.toml, "
            "or try `handsynth demo`"
        )
    run_pipeline(config_from_args(args))
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run both methods offline on tiny models and a synthetic gesture dataset",
        description="Use the tiny SD, SD inpainting and OpenPose ControlNet pretrained on synthetic figures "
        "(shipped with handsynth), write tiny random-weight CLIP, LLM, T2I-Adapter and Inception, render a "
        "synthetic HaGRID-layout gesture dataset with whole-body poses, hand masks and captions, then run "
        "the Hand1000 chain and the two-stage chain on them, and each method against its baselines in the "
        "papers' tables, as `handsynth run` does with real models. Finished steps are skipped on a re-run.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--gestures",
        dest="data.gestures",
        type=comma_list,
        help="comma-separated gestures of the Hand1000 chain (default call,palm)",
    )
    parser.add_argument(
        "--images-per-gesture",
        dest="data.synthetic_per_gesture",
        type=int,
        help="synthetic images rendered per gesture (default 24)",
    )
    parser.add_argument("--n-train", dest="data.n_train", type=int, help="training images per gesture (12)")
    parser.add_argument("--n-test", dest="data.n_test", type=int, help="test images per gesture (12)")
    parser.add_argument(
        "--schedule", dest="train.schedule", choices=["reference", "batched"], help="training schedule"
    )
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    config = config_from_args(args, defaults=DEMO_DEFAULTS)
    check_config(config)
    log.info("[0] tiny models -> %s", Path(config.run.output_dir) / "tiny-models")
    run_pipeline(with_tiny_models(config))
    return 0


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="FID, KID, FID-H, KID-H, HAND-CONF, CLIPSIM and gesture accuracy of generated images",
        description="Compare generated images with real ones. Writes report.json, report.md and "
        "samples.png per gesture; Inception features are cached so a second model re-reads no real image.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--method",
        choices=("hand1000", "twostage"),
        default="hand1000",
        help="hand1000 (per gesture) or twostage (DAP, DAP-hands, MPJPE, MPJPE-hands, FID/KID at 192, 768 "
        "and 2048 dims, their fg variants, CLIPSIM; evaluate.twostage_metrics)",
    )
    parser.add_argument(
        "--real",
        type=Path,
        metavar="DIR",
        help="dataset folder (test.jsonl) or image folder (default <run>/dataset); twostage: the "
        "two-stage dataset (images.jsonl, default <run>/twostage-data); a YouTube-ASL build is scored on "
        "full images, without the fg metrics",
    )
    parser.add_argument(
        "--generated",
        type=Path,
        metavar="DIR",
        help="samples folder (<gesture>/records.jsonl) or image folder (default <run>/samples); twostage: "
        "a `twostage generate` folder (default <run>/twostage/samples)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="report folder (default <run>/eval, twostage <run>/twostage/eval)",
    )
    parser.add_argument(
        "--gesture",
        action="append",
        help="gesture to evaluate (repeatable; default every data.gestures entry with samples; "
        "'none' compares the two folders as they are)",
    )
    parser.add_argument(
        "--inception-weights",
        dest="evaluate.inception_weights",
        metavar="PTH",
        help=f"{inception.WEIGHTS_NAME} (default ${inception.WEIGHTS_ENV}, "
        f"then {inception.default_weights_path()})",
    )
    parser.add_argument(
        "--preprocess",
        dest="evaluate.preprocess",
        choices=inception.PREPROCESS_MODES,
        help="clean (PIL bicubic, clean-fid) or reference (Resize+CenterCrop, as the Hand1000 scripts); "
        "the input normalisation follows the weights",
    )
    parser.add_argument(
        "--feature-dim",
        dest="evaluate.feature_dim",
        type=int,
        choices=inception.TAPS,
        help="Inception tap (2048)",
    )
    parser.add_argument("--kid-subsets", dest="evaluate.kid_subsets", type=int, help="KID subsets (100)")
    parser.add_argument(
        "--kid-subset-size", dest="evaluate.kid_subset_size", type=int, help="KID subset size (1000)"
    )
    parser.add_argument(
        "--kid-estimator",
        dest="evaluate.kid_estimator",
        choices=metrics.KID_ESTIMATORS,
        help="unbiased, or reference (biased, diagonal kept, as the official scripts)",
    )
    parser.add_argument(
        "--hand-crop",
        dest="evaluate.hand_crop",
        choices=metrics.HAND_CROP_MODES,
        help="FID-H crops (reference)",
    )
    parser.add_argument(
        "--hand-crop-margin", dest="evaluate.hand_crop_margin", type=float, help="per-hand crop margin (0.25)"
    )
    parser.add_argument("--clip-model", dest="evaluate.clip_model", help="CLIP hub id or folder for CLIPSIM")
    parser.add_argument(
        "--metrics",
        dest="evaluate.metrics",
        type=comma_list,
        help=f"comma-separated subset of {','.join(ALL_METRICS)} (default all); with --method twostage, "
        f"of {','.join(TWOSTAGE_METRICS)}",
    )
    parser.add_argument("--cache-dir", dest="evaluate.cache_dir", help="feature cache (default <run>/cache)")
    parser.add_argument(
        "--batch-size", dest="evaluate.batch_size", type=int, help="Inception/CLIP batch (32)"
    )
    parser.add_argument("--device", dest="run.device", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    method = twostage_cli if args.method == "twostage" else hand1000_cli
    return method.run_evaluate(args, config)


def add_compare_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="each method against its baselines on the same prompts, poses and seeds: the papers' tables",
        description="Two-stage (seed 004, Table I): SD, the OpenPose ControlNet without the LoRA and the "
        "OpenPose T2I-Adapter, through diffusers' pipelines, on the poses, prompts and seeds of "
        "<run>/twostage/samples. Hand1000 (its Table 2): the base model on the prompts and seeds of "
        "<run>/samples/<gesture>. Every row is scored with the run's [evaluate] settings; writes "
        "<run>/compare/table.md, table.json and side-by-side sheets. Resumes where it was stopped.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--baselines",
        dest="compare.baselines",
        type=comma_list,
        help="comma-separated rows besides the methods: sd, controlnet, t2i_adapter (two-stage), base "
        "(Hand1000) (default all)",
    )
    parser.add_argument(
        "--methods", dest="run.methods", type=comma_list, help="hand1000, twostage (default run.methods)"
    )
    parser.add_argument("--batch-size", dest="compare.batch_size", type=int, help="images per call (4)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    from handsynth.compare import run_compare

    config = config_from_args(args)
    if not config.compare.baselines:
        raise HandsynthError("compare.baselines is empty; name at least one, e.g. --baselines sd")
    print(run_compare(config))
    return 0


class _WithoutEmptyNotices(logging.Filter):
    """Drops two library notices that tell a handsynth user nothing: transformers' that an image
    processor falls back to its PIL backend (torchvision is left out on purpose: it pulls in a CUDA
    torch), and diffusers' that a model cast with `to()` has modules to keep in fp32 when it has none."""

    NOTICES = ("requires torchvision (not installed)", "should be kept in float32: []")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


_EMPTY_NOTICES = _WithoutEmptyNotices()  # one instance, so a second main() call adds no second filter


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for library in ("transformers.utils.import_utils", "diffusers.models.modeling_utils"):
        logging.getLogger(library).addFilter(_EMPTY_NOTICES)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except HandsynthError as exc:
        print(f"handsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nhandsynth {args.command}: interrupted. Finished outputs are kept; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
