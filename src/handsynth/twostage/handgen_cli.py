"""`handsynth handgen train` and `handsynth handgen generate`: the two-stage method's stage 1."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth.config import add_config_arguments, config_from_args, save_config
from handsynth.training.trainer import add_training_arguments

log = logging.getLogger(__name__)

# At the paper's batch 32 and 512 px the activations dominate (benchmarks/handgen_train_step.py).
TRAIN_DEFAULTS = {"train.gradient_checkpointing": True}


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "handgen",
        help="the two-stage method's hand generator: train it, or generate hands and masks",
        description="Stage 1 of the two-stage method (seed 004 §III-B): an SD UNet conditioned on finger "
        "heatmaps and a hand mask, with a mask head.",
    )
    commands = parser.add_subparsers(dest="handgen_command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_generate(commands)


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train the multi-task hand generator on hand crops",
        description="Fine-tune the base SD UNet, its conv_in widened to 4 + 11 channels, and a mask head "
        "on the train rows of hands.jsonl: loss = noise MSE + handgen.mask_loss_weight x mask MSE. Writes "
        "the model folder (default <output-dir>/models/handgen) and <output-dir>/train/handgen/ "
        "(loss.jsonl with the ldm and mask terms, checkpoints, validation grids). Runs under `accelerate "
        "launch`.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--hands",
        type=Path,
        metavar="FILE",
        help="hands.jsonl of `handsynth pose build` (default <pose.output_dir or output-dir/twostage-data>/"
        "hands.jsonl)",
    )
    parser.add_argument(
        "--model-dir",
        dest="handgen.model_dir",
        metavar="DIR",
        help="where the model goes (<output-dir>/models/handgen)",
    )
    parser.add_argument(
        "--base",
        dest="handgen.base",
        help="base SD hub id or folder (stable-diffusion-v1-5/stable-diffusion-v1-5)",
    )
    parser.add_argument(
        "--mask-loss-weight",
        dest="handgen.mask_loss_weight",
        type=float,
        help="λ of the mask loss (0.05; 0 trains the single-task ablation)",
    )
    parser.add_argument(
        "--mask-dropout",
        dest="handgen.mask_dropout",
        type=float,
        help="P(mask input zeroed) in training (0.5)",
    )
    parser.add_argument("--lr", dest="handgen.lr", type=float, help="learning rate (1e-5)")
    parser.add_argument(
        "--batch-size", dest="handgen.batch_size", type=int, help="batch size per process (32)"
    )
    parser.add_argument("--epochs", dest="handgen.epochs", type=int, help="passes over the hand crops (5)")
    parser.add_argument(
        "--resolution", dest="handgen.resolution", type=int, help="training size in px (0: the base model's)"
    )
    add_training_arguments(parser, "<output-dir>/train/handgen", checkpointing="on for this command")
    parser.set_defaults(func=run_train)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="generate hand images and masks from keypoints",
        description="Sample a hand generator (DDIM, classifier-free guidance whose unconditional branch "
        "keeps the heatmaps) for every hand set in --keypoints. Writes images/, masks/ (soft), masks_binary/ "
        "(> 0.5), records.jsonl and grid.png in --out; a re-run skips finished hands.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="a hand-generator folder (<output-dir>/models/handgen)"
    )
    parser.add_argument(
        "--keypoints",
        type=Path,
        metavar="FILE",
        required=True,
        help=".jsonl with one hand set per row (hands, caption; a hands.jsonl works) or .npy of (N, 42, 3)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (<output-dir>/hands)")
    parser.add_argument("--prompt", help="one prompt for every hand set (default: each row's caption)")
    parser.add_argument(
        "--with-masks", action="store_true", help="feed each row's mask to the model (default: mask-free)"
    )
    parser.add_argument("--steps", dest="handgen.steps", type=int, help="DDIM steps (50)")
    parser.add_argument("--guidance", dest="handgen.guidance", type=float, help="guidance scale (7.5)")
    parser.add_argument(
        "--size", dest="handgen.size", type=int, help="image side in px (0: the training size)"
    )
    parser.add_argument(
        "--batch-size", dest="handgen.sample_batch_size", type=int, help="hand sets per batch (4)"
    )
    parser.add_argument("--seed", dest="run.seed", type=int, help="base seed: hand i uses seed + i (0)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu or cuda (auto)")
    parser.set_defaults(func=run_generate)


def run_train(args: argparse.Namespace) -> int:
    from handsynth.twostage.dataset import default_output_dir
    from handsynth.twostage.hand_trainer import train_handgen

    config = config_from_args(args, defaults=TRAIN_DEFAULTS)
    out = Path(config.run.output_dir)
    hands = args.hands or default_output_dir(config) / "hands.jsonl"
    folder = train_handgen(config, hands, out)
    log.info("hand generator -> %s", folder)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from handsynth.twostage.hand_generate import generate_hands
    from handsynth.twostage.paths import default_handgen_dir

    config = config_from_args(args)
    out = Path(config.run.output_dir)
    out_dir = args.out or out / "hands"
    save_config(config, out_dir / "config.toml")
    records = generate_hands(
        config,
        args.model or default_handgen_dir(config),
        args.keypoints,
        out_dir,
        args.prompt,
        args.with_masks,
    )
    log.info("%d hands in %s", len(records), out_dir)
    return 0
