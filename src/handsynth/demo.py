"""`handsynth demo`: the whole Hand1000 chain offline, on tiny models and synthetic gesture data.

It is `handsynth run` with a small config whose model ids point at tiny random-weight models that
the demo writes first: the same code paths and config format as a real run, in minutes on a CPU.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from handsynth.config import Config, add_config_arguments, comma_list, config_from_args

log = logging.getLogger(__name__)

# Small enough for 2 CPU cores in minutes; synthetic images at 256 px so MediaPipe can find hands,
# prepared at 128 px and trained at the tiny model's 64 px.
DEMO_DEFAULTS = {
    "run.output_dir": "runs/demo",
    "data.gestures": ["call", "palm"],
    "data.synthetic_per_gesture": 24,
    "data.synthetic_size": 256,
    "data.n_train": 12,
    "data.n_test": 12,
    "data.image_size": 128,
    "data.captioner": "metadata",
    "data.rewrite": "llm",
    "features.workers": 2,
    "train.schedule": "batched",
    "train.batch_size": 4,
    "train.checkpoint_every": 20,
    "generate.steps": 20,
    "generate.height": 64,
    "generate.width": 64,
    "generate.batch_size": 6,
    "evaluate.kid_subset_size": 12,
}


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on tiny models and a synthetic gesture dataset",
        description="Write tiny random-weight models (SD, CLIP, LLM, Inception) and a synthetic "
        "HaGRID-layout gesture dataset, then run the whole Hand1000 chain on them, as `handsynth run` "
        "does with real models. Finished steps are skipped on a re-run.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--gestures",
        dest="data.gestures",
        type=comma_list,
        help="comma-separated gestures (default call,palm)",
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


def with_tiny_models(config: Config) -> Config:
    """Write the tiny models under the run folder and point the config's model ids at them."""
    from handsynth.tiny.clip import write_tiny_clip
    from handsynth.tiny.inception import write_random_inception
    from handsynth.tiny.llm import write_tiny_llm
    from handsynth.tiny.sd import write_tiny_sd

    folder = Path(config.run.output_dir) / "tiny-models"
    seed = config.run.seed
    config.model.base = str(write_tiny_sd(folder / "sd", seed=seed))
    config.data.rewrite_model = str(write_tiny_llm(folder / "llm", seed=seed))
    clip = str(write_tiny_clip(folder / "clip", seed=seed))
    config.data.clip_model = config.evaluate.clip_model = clip
    config.evaluate.inception_weights = str(write_random_inception(folder / "inception.pth", seed=seed))
    return config


def run_demo(args: argparse.Namespace) -> int:
    from handsynth.run import check_config, run_pipeline

    config = config_from_args(args, defaults=DEMO_DEFAULTS)
    check_config(config)
    log.info("[0] tiny random-weight models -> %s", Path(config.run.output_dir) / "tiny-models")
    run_pipeline(with_tiny_models(config))
    return 0
