"""`handsynth run --config my.toml`: the chain of each method in `run.methods`, one step after another.

Hand1000: dataset -> quality -> features -> train -> generate -> evaluate.
Two-stage: pose data -> hand generator -> outpainter -> generate -> evaluate -> blending ablation.
Then, with compare.baselines, the baselines on each method's prompts, poses and seeds and the papers'
tables (`handsynth compare`), and the report page. Each step reads the files the one before wrote under
the run folder. A finished step leaves a marker in `steps/` with a fingerprint of the config sections it
and the steps before it read; a re-run skips it while those are unchanged (a new [evaluate] setting
re-runs the evaluations, not the training), a generation step run again for a changed config starts
from an empty folder, and a step cut short resumes from the work it had saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handsynth import files
from handsynth.compare import check_compare_settings
from handsynth.config import Config, save_config
from handsynth.data.gestures import check_gesture
from handsynth.errors import HandsynthError

log = logging.getLogger(__name__)


METHODS = ("hand1000", "twostage")


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    func: Callable[[Config, Path], dict]
    sections: tuple[str, ...]  # the config sections it reads, besides run.output_dir, seed and device
    # folders under the run it fills and resumes in: emptied when it runs again for a changed config,
    # so the images of an older model or setting are not taken as finished
    outputs: tuple[str, ...] = ()


def chained(steps: list[Step]) -> list[Step]:
    """The steps of one method, each also fingerprinting the sections the steps before it read: a
    change upstream re-runs everything downstream, a change downstream (evaluate, say) nothing above."""
    read: list[str] = []
    out = []
    for step in steps:
        read += [name for name in step.sections if name not in read]
        out.append(dataclasses.replace(step, sections=tuple(read)))
    return out


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
    from handsynth.hand1000.evaluate import evaluate, headline

    metrics = {}
    for gesture in config.data.gestures:
        report = evaluate(config, out / "dataset", out / "samples", out / "eval" / gesture, gesture)
        metrics[gesture] = headline(report)
    return {"metrics": metrics}


def _pose_data(config: Config, out: Path) -> dict:
    from handsynth.twostage.data.dataset import build_pose_dataset

    report = build_pose_dataset(config)
    return {"counts": report.get("counts")}


def _handgen(config: Config, out: Path) -> dict:
    from handsynth.twostage.data.mix import hands_manifest
    from handsynth.twostage.handgen.trainer import train_handgen

    return {"model": str(train_handgen(config, hands_manifest(config), out))}


def _outpaint(config: Config, out: Path) -> dict:
    from handsynth.twostage.outpaint.trainer import train_outpainter

    return {"lora": str(train_outpainter(config))}


def _twostage_jobs(config: Config) -> list:
    from handsynth.twostage.generate import default_poses, output_size, read_pose_jobs

    return read_pose_jobs(default_poses(config), output_size(config), max_poses=config.twostage.max_poses)


def _twostage_generate(config: Config, out: Path) -> dict:
    from handsynth.twostage.generate import generate_twostage

    return {"images": len(generate_twostage(config, _twostage_jobs(config), out / "twostage" / "samples"))}


def _twostage_evaluate(config: Config, out: Path) -> dict:
    from handsynth.twostage.data.dataset import default_output_dir
    from handsynth.twostage.evaluate import evaluate_samples, headline

    samples, real = out / "twostage" / "samples", default_output_dir(config)
    return {"metrics": headline(evaluate_samples(config, samples, real, out / "twostage" / "eval"))}


def _ablation(config: Config, out: Path) -> dict:
    from handsynth.twostage.ablation import run_blending_ablation
    from handsynth.twostage.data.dataset import default_output_dir

    real = default_output_dir(config)
    made = {config.outpaint.blending: out / "twostage" / "samples"}  # the twostage-generate step's images
    table = run_blending_ablation(
        config, _twostage_jobs(config), real, out / "twostage" / "ablation", made=made
    )
    return {"rows": table["rows"]}


def _baselines(config: Config, out: Path) -> dict:
    from handsynth.compare import generate_baselines

    return {"images": generate_baselines(config)}


def _compare(config: Config, out: Path) -> dict:
    from handsynth.compare import compare_rows

    tables = compare_rows(config)
    return {"file": "compare/table.md", "rows": {m: len(t["rows"]) for m, t in tables.items()}}


def _report(config: Config, out: Path) -> dict:
    from handsynth.report import write_run_report

    page = write_run_report(out, [(step.name, step.title) for step in steps_for(config)])
    return {"file": str(page.relative_to(out))}


HAND1000_STEPS = chained(
    [
        Step("dataset", "dataset: select, prepare, caption, rewrite", _dataset, ("data",)),
        Step("quality", "dataset quality: CLIP similarities", _quality, ("data",)),
        Step("features", "Stage I: mean MediaPipe hand feature", _features, ("features",)),
        Step(
            "train",
            "Stages II+III: embedding optimisation and UNet fine-tuning",
            _train,
            ("model", "train", "generate"),  # validation grids sample with [generate]
        ),
        Step("generate", "generation on the test prompts", _generate, ("generate",), ("samples",)),
        Step(
            "evaluate",
            "evaluation: FID, KID, FID-H, KID-H, HAND-CONF, gesture accuracy",
            _evaluate,
            ("evaluate",),
        ),
    ]
)
TWOSTAGE_STEPS = chained(
    [
        Step("pose-data", "two-stage data: poses, masks, hand crops, captions", _pose_data, ("data", "pose")),
        Step("handgen", "stage 1: the multi-task hand generator", _handgen, ("handgen", "train")),
        Step("outpaint", "stage 2: the ControlNet + LoRA outpainter", _outpaint, ("outpaint", "train")),
        Step(
            "twostage-generate",
            "two-stage generation on the test poses",
            _twostage_generate,
            ("twostage",),
            ("twostage/samples",),
        ),
        Step(
            "twostage-evaluate",
            "two-stage evaluation: DAP, MPJPE, FID/KID (fg), CLIPSIM",
            _twostage_evaluate,
            ("evaluate",),
        ),
        Step("ablation", "blending ablation: sequential, naive, bbox", _ablation, (), ("twostage/ablation",)),
    ]
)


def sections_read(*chains: list[Step], leave_out: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every config section the steps of `chains` read, but those in `leave_out`."""
    read = (name for chain in chains for step in chain for name in step.sections)
    return tuple(name for name in dict.fromkeys(read) if name not in leave_out)


