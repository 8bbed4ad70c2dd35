"""The two-stage method's commands (seed 004): `handsynth pose extract|build|merge` (the data),
`handgen train|generate` (stage 1), `outpaint train` (stage 2), `twostage generate|ablate` (the whole
method) and the two-stage side of `handsynth evaluate`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth.cli_options import add_config_arguments, add_training_arguments, comma_list, config_from_args
from handsynth.config import Config, save_config
from handsynth.errors import HandsynthError
from handsynth.twostage.outpaint.blending import BLENDINGS

log = logging.getLogger(__name__)

# At the paper's batch 32 and 512 px the activations dominate (benchmarks/handgen_train_step.py).
TRAIN_DEFAULTS = {"train.gradient_checkpointing": True}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    add_pose_command(subparsers)
    add_handgen_command(subparsers)
    add_outpaint_command(subparsers)
    add_twostage_command(subparsers)


def add_pose_command(subparsers: argparse._SubParsersAction) -> None:
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
    extract.set_defaults(func=run_pose_extract)

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
    build.add_argument(
        "--source", dest="pose.source", metavar="DIR", help="a folder in --format, or 'synthetic' (HaGRID)"
    )
    build.add_argument(
        "--format",
        dest="pose.source_format",
        metavar="FORMAT",
        help="hagrid | interhand | reinterhand | laion_human | images | youtube_asl (hagrid)",
    )
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
        "--captions",
        dest="pose.captions",
        metavar="FILE",
        help="interhand/reinterhand: sequence -> caption JSON",
    )
    build.add_argument(
        "--frames-per-video", dest="pose.frames_per_video", type=int, metavar="N", help="youtube_asl (40)"
    )
    build.add_argument(
        "--shard", metavar="K/N", default="1/1", help="build share K of N of the images into shard-K-of-N/"
    )
    _add_workers(build)
    build.set_defaults(func=run_pose_build)

    merge = commands.add_parser(
        "merge",
        help="join finished shard-K-of-N folders into one dataset",
        description="Join the shard-K-of-N/ folders of a sharded `pose build` (all N, each finished) into "
        "one dataset folder: files are hard-linked (copied across filesystems), manifests and reports "
        "joined.",
    )
    add_config_arguments(merge)
    _add_dataset_dir(merge)
    merge.set_defaults(func=run_pose_merge)

    mix = commands.add_parser(
        "mix",
        help="merge built datasets into the hand generator's mixed training set (handgen.sources)",
        description="Draw each handgen.sources entry's count of train hand crops from its dataset (seeded, "
        "its gesture distribution kept) into <output-dir>/handgen-mix/hands.jsonl, with report.json. "
        "`handgen train` does this itself when handgen.sources is set.",
    )
    add_config_arguments(mix)
    mix.set_defaults(func=run_pose_mix)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", dest="pose.workers", type=int, metavar="N", help="Holistic processes (2)"
    )


def _add_dataset_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-dir", dest="pose.output_dir", metavar="DIR", help="dataset folder (<run>/twostage-data)"
    )


def run_pose_extract(args: argparse.Namespace) -> int:
    from handsynth.twostage.data.extract import extract_poses

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


def run_pose_build(args: argparse.Namespace) -> int:
    from handsynth.twostage.data.dataset import build_pose_dataset, default_output_dir, parse_shard, shard_dir

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


def run_pose_merge(args: argparse.Namespace) -> int:
    from handsynth.twostage.data.dataset import default_output_dir, merge_shards

    config = config_from_args(args)
    out = default_output_dir(config)
    report = merge_shards(out)
    counts = report["counts"]
    print(f"merged {len(report['shards'])} shards: {sum(counts['images'].values())} images, "
          f"{sum(counts['crops'].values())} hand crops -> {out}")  # fmt: skip
    return 0


def run_pose_mix(args: argparse.Namespace) -> int:
    from handsynth.twostage.data.mix import mix_hand_sets

    config = config_from_args(args)
    if not config.handgen.sources:
        raise HandsynthError("handgen.sources is empty; list the datasets to mix, each with a count")
    manifest, report = mix_hand_sets(config)
    for source in report["sources"]:
        print(f"{source['dataset']}: {source['taken']} of {source['requested']} asked ({source['available']} "
              f"available)")  # fmt: skip
    print(f"{report['total']} hand crops -> {manifest}")
    return 0


def add_handgen_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "handgen",
        help="the two-stage method's hand generator: train it, or generate hands and masks",
        description="Stage 1 of the two-stage method (seed 004 §III-B): an SD UNet conditioned on finger "
        "heatmaps and a hand mask, with a mask head.",
    )
    commands = parser.add_subparsers(dest="handgen_command", required=True, metavar="COMMAND")
    _add_handgen_train(commands)
    _add_handgen_generate(commands)


def _add_handgen_train(commands: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=run_handgen_train)


def _add_handgen_generate(commands: argparse._SubParsersAction) -> None:
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
        "--size", dest="handgen.size", type=int, help="image side in px, both sides (0: the training size)"
    )
    parser.add_argument("--width", dest="handgen.width", type=int, help="image width in px (0: --size)")
    parser.add_argument("--height", dest="handgen.height", type=int, help="image height in px (0: --size)")
    parser.add_argument(
        "--batch-size", dest="handgen.sample_batch_size", type=int, help="hand sets per batch (4)"
    )
    parser.add_argument("--seed", dest="run.seed", type=int, help="base seed: hand i uses seed + i (0)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu or cuda (auto)")
    parser.set_defaults(func=run_handgen_generate)


def run_handgen_train(args: argparse.Namespace) -> int:
    from handsynth.twostage.data.mix import hands_manifest
    from handsynth.twostage.handgen.trainer import train_handgen

    config = config_from_args(args, defaults=TRAIN_DEFAULTS)
    out = Path(config.run.output_dir)
    hands = args.hands or hands_manifest(config)
    folder = train_handgen(config, hands, out)
    log.info("hand generator -> %s", folder)
    return 0


def run_handgen_generate(args: argparse.Namespace) -> int:
    from handsynth.twostage.handgen.generate import generate_hands
    from handsynth.twostage.handgen.pipeline import default_handgen_dir

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


def add_outpaint_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "outpaint",
        help="the two-stage method's body outpainter (stage 2)",
        description="Train the LoRA of the ControlNet body outpainter (seed 004 §III-C).",
    )
    commands = parser.add_subparsers(dest="outpaint_command", required=True, metavar="SUBCOMMAND")
    train = commands.add_parser(
        "train",
        help="train the outpainter's LoRA on the two-stage dataset",
        description="Train a LoRA on the OpenPose ControlNet to rebuild whole images from canvases that "
        "hold only their hands (images.jsonl of `handsynth pose build`). Writes the LoRA folder and "
        "<output-dir>/train/outpaint/ (loss.jsonl, checkpoints, validation grids). Runs under "
        "`accelerate launch`.",
    )
    add_config_arguments(train)
    train.add_argument(
        "--data-dir", type=Path, help="two-stage dataset with images.jsonl (default pose.output_dir)"
    )
    train.add_argument(
        "--lora-dir",
        dest="outpaint.lora_dir",
        help="output LoRA folder (default <output-dir>/models/outpaint-lora)",
    )
    train.add_argument("--base", dest="outpaint.base", help="SD inpainting (or SD) hub id or folder")
    train.add_argument(
        "--controlnet", dest="outpaint.controlnet", help="OpenPose ControlNet hub id or folder"
    )
    train.add_argument("--lora-rank", dest="outpaint.lora_rank", type=int, help="LoRA rank (8)")
    train.add_argument("--lora-alpha", dest="outpaint.lora_alpha", type=int, help="LoRA alpha (8)")
    train.add_argument("--lr", dest="outpaint.lr", type=float, help="learning rate (1e-4)")
    train.add_argument("--batch-size", dest="outpaint.batch_size", type=int, help="batch per process (16)")
    train.add_argument("--epochs", dest="outpaint.epochs", type=int, help="passes over the images (1)")
    train.add_argument("--max-images", dest="outpaint.max_images", type=int, help="use the first N (0: all)")
    add_training_arguments(train, "<output-dir>/train/outpaint")
    train.set_defaults(func=run_outpaint_train)


def run_outpaint_train(args: argparse.Namespace) -> int:
    from handsynth.twostage.outpaint.trainer import train_outpainter

    config = config_from_args(args)
    folder = train_outpainter(config, args.data_dir)
    log.info("outpainter LoRA -> %s", folder)
    return 0


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
    parser.add_argument("--size", dest="twostage.size", type=int, help="image side in px, both sides (512)")
    parser.add_argument("--width", dest="twostage.width", type=int, help="image width in px (0: --size)")
    parser.add_argument("--height", dest="twostage.height", type=int, help="image height in px (0: --size)")
    parser.add_argument("--max-poses", dest="twostage.max_poses", type=int, help="first N poses (0: all)")
    parser.add_argument("--seed", dest="run.seed", type=int, help="seed of the first image (0)")
    parser.add_argument("--device", dest="run.device", help="auto, cpu or cuda (auto)")


def add_twostage_command(subparsers: argparse._SubParsersAction) -> None:
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
    generate.set_defaults(func=run_twostage_generate)
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
    from handsynth.twostage.generate import default_poses, output_size, read_pose_jobs

    poses = args.pose or default_poses(config)
    return read_pose_jobs(poses, output_size(config), args.prompt, max_poses=config.twostage.max_poses)


def run_twostage_generate(args: argparse.Namespace) -> int:
    from handsynth.twostage.generate import (
        check_generate_settings,
        generate_twostage,
        output_size,
        pose_from_photo,
    )

    config = config_from_args(args)
    check_generate_settings(config)
    if args.pose_image:
        if args.pose:
            log.warning("--pose-image given: --pose %s is not read", args.pose)
        jobs = [pose_from_photo(args.pose_image, output_size(config), args.prompt)]
    else:
        jobs = _jobs(args, config)
    out = args.out or Path(config.run.output_dir) / "twostage" / "samples"
    records = generate_twostage(config, jobs, out)
    log.info("%d images -> %s", len(records), out)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from handsynth.twostage.ablation import markdown, run_blending_ablation
    from handsynth.twostage.data.dataset import default_output_dir
    from handsynth.twostage.generate import check_generate_settings

    config = config_from_args(args)
    check_generate_settings(config)
    out = args.out or Path(config.run.output_dir) / "twostage" / "ablation"
    real = args.real or default_output_dir(config)
    table = run_blending_ablation(config, _jobs(args, config), real, out)
    print(markdown(table))
    return 0


def run_evaluate(args: argparse.Namespace, config: Config) -> int:
    """`handsynth evaluate --method twostage`."""
    from handsynth.evaluation.common import format_value
    from handsynth.twostage.data.dataset import default_output_dir
    from handsynth.twostage.evaluate import evaluate_samples
    from handsynth.twostage.evaluate import headline as twostage_headline

    run = Path(config.run.output_dir)
    out = args.out or run / "twostage" / "eval"
    save_config(config, out / "config.toml")
    generated = args.generated or run / "twostage" / "samples"
    if args.gesture:
        raise HandsynthError("--gesture is for --method hand1000; the two-stage method has no gestures")
    if getattr(args, "evaluate.feature_dim", None):
        raise HandsynthError("--feature-dim is for --method hand1000; set evaluate.twostage_feature_dims")
    wanted = getattr(args, "evaluate.metrics", None)  # --metrics names two-stage metrics here
    report = evaluate_samples(config, generated, args.real or default_output_dir(config), out, wanted)
    headline = twostage_headline(report)
    log.info("two-stage: %s", ", ".join(f"{k}={format_value(v)}" for k, v in headline.items()))
    return 0
