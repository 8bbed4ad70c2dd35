"""The main job end to end: `handsynth demo` (both methods) at a small size, its report in a real
browser, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest

from handsynth import run
from handsynth.cli import main

SMALL = ["--gestures", "call,palm", "--images-per-gesture", "8", "--n-train", "4", "--n-test", "4",
         "--set", "generate.steps=4", "--set", "train.embedding_steps=3", "--set", "train.unet_steps=3",
         "--set", "data.synthetic_size=256", "--set", "features.workers=1",
         "--set", "pose.n_train=3", "--set", "pose.n_test=2", "--set", "pose.workers=1",
         "--set", "handgen.epochs=1", "--set", "handgen.steps=3", "--set", "outpaint.steps=4",
         "--set", "twostage.size=64", "--set", "pose.image_size=64",
         "--set", "pose.crop_size=32"]  # fmt: skip
HAND1000_ONLY = ["--set", 'run.methods=["hand1000"]']


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--output-dir", str(out), *SMALL]) == 0
    return out


def test_demo_writes_every_artefact(demo_run):
    out = demo_run
    for path in ["config.toml", "dataset/train.jsonl", "dataset/test.jsonl", "dataset/report.json",
                 "dataset/quality.json", "report.html", "report/loss.png"]:  # fmt: skip
        assert (out / path).is_file(), path
    for gesture in ("call", "palm"):
        assert np.load(out / "features" / gesture / "mean.npy").shape == (63,)
        assert (out / "models" / gesture / "model_index.json").is_file()
        assert (out / "models" / gesture / "hand1000" / "fusion.safetensors").is_file()
        records = [json.loads(line) for line in (out / "samples" / gesture / "records.jsonl").open()]
        assert len(records) == 4 and all((out / "samples" / gesture / r["file"]).is_file() for r in records)
        report = json.loads((out / "eval" / gesture / "report.json").read_text())
        metrics = report["metrics"]
        assert np.isfinite(metrics["fid"]["value"]) and metrics["fid"]["value"] >= 0
        assert {"kid", "hand_conf", "gesture_accuracy"} <= set(metrics)
    steps = sorted(p.stem for p in (out / "steps").glob("*.json"))
    assert steps == sorted(step.name for step in [*run.HAND1000_STEPS, *run.TWOSTAGE_STEPS, run.REPORT])


def test_demo_writes_the_two_stage_chains_artefacts(demo_run):
    out = demo_run
    for path in ["twostage-data/images.jsonl", "twostage-data/hands.jsonl", "twostage-data/report.json",
                 "twostage-data/contact_sheet.png", "models/handgen/mask_head/config.json",
                 "models/outpaint-lora/outpaint.json", "twostage/samples/grid.png",
                 "twostage/eval/report.md", "twostage/eval/samples.png", "twostage/ablation/ablation.md",
                 "twostage/ablation/comparison.png", "report/twostage-loss.png"]:  # fmt: skip
        assert (out / path).is_file(), path
    unet = json.loads((out / "models" / "handgen" / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 15
    tests = [
        r for r in map(json.loads, (out / "twostage-data" / "images.jsonl").open()) if r["split"] == "test"
    ]
    records = [json.loads(line) for line in (out / "twostage" / "samples" / "records.jsonl").open()]
    assert sorted(r["key"] for r in records) == sorted(r["key"] for r in tests) and len(records) == 4
    for record in records:
        folder = out / "twostage" / "samples" / record["intermediates"]
        for name in ("hand-0.png", "hand-0-mask.png", "canvas.png", "canvas-mask.png", "condition.png",
                     "blend-masks.npz", "strip.png"):  # fmt: skip
            assert (folder / name).is_file(), (record["key"], name)
        assert (out / "twostage" / "samples" / record["image"]).is_file()
    report = json.loads((out / "twostage" / "eval" / "report.json").read_text())
    keys = {"dap", "dap_hands", "mpjpe", "mpjpe_hands", "fid", "kid", "fid_fg", "kid_fg", "clipsim"}
    assert set(report["metrics"]) == keys
    assert report["settings"]["feature_dims"][0] == 192 and np.isfinite(report["metrics"]["fid"]["value"])
    ablation = json.loads((out / "twostage" / "ablation" / "ablation.json").read_text())
    rows = ablation["rows"]
    assert [row["blending"] for row in rows] == ["sequential", "naive", "bbox"]
    # the run's own (sequential) generation is reused, not drawn again
    assert [row["samples"] for row in rows] == ["../samples", "naive/samples", "bbox/samples"]
    assert not (out / "twostage" / "ablation" / "sequential" / "samples").exists()
    images = {
        row["blending"]: [
            (out / "twostage" / "ablation" / row["samples"] / "images" / f"{r['key']}.png").read_bytes()
            for r in records
        ]  # fmt: skip
        for row in rows
    }
    # the same poses, other blends
    assert images["sequential"] != images["naive"] and images["naive"] != images["bbox"]


def test_a_second_demo_run_skips_every_step(demo_run, caplog):
    with caplog.at_level(logging.INFO):
        assert main(["demo", "--output-dir", str(demo_run), *SMALL]) == 0
    skipped = [r.getMessage() for r in caplog.records if "done in an earlier run, skipped" in r.getMessage()]
    assert len(skipped) == len(run.HAND1000_STEPS) + len(run.TWOSTAGE_STEPS) + 1


def test_demo_report_loads_in_headless_chromium(demo_run):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium/chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get((demo_run / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images)"
            ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth])"
        )
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table[id]')).map(t => [t.id, t.rows.length])"
        )
    finally:
        driver.quit()
    sources = [src for src, _ in images]
    assert "report/loss.png" in sources
    assert {"eval/call/samples.png", "eval/palm/samples.png", "samples/call/grid.png"} <= set(sources)
    assert {"twostage/samples/grid.png", "twostage/eval/samples.png", "twostage/ablation/comparison.png",
            "report/twostage-loss.png", "twostage-data/contact_sheet.png"} <= set(sources)  # fmt: skip
    assert any(src.endswith("/strip.png") for src in sources)  # pose -> hand -> canvas -> blends -> result
    assert all(width > 0 for _, width in images), f"images that did not load: {images}"
    rows = dict(tables)
    assert rows["metrics"] == 3  # header + one row per gesture
    assert rows["twostage-metrics"] == 2  # header + the run's row
    assert rows["ablation"] == 4  # header + sequential, naive, bbox
    assert {"dataset-counts", "stage1", "steps"} <= set(rows)


def test_interrupted_demo_resumes_without_redoing_steps(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    calls = {name: 0 for name in ("features", "train")}

    def counting(step):
        def wrapped(config, folder):
            calls[step.name] += 1
            return step.func(config, folder)

        return dataclasses.replace(step, func=wrapped)

    def interrupt(config, folder):
        raise KeyboardInterrupt

    steps = [counting(s) if s.name in calls else s for s in run.HAND1000_STEPS]
    killed = [dataclasses.replace(s, func=interrupt) if s.name == "generate" else s for s in steps]
    monkeypatch.setattr(run, "HAND1000_STEPS", killed)
    assert main(["demo", "--output-dir", str(out), *SMALL, *HAND1000_ONLY]) == 130
    assert calls == {"features": 1, "train": 1}
    assert not (out / "steps" / "generate.json").exists()

    monkeypatch.setattr(run, "HAND1000_STEPS", steps)
    with caplog.at_level(logging.INFO):
        assert main(["demo", "--output-dir", str(out), *SMALL, *HAND1000_ONLY]) == 0
    assert calls == {"features": 1, "train": 1}  # not run again
    skipped = [r.getMessage() for r in caplog.records if "done in an earlier run, skipped" in r.getMessage()]
    assert len(skipped) == 4  # dataset, quality, features, train
    assert (out / "report.html").is_file()


def test_a_bad_gesture_fails_before_any_work(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "run"), "--gestures", "call,wave"]) == 2
    assert "unknown gesture 'wave'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
