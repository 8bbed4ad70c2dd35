"""The flags that many commands share: --config, --set and --output-dir (a run config and overrides
to it), and the flags of the [train] keys every trainer reads. A flag whose dest is `section.key`
overrides that config key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from handsynth.config import Config, load_config, parse_set_option
from handsynth.training.trainer import OPTIMIZERS, PRECISIONS


def comma_list(text: str) -> list[str]:
    """A flag's comma-separated value as a list, e.g. `--gestures call,palm`."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and --output-dir: what every command that reads a run config takes."""
    parser.add_argument("--config", type=Path, help="TOML run config; flags below override it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set train.unet_lr=2e-6 (repeatable)",
    )
    parser.add_argument(
        "--output-dir",
        dest="run.output_dir",
        metavar="DIR",
        help="run folder (default: run.output_dir, runs/demo)",
    )


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Config:
    """`defaults` (a command's own), then --config, then every `section.key` flag given, then --set."""
    config = Config()
    for key, value in (defaults or {}).items():
        config.set(key, value)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    overrides.update(parse_set_option(item) for item in args.set)
    return load_config(args.config, overrides, base=config)


def add_training_arguments(parser: argparse.ArgumentParser, work: str, checkpointing: str = "off") -> None:
    """The flags of the `[train]` keys every trainer reads; `work` names the run's work folder (for
    --resume's help) and `checkpointing` the command's gradient-checkpointing default."""
    parser.add_argument(
        "--mixed-precision",
        dest="train.mixed_precision",
        choices=("auto", *PRECISIONS),
        help="auto (bf16 on a GPU that has it, else fp16; fp32 on CPU), no, fp16 or bf16 (auto)",
    )
    parser.add_argument(
        "--optimizer",
        dest="train.optimizer",
        choices=("auto", *OPTIMIZERS),
        help="auto (adam8bit on CUDA when bitsandbytes is installed, else adam), adam, or adam8bit, "
        "bitsandbytes' 8-bit Adam (auto)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        dest="train.gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"recompute UNet activations in the backward pass: less memory, slower ({checkpointing})",
    )
    parser.add_argument(
        "--checkpoint-every", dest="train.checkpoint_every", type=int, help="steps between checkpoints (1000)"
    )
    parser.add_argument(
        "--validate-every",
        dest="train.validate_every",
        type=int,
        help="steps between validation grids (0: none)",
    )
    parser.add_argument("--max-steps", dest="train.max_steps", type=int, help="stop after N steps (0: all)")
    parser.add_argument("--seed", dest="run.seed", type=int, help="seed (0)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu or cuda (auto)")
    parser.add_argument(
        "--resume",
        dest="train.init_from",
        action="store_const",
        const="resume",
        help=f"continue from the last checkpoint in {work}/checkpoints",
    )
