"""`handsynth twostage generate` and `handsynth twostage ablate`: the two-stage method's commands."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth.config import add_config_arguments, config_from_args
from handsynth.twostage.blending import BLENDINGS

log = logging.getLogger(__name__)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--pose", type=Path, help="poses.jsonl or images.jsonl (default: twostage.poses, else the test split)"
    )
    parser.add_argument("--prompt", default="", help="the prompt for every pose (default: each row's)")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--handgen", dest="handgen.model_dir", help="hand generator folder")
    parser.add_argument("--lora", dest="outpaint.lora_dir", help="outpainter LoRA folder")
    parser.add_argument("--steps", dest="outpaint.steps", type=int, help="outpainter DDIM steps (50)")
    parser.add_argument("--size", dest="twostage.size", type=int, help="image side in px (512)")
    parser.add_argument("--max-poses", dest="twostage.max_poses", type=int, help="first N poses (0: all)")
    parser.add_argument("--seed", dest="run.seed", type=int, help="seed of the first image (0)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu or cuda (auto)")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "twostage",
        help="the two-stage pose-conditioned method: pose + prompt -> image",
        description="The two-stage method of Pelykh et al.: a hand generator draws the hands from the "
        "pose's finger heatmaps, a ControlNet + LoRA outpainter paints the body around them.",
    )
    commands = parser.add_subparsers(dest="twostage_command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate",
        help="generate images for a list of poses and prompts (resumable)",
        description="Generate one image per pose, writing images/, intermediates/, records.jsonl and "
        "grid.png to --out (default <output-dir>/twostage/samples).",
    )
    _add_common(generate)
    generate.add_argument("--pose-image", type=Path, help="a photo whose pose (MediaPipe Holistic) to draw")
    generate.add_argument(
        "--blending", dest="outpaint.blending", choices=BLENDINGS, help="blend (sequential)"
    )
    generate.set_defaults(func=run_generate)
    ablate = commands.add_parser(
        "ablate",
        help="the blending ablation: the same poses through sequential, naive and bbox, with FID, DAP, MPJPE",
        description="Generate the same poses, prompts and seeds with each mode of twostage.ablation and "
        "evaluate each; writes ablation.json, ablation.md and comparison.png to --out (default "
        "<output-dir>/twostage/ablation).",
    )
    _add_common(ablate)
    ablate.add_argument("--real", type=Path, help="the real images' images.jsonl (default: the dataset's)")
    ablate.set_defaults(func=run_ablate)


def _jobs(args: argparse.Namespace, config):
    from handsynth.twostage.generate import default_poses, read_pose_jobs

    poses = args.pose or default_poses(config)
    return read_pose_jobs(poses, config.twostage.size, args.prompt, max_poses=config.twostage.max_poses)


def run_generate(args: argparse.Namespace) -> int:
    from handsynth.twostage.generate import generate_twostage, pose_from_photo

    config = config_from_args(args)
    if args.pose_image:
        if args.pose:
            log.warning("--pose-image given: --pose %s is not read", args.pose)
        jobs = [pose_from_photo(args.pose_image, config.twostage.size, args.prompt)]
    else:
        jobs = _jobs(args, config)
    out = args.out or Path(config.run.output_dir) / "twostage" / "samples"
    records = generate_twostage(config, jobs, out)
    log.info("%d images -> %s", len(records), out)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from handsynth.twostage.ablation import markdown, run_blending_ablation
    from handsynth.twostage.dataset import default_output_dir

    config = config_from_args(args)
    out = args.out or Path(config.run.output_dir) / "twostage" / "ablation"
    real = args.real or default_output_dir(config)
    table = run_blending_ablation(config, _jobs(args, config), real, out)
    print(markdown(table))
    return 0