# The comparison reads what both chains read, and run.methods (a method added adds its rows); its
# images do not depend on [evaluate], so a new evaluation setting re-scores them without redrawing.
BASELINES = Step(
    "baselines",
    "baselines on the methods' prompts, poses and seeds",
    _baselines,
    ("run", *sections_read(HAND1000_STEPS, TWOSTAGE_STEPS, leave_out=("evaluate",)), "compare"),
    ("compare/twostage/samples", "compare/hand1000/samples"),
)
COMPARE = Step(
    "compare",
    "the papers' tables: every row scored alike",
    _compare,
    ("run", *sections_read(HAND1000_STEPS, TWOSTAGE_STEPS), "compare"),
)
REPORT = Step("report", "report page", _report, tuple(f.name for f in dataclasses.fields(Config)))


def steps_for(config: Config) -> list[Step]:
    chains = {"hand1000": HAND1000_STEPS, "twostage": TWOSTAGE_STEPS}
    comparing = [BASELINES, COMPARE] if config.compare.baselines else []
    return [step for method in config.run.methods for step in chains[method]] + comparing + [REPORT]


def config_fingerprint(config: Config, sections: tuple[str, ...]) -> str:
    """A hash of the config sections a step reads; `run` counts without `methods` unless named."""
    whole = config.to_dict()
    run = {k: v for k, v in whole["run"].items() if k != "methods" or "run" in sections}
    read = {"run": run, **{name: whole[name] for name in sections}}
    return hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()[:16]


def check_config(config: Config) -> None:
    """What can be checked before any work starts, so a typo does not fail an hour in."""
    check_compare_settings(config)
    unknown = [m for m in config.run.methods if m not in METHODS]
    if unknown or not config.run.methods:
        raise HandsynthError(
            f"run.methods lists methods among {', '.join(METHODS)}; got {config.run.methods}"
        )
    if "hand1000" in config.run.methods:
        if not config.data.gestures:
            raise HandsynthError("data.gestures is empty; name at least one gesture, e.g. --gestures call")
        for gesture in config.data.gestures:
            check_gesture(gesture)
        from handsynth.hand1000.evaluate import check_evaluate_settings
        from handsynth.hand1000.trainer import check_train_settings  # torch and diffusers: imported late

        check_train_settings(config)
        check_evaluate_settings(config)
    if "twostage" in config.run.methods:
        from handsynth.twostage.ablation import check_modes
        from handsynth.twostage.data.dataset import check_pose_settings
        from handsynth.twostage.evaluate import check_twostage_settings
        from handsynth.twostage.handgen.trainer import check_handgen_settings
        from handsynth.twostage.outpaint.blending import check_blend_settings
        from handsynth.twostage.outpaint.trainer import check_outpaint_settings

        check_pose_settings(config)
        check_handgen_settings(config)
        check_outpaint_settings(config)
        outpaint = config.outpaint
        check_blend_settings(outpaint.blending, outpaint.blend_noise, outpaint.unmasked_steps)
        check_modes(list(config.twostage.ablation))
        check_twostage_settings(config, config.evaluate.twostage_metrics)


def run_pipeline(config: Config) -> Path:
    """Run every step not already done for this exact config; return the report page's path."""
    check_config(config)
    out = Path(config.run.output_dir)
    save_config(config, out / "config.toml")
    steps = steps_for(config)
    for number, step in enumerate(steps, 1):
        fingerprint = config_fingerprint(config, step.sections)
        marker = out / "steps" / f"{step.name}.json"
        prefix = f"[{number}/{len(steps)}] {step.title}"
        if marker.is_file():
            if json.loads(marker.read_text()).get("fingerprint") == fingerprint:
                log.info("%s: done in an earlier run, skipped", prefix)
                continue
            for folder in step.outputs:  # made with other settings: not a run to resume
                shutil.rmtree(out / folder, ignore_errors=True)
            marker.unlink()
        log.info("%s ...", prefix)
        start = time.perf_counter()
        summary = step.func(config, out)
        seconds = round(time.perf_counter() - start, 2)
        files.write_json(marker, {"fingerprint": fingerprint, "seconds": seconds, "summary": summary})
        log.info("%s: done in %.1f s", prefix, seconds)
    report = out / "report.html"
    log.info("report: %s", report.resolve())
    return report
