"""Hand1000's commands: `handsynth features` (Stage I), `train` (Stages II and III), `generate` and the
Hand1000 side of `handsynth evaluate`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth import files
from handsynth.cli_options import add_config_arguments, add_training_arguments, config_from_args
from handsynth.config import Config, save_config
from handsynth.errors import HandsynthError
from handsynth.evaluation.common import format_value
from handsynth.hand1000.evaluate import evaluate, headline
from handsynth.hand1000.features import compute_gesture_feature
from handsynth.hand1000.fusion import read_hand1000_config
from handsynth.hand1000.generate import generate_samples, read_prompts
from handsynth.hand1000.trainer import SCHEDULES, train_hand1000

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    add_features_command(subparsers)
    add_train_command(subparsers)
    add_generate_command(subparsers)


def add_features_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="Stage I: mean MediaPipe hand-landmark feature per gesture",
        description="Detect the first hand of each training image with MediaPipe Hands and save, per "
        "gesture, the 63-d mean landmark feature (mean.npy), the per-image features (features.npz) and a "
        "report. Results are cached by file content, so a re-run detects nothing it has seen.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--dataset",
        dest="features.dataset",
        help="dataset folder with <split>.jsonl, or a plain folder of images (default <run>/dataset)",
    )
    parser.add_argument("--out", dest="features.output_dir", help="features folder (default <run>/features)")
    parser.add_argument(
        "--gesture",
        dest="data.gestures",
        action="append",
        help="gesture to process (repeatable; default: data.gestures; a plain folder: its name)",
    )
    parser.add_argument("--split", dest="features.split", help="manifest split to read (default train)")
    parser.add_argument(
        "--workers", dest="features.workers", type=int, help="detection processes (default 2)"
    )
    parser.add_argument(
        "--max-num-hands", dest="features.max_num_hands", type=int, help="MediaPipe max_num_hands (default 1)"
    )
    parser.add_argument(
        "--min-detection-confidence",
        dest="features.min_detection_confidence",
        type=float,
        help="MediaPipe min_detection_confidence (default 0.5, as the reference)",
    )
    parser.add_argument(
        "--model-complexity",
        dest="features.model_complexity",
        type=int,
        help="MediaPipe model_complexity, 0 or 1 (default 1)",
    )
    parser.add_argument(
        "--annotation-fallback",
        dest="features.annotation_fallback",
        action="store_const",
        const=True,
        help="when detection fails, use the manifest's 2-D landmarks with z = 0 (counted in the report)",
    )
    parser.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    run_dir = Path(config.run.output_dir)
    source = Path(config.features.dataset or run_dir / "dataset")
    out = Path(config.features.output_dir or run_dir / "features")
    save_config(config, out / "config.toml")
    if (source / f"{config.features.split}.jsonl").is_file():
        gestures = config.data.gestures
    else:  # a plain folder holds one gesture: the one named, or the folder's name
        gestures = config.data.gestures if len(config.data.gestures) == 1 else [None]
    for gesture in gestures:
        compute_gesture_feature(source, out, gesture, config.features)
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Hand1000 Stages II and III: optimise the text embedding, fine-tune the UNet",
        description="Train one Hand1000 model per gesture from the dataset manifest and the Stage I mean "
        "feature. Writes <output-dir>/models/<gesture> (a diffusers folder plus hand1000/) and "
        "<output-dir>/train/<gesture>/ (loss.jsonl, checkpoints, config). Runs under `accelerate launch`.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--dataset-dir", type=Path, help="dataset folder with train.jsonl (default <output-dir>/dataset)"
    )
    parser.add_argument(
        "--features-dir",
        type=Path,
        help="Stage I folder with <gesture>/mean.npy (default <output-dir>/features)",
    )
    parser.add_argument(
        "--gesture", action="append", help="gesture to train (repeatable; default: every data.gestures entry)"
    )
    parser.add_argument(
        "--base", dest="model.base", help="base model hub id or folder (CompVis/stable-diffusion-v1-4)"
    )
    parser.add_argument(
        "--fusion", dest="model.fusion", choices=("token", "flat"), help="fusion kind (token)"
    )
    parser.add_argument(
        "--train-fusion",
        dest="model.train_fusion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let Stage II train the fusion weights (default on; off is the reference's fixed projection)",
    )
    parser.add_argument("--lam", dest="model.lam", type=float, help="λ of the double fusion (0.7)")
    parser.add_argument(
        "--schedule", dest="train.schedule", choices=SCHEDULES, help="reference or batched (batched)"
    )
    parser.add_argument(
        "--embedding-steps", dest="train.embedding_steps", type=int, help="Stage II steps per image (10)"
    )
    parser.add_argument(
        "--embedding-lr", dest="train.embedding_lr", type=float, help="Stage II learning rate (1e-3)"
    )
    parser.add_argument(
        "--unet-steps", dest="train.unet_steps", type=int, help="Stage III steps per image (20)"
    )
    parser.add_argument("--unet-lr", dest="train.unet_lr", type=float, help="Stage III learning rate (1e-6)")
    parser.add_argument(
        "--batch-size", dest="train.batch_size", type=int, help="batched schedule batch size (1)"
    )
    parser.add_argument(
        "--epochs", dest="train.unet_epochs", type=int, help="batched Stage III passes (default --unet-steps)"
    )
    parser.add_argument(
        "--lora-rank", dest="train.lora_rank", type=int, help="train a LoRA of this rank (0: full UNet)"
    )
    parser.add_argument(
        "--max-images", dest="train.max_images", type=int, help="use the first N images (0: all)"
    )
    add_training_arguments(parser, "<output-dir>/train/<gesture>")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = Path(config.run.output_dir)
    dataset_dir = args.dataset_dir or out / "dataset"
    features_dir = args.features_dir or out / "features"
    gestures = args.gesture or config.data.gestures
    for gesture in gestures:
        folder = train_hand1000(config, dataset_dir, features_dir / gesture / "mean.npy", out, gesture)
        log.info("Hand1000 model for '%s' -> %s", gesture, folder)
    return 0


def add_generate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample images from trained Hand1000 models",
        description="Sample a Hand1000 model (d = (1-mu)*fc(e, f) + mu*e, DDIM, classifier-free guidance). "
        "Prompts come from --prompt, a text file (one per line) or the test split's captions. Writes "
        "<samples-dir>/<gesture>/images/*.png, records.jsonl and grid.png; a re-run skips finished images.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="a Hand1000 model folder (default <output-dir>/models/<gesture>)",
    )
    parser.add_argument(
        "--gesture",
        action="append",
        help="gesture whose model to sample (repeatable; default: every data.gestures entry)",
    )
    parser.add_argument(
        "--prompt", action="append", help="a prompt (repeatable); overrides --prompts and the test split"
    )
    parser.add_argument(
        "--prompts",
        dest="generate.prompts",
        metavar="FILE",
        help="a text file (one prompt per line), a manifest .jsonl or a dataset folder "
        "(default <dataset-dir>/test.jsonl, filtered by gesture)",
    )
    parser.add_argument(
        "--dataset-dir",
        type=Path,
        metavar="DIR",
        help="dataset folder with test.jsonl (default <output-dir>/dataset)",
    )
    parser.add_argument(
        "--samples-dir",
        type=Path,
        metavar="DIR",
        help="where <gesture>/ sample folders go (default <output-dir>/samples)",
    )
    parser.add_argument(
        "--max-prompts", metavar="N", dest="generate.max_prompts", type=int, help="first N prompts (0: all)"
    )
    parser.add_argument(
        "--mu", metavar="MU", dest="generate.mu", type=float, help="mu of the double fusion, 0..1 (0.7)"
    )
    parser.add_argument("--steps", metavar="N", dest="generate.steps", type=int, help="DDIM steps (45)")
    parser.add_argument(
        "--guidance", metavar="SCALE", dest="generate.guidance", type=float, help="guidance scale (3.0)"
    )
    parser.add_argument(
        "--height",
        metavar="PX",
        dest="generate.height",
        type=int,
        help="image height in px (0, the default: the resolution the model was trained at)",
    )
    parser.add_argument(
        "--width",
        metavar="PX",
        dest="generate.width",
        type=int,
        help="image width in px (0, the default: the resolution the model was trained at)",
    )
    parser.add_argument(
        "--images-per-prompt",
        metavar="N",
        dest="generate.images_per_prompt",
        type=int,
        help="images per prompt (1)",
    )
    parser.add_argument(
        "--batch-size", metavar="N", dest="generate.batch_size", type=int, help="images per batch (4)"
    )
    parser.add_argument(
        "--seed", metavar="SEED", dest="run.seed", type=int, help="base seed: image i uses seed + i (0)"
    )
    parser.add_argument("--device", metavar="DEVICE", dest="run.device", help="auto, cpu or cuda (auto)")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = Path(config.run.output_dir)
    samples_dir = args.samples_dir or out / "samples"
    if args.model:
        models = [args.model]
    else:
        models = [out / "models" / gesture for gesture in (args.gesture or config.data.gestures)]
    for model in models:
        gesture = read_hand1000_config(model)["gesture"]
        if args.model and args.gesture and args.gesture != [gesture]:
            raise HandsynthError(f"{model} is a model for '{gesture}', not {', '.join(args.gesture)}")
        if args.prompt:
            prompts, keys = list(args.prompt), None
        else:
            source = config.generate.prompts or (args.dataset_dir or out / "dataset")
            prompts, keys = read_prompts(source, gesture)
        if config.generate.max_prompts > 0:
            prompts = prompts[: config.generate.max_prompts]
            keys = keys[: config.generate.max_prompts] if keys else None
        gesture_dir = samples_dir / gesture
        save_config(config, gesture_dir / "config.toml")
        records = generate_samples(config, model, prompts, gesture_dir, keys=keys)
        log.info("%s: %d images in %s", gesture, len(records), gesture_dir)
    return 0


def run_evaluate(args: argparse.Namespace, config: Config) -> int:
    """`handsynth evaluate --method hand1000`: every gesture with samples, and a summary."""
    run = Path(config.run.output_dir)
    real = args.real or run / "dataset"
    generated = args.generated or run / "samples"
    out = args.out or run / "eval"
    gestures: list[str | None]
    if args.gesture == ["none"]:
        gestures = [None]
    elif args.gesture:
        gestures = list(args.gesture)
    else:
        gestures = [g for g in config.data.gestures if (Path(generated) / g).is_dir()] or [None]
    save_config(config, out / "config.toml")
    summary = {}
    for gesture in gestures:
        report = evaluate(config, real, generated, out / gesture if gesture else out, gesture)
        summary[gesture or "all"] = headline(report)
    if len(gestures) > 1:
        files.write_json(out / "summary.json", summary)
    for name, values in summary.items():
        log.info("%s: %s", name, ", ".join(f"{k}={format_value(v)}" for k, v in values.items()))
    return 0
