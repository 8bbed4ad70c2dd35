"""`handsynth COMMAND ...`: one subcommand per pipeline step, each in its own module.

A command module exposes `add_command(subparsers)`, which adds its parser and sets `func`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from handsynth import __version__
from handsynth.errors import HandsynthError

COMMAND_MODULES = [
    "handsynth.demo",
    "handsynth.run",
    "handsynth.hand1000.trainer",
    "handsynth.hand1000.generate",
    "handsynth.data.dataset",
    "handsynth.hand1000.features",
    "handsynth.evaluation.evaluate",
    "handsynth.twostage.pose_cli",
    "handsynth.twostage.handgen_cli",
    "handsynth.twostage.outpaint_trainer",
    "handsynth.twostage.generate_cli",
]


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
        description="Text-to-image diffusion that draws hands correctly (Hand1000).",
    )
    parser.add_argument("--version", action="version", version=f"handsynth {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_command(subparsers)
    for each in _all_parsers(parser):
        each.formatter_class = _HelpFormatter
    return parser


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
