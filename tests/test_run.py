"""The run chain's step fingerprints: a change re-runs the step that reads it and every step after."""

from __future__ import annotations

from handsynth import run
from handsynth.config import Config


def changed_steps(key: str, value) -> list[str]:
    config = Config()
    config.run.methods = ["hand1000", "twostage"]
    steps = run.steps_for(config)
    before = {step.name: run.config_fingerprint(config, step.sections) for step in steps}
    config.set(key, value)
    return [step.name for step in steps if run.config_fingerprint(config, step.sections) != before[step.name]]


def test_a_change_reruns_its_step_and_those_after_it_only():
    assert changed_steps("evaluate.grid_images", 3) == ["evaluate", "twostage-evaluate", "ablation", "report"]
    assert changed_steps("generate.guidance", 5.0) == ["train", "generate", "evaluate", "report"]
    assert changed_steps("outpaint.lr", 1e-3) == [
        "outpaint", "twostage-generate", "twostage-evaluate", "ablation", "report",
    ]  # fmt: skip
    assert changed_steps("twostage.ablation", ["naive"]) == [
        "twostage-generate", "twostage-evaluate", "ablation", "report",
    ]  # fmt: skip
    # a shared section re-runs both chains from their first step that reads it
    assert changed_steps("train.embedding_lr", 2e-3) == [
        "train", "generate", "evaluate", "handgen", "outpaint", "twostage-generate", "twostage-evaluate",
        "ablation", "report",
    ]  # fmt: skip
    everything = [step.name for step in [*run.HAND1000_STEPS, *run.TWOSTAGE_STEPS, run.REPORT]]
    assert changed_steps("data.image_size", 256) == everything and len(everything) == 13
