"""`handsynth tiny pretrain`: the command line of the tiny family's pretraining."""

from __future__ import annotations

import argparse
import dataclasses

from handsynth.cli_options import comma_list
from handsynth.tiny.pretrained import STAGES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    tiny = subparsers.add_parser("tiny", help="the tiny model family the demo and the tests use")
    commands = tiny.add_subparsers(dest="tiny_command", required=True, metavar="COMMAND")
    pretrain = commands.add_parser(
        "pretrain",
        help="train the tiny VAE, UNet, inpainting UNet and OpenPose ControlNet on synthetic figures",
        description="Train the tiny family on synthetic figures of a data seed the demo and the tests never "
        "draw, stage by stage (vae, decoder, unet, inpaint, controlnet). Run the same command again to "
        "resume. "
        "When every stage is done, OUT gets the diffusers folders sd/, sd-inpainting/ and controlnet/, "
        "recipe.json and manifest.json.",
    )
    pretrain.add_argument("--out", required=True, help="output folder (work files go to OUT/work)")
    pretrain.add_argument(
        "--recipe", help="a recipe.json to train again with (its flags override the ones below)"
    )
    pretrain.add_argument("--stages", type=comma_list, help="comma-separated stages to run (default all)")
    pretrain.add_argument("--seed", type=int, help="model and shuffle seed (0)")
    pretrain.add_argument("--per-gesture", type=int, help="training figures per gesture (100)")
    pretrain.add_argument("--batch-size", type=int, help="figures per step (8)")
    for stage in STAGES:
        pretrain.add_argument(f"--{stage}-steps", type=int, help=f"optimiser steps of the {stage} stage")
    pretrain.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from handsynth.tiny.pretrain import Recipe, pretrain, read_recipe

    recipe = read_recipe(args.recipe) if args.recipe else Recipe()
    changes = {
        name: value
        for name, value in (
            ("seed", args.seed),
            ("per_gesture", args.per_gesture),
            ("batch_size", args.batch_size),
        )
        if value is not None
    }
    steps = {stage: getattr(args, f"{stage}_steps") for stage in STAGES}
    recipe = dataclasses.replace(
        recipe, **changes, steps={s: n if n is not None else recipe.steps[s] for s, n in steps.items()}
    )
    pretrain(args.out, recipe, args.stages or list(STAGES))
    return 0
