"""`handsynth run --config my.toml`: the whole Hand1000 chain, one step after another.

dataset -> quality -> features -> train -> generate -> evaluate -> report, each reading the files the
one before wrote under the run folder. A finished step leaves a marker in `steps/`; a re-run with the
same config skips it, and a step cut short resumes from the work it had saved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handsynth import files
from handsynth.config import Config, add_config_arguments, config_from_args, save_config
from handsynth.data.gestures import check_gesture
from handsynth.errors import HandsynthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    func: Callable[[Config, Path], dict]


def _dataset(config: Config, out: Path) -> dict:
    from handsynth.data.dataset import build_dataset

    report = build_dataset(config, out / "dataset")
    return {"manifests": ["dataset/train.jsonl", "dataset/test.jsonl"], "counts": report.get("counts")}


def _quality(config: Config, out: Path) -> dict:
    from handsynth.data.dataset import evaluate_dataset

    results = evaluate_dataset(out / "dataset", config.data.clip_model, device=config.run.device)
    files.write_json(out / "dataset" / "quality.json", results)
    return {"file": "dataset/quality.json"}


def _features(config: Config, out: Path) -> dict:
    from handsynth.hand1000.features import compute_gesture_feature

    coverage = {}
    for gesture in config.data.gestures:
        result = compute_gesture_feature(out / "dataset", out / "features", gesture, config.features)
        coverage[gesture] = result.report["coverage_percent"]
    return {"coverage_percent": coverage}


def _train(config: Config, out: Path) -> dict:
    from handsynth.hand1000.trainer import train_hand1000

    models = {}
    for gesture in config.data.gestures:
        feature = out / "features" / gesture / "mean.npy"
        models[gesture] = str(train_hand1000(config, out / "dataset", feature, out, gesture))
    return {"models": models}


def _generate(config: Config, out: Path) -> dict:
    from handsynth.hand1000.generate import generate_samples, read_prompts

    counts = {}
    for gesture in config.data.gestures:
        source = config.generate.prompts or out / "dataset"
        prompts, keys = read_prompts(source, gesture)
        records = generate_samples(config, out / "models" / gesture, prompts, out / "samples" / gesture, keys)
        counts[gesture] = len(records)
    return {"images": counts}


def _evaluate(config: Config, out: Path) -> dict:
    from handsynth.evaluation.evaluate import evaluate, headline

    metrics = {}
    for gesture in config.data.gestures:
        report = evaluate(config, out / "dataset", out / "samples", out / "eval" / gesture, gesture)
        metrics[gesture] = headline(report)
    return {"metrics": metrics}


def _report(config: Config, out: Path) -> dict:
    from handsynth.evaluation.report import write_run_report

    page = write_run_report(out, [(step.name, step.title) for step in STEPS])
    return {"file": str(page.relative_to(out))}


STEPS = [
    Step("dataset", "dataset: select, prepare, caption, rewrite", _dataset),
    Step("quality", "dataset quality: CLIP similarities", _quality),
    Step("features", "Stage I: mean MediaPipe hand feature", _features),
    Step("train", "Stages II+III: embedding optimisation and UNet fine-tuning", _train),
    Step("generate", "generation on the test prompts", _generate),
    Step("evaluate", "evaluation: FID, KID, FID-H, KID-H, HAND-CONF, gesture accuracy", _evaluate),
    Step("report", "report page", _report),
]


def config_fingerprint(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def check_config(config: Config) -> None:
    """What can be checked before any work starts, so a typo does not fail an hour in."""
    if not config.data.gestures:
        raise HandsynthError("data.gestures is empty; name at least one gesture, e.g. --gestures call")
    for gesture in config.data.gestures:
        check_gesture(gesture)
    from handsynth.hand1000.trainer import check_train_settings  # torch and diffusers: imported late

    check_train_settings(config)


def run_pipeline(config: Config) -> Path:
    """Run every step not already done for this exact config; return the report page's path."""
    check_config(config)
    out = Path(config.run.output_dir)
    save_config(config, out / "config.toml")
    fingerprint = config_fingerprint(config)
    for number, step in enumerate(STEPS, 1):
        marker = out / "steps" / f"{step.name}.json"
        prefix = f"[{number}/{len(STEPS)}] {step.title}"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            log.info("%s: done in an earlier run, skipped", prefix)
            continue
        log.info("%s ...", prefix)
        start = time.perf_counter()
        summary = step.func(config, out)
        seconds = round(time.perf_counter() - start, 2)
        files.write_json(marker, {"fingerprint": fingerprint, "seconds": seconds, "summary": summary})
        log.info("%s: done in %.1f s", prefix, seconds)
    report = out / "report.html"
    log.info("report: %s", report.resolve())
    return report


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole Hand1000 chain from one config (skips finished steps)",
        description="Run dataset, quality, features, train, generate, evaluate and report for every "
        "gesture in the config. Finished steps are skipped; an interrupted step resumes.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.config is None:
        raise HandsynthError(
            "`handsynth run` needs --config: start from configs/hand1000.toml, or try `handsynth demo`"
        )
    run_pipeline(config_from_args(args))
    return 0
