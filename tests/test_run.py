"""The run chain's step fingerprints: a change re-runs the step that reads it and every step after."""

from __future__ import annotations

import pytest

from handsynth import run
from handsynth.config import Config
from handsynth.errors import HandsynthError


def changed_steps(key: str, value) -> list[str]:
    config = Config()
    config.run.methods = ["hand1000", "twostage"]
    steps = run.steps_for(config)
    before = {step.name: run.config_fingerprint(config, step.sections) for step in steps}
    config.set(key, value)
    return [step.name for step in steps if run.config_fingerprint(config, step.sections) != before[step.name]]


def test_a_change_reruns_its_step_and_those_after_it_only():
    # a new evaluation setting re-scores the comparison's rows without drawing its baselines again
    assert changed_steps("evaluate.grid_images", 3) == [
        "evaluate", "twostage-evaluate", "ablation", "compare", "report",
    ]  # fmt: skip
    assert changed_steps("generate.guidance", 5.0) == [
        "train", "generate", "evaluate", "baselines", "compare", "report",
    ]  # fmt: skip
    assert changed_steps("outpaint.lr", 1e-3) == [
        "outpaint", "twostage-generate", "twostage-evaluate", "ablation", "baselines", "compare", "report",
    ]  # fmt: skip
    assert changed_steps("twostage.ablation", ["naive"]) == [
        "twostage-generate", "twostage-evaluate", "ablation", "baselines", "compare", "report",
    ]  # fmt: skip
    assert changed_steps("compare.t2i_adapter", "my-adapter") == ["baselines", "compare", "report"]
    assert changed_steps("run.methods", ["twostage"]) == ["baselines", "compare", "report"]
    # a shared section re-runs both chains from their first step that reads it
    assert changed_steps("train.embedding_lr", 2e-3) == [
        "train", "generate", "evaluate", "handgen", "outpaint", "twostage-generate", "twostage-evaluate",
        "ablation", "baselines", "compare", "report",
    ]  # fmt: skip
    everything = [
        step.name
        for step in [*run.HAND1000_STEPS, *run.TWOSTAGE_STEPS, run.BASELINES, run.COMPARE, run.REPORT]
    ]
    assert changed_steps("data.image_size", 256) == everything and len(everything) == 15


def test_without_baselines_there_is_no_comparison_step():
    config = Config()
    config.compare.baselines = []
    assert [step.name for step in run.steps_for(config)][-3:] == ["generate", "evaluate", "report"]


def test_an_unknown_baseline_fails_before_any_step_runs(tmp_path):
    config = Config()
    config.run.output_dir = str(tmp_path / "run")
    config.compare.baselines = ["sd", "handrefiner"]
    with pytest.raises(HandsynthError, match=r"compare.baselines: unknown \['handrefiner'\]"):
        run.run_pipeline(config)
    assert not (tmp_path / "run").exists()


def test_a_step_run_again_for_a_changed_config_starts_from_empty_outputs(tmp_path, monkeypatch):
    seen = []

    def make_samples(config, out):
        seen.append(sorted(p.name for p in (out / "samples").glob("*")))
        (out / "samples").mkdir(exist_ok=True)
        (out / "samples" / f"guidance-{config.generate.guidance}.png").touch()
        return {}

    steps = [
        run.Step("train", "train", lambda config, out: {}, ("train",)),
        run.Step("generate", "generate", make_samples, ("generate",), ("samples",)),
    ]
    monkeypatch.setattr(run, "HAND1000_STEPS", run.chained(steps))
    monkeypatch.setattr(run, "REPORT", run.Step("report", "report", lambda config, out: {}, ()))
    config = Config()
    config.run.output_dir = str(tmp_path)
    config.compare.baselines = []
    run.run_pipeline(config)
    run.run_pipeline(config)  # unchanged: skipped, the samples kept
    config.generate.guidance = 5.0
    run.run_pipeline(config)  # changed: the old samples go before the step runs
    assert seen == [[], []]
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["guidance-5.0.png"]


def test_evaluation_settings_are_checked_before_any_step_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(run, "HAND1000_STEPS", [run.Step("dataset", "d", lambda c, o: ran.append(1), ())])
    for methods, key, value, message in [
        (["hand1000"], "evaluate.kid_subset_size", 1, "kid_subset_size >= 2"),
        (["hand1000"], "evaluate.metrics", ["fid_x"], r"unknown metrics \['fid_x'\]"),
        (["twostage"], "evaluate.twostage_metrics", ["dap", "fid_h"], r"unknown metrics \['fid_h'\]"),
        (["twostage"], "evaluate.dap_area", "box", "dap_area must be one of"),
    ]:
        config = Config()
        config.run.output_dir, config.run.methods = str(tmp_path), methods
        config.set(key, value)
        with pytest.raises(HandsynthError, match=message):
            run.run_pipeline(config)
    assert not ran
