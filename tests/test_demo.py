"""The main job end to end: `handsynth demo` (both methods) at a small size, its report in a real
browser, resume."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from handsynth import run
from handsynth.cli import main

SMALL = ["--gestures", "call,palm", "--images-per-gesture", "8", "--n-train", "4", "--n-test", "4",
         "--set", "generate.steps=4", "--set", "train.embedding_steps=3", "--set", "train.unet_steps=3",
         "--set", "data.synthetic_size=256", "--set", "features.workers=1",
         "--set", "pose.n_train=3", "--set", "pose.n_test=2", "--set", "pose.workers=1",
         "--set", "handgen.epochs=1", "--set", "handgen.steps=3", "--set", "outpaint.steps=4",
         "--set", "twostage.size=64", "--set", "pose.image_size=64",
         "--set", "pose.crop_size=32"]  # fmt: skip
HAND1000_ONLY = ["--set", 'run.methods=["hand1000"]', "--set", "compare.baselines=[]"]
CHAIN = [*run.HAND1000_STEPS, *run.TWOSTAGE_STEPS, run.BASELINES, run.COMPARE, run.REPORT]


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
    assert steps == sorted(step.name for step in CHAIN)


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
    assert len(skipped) == len(CHAIN)


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
    assert {"compare/twostage/sheet.png", "compare/hand1000/sheet.png"} <= set(sources)
    assert any(src.endswith("/strip.png") for src in sources)  # pose -> hand -> canvas -> blends -> result
    assert all(width > 0 for _, width in images), f"images that did not load: {images}"
    rows = dict(tables)
    assert rows["metrics"] == 3  # header + one row per gesture
    assert rows["twostage-metrics"] == 2  # header + the run's row
    assert rows["ablation"] == 4  # header + sequential, naive, bbox
    assert rows["compare-twostage"] == 5  # header + sd, controlnet, t2i_adapter, twostage
    assert rows["compare-hand1000"] == 7  # header + base, hand1000 and their difference per gesture
    assert {"dataset-counts", "stage1", "steps"} <= set(rows)


def rows_of(out, table):
    return [json.loads(line) for line in (out / table["samples"] / "records.jsonl").open()]


def test_every_row_of_both_tables_comes_from_the_same_prompts_and_seeds(demo_run):
    out = demo_run
    tables = json.loads((out / "compare" / "table.json").read_text())
    twostage = tables["twostage"]["rows"]
    assert [row["row"] for row in twostage] == ["sd", "controlnet", "t2i_adapter", "twostage"]
    method = [json.loads(line) for line in (out / "twostage" / "samples" / "records.jsonl").open()]
    fields = ("key", "prompt", "seed", "width", "height", "steps", "guidance", "keypoints")
    images = {}
    for row in twostage:
        records = rows_of(out, row)
        assert [[r[k] for k in fields] for r in records] == [[r[k] for k in fields] for r in method], row[
            "row"
        ]
        images[row["row"]] = [(out / row["samples"] / r["image"]).read_bytes() for r in records]
    assert len(set(map(tuple, images.values()))) == 4  # four models, four sets of images

    hand1000 = tables["hand1000"]["rows"]
    assert [(row["gesture"], row["row"]) for row in hand1000] == [
        (g, r) for g in ("call", "palm") for r in ("base", "hand1000", "hand1000 − base")
    ]
    fields = ("index", "prompt", "seed", "steps", "guidance", "height", "width")
    for gesture in ("call", "palm"):
        method = [json.loads(line) for line in (out / "samples" / gesture / "records.jsonl").open()]
        for row in (r for r in hand1000 if r["gesture"] == gesture and "samples" in r):
            records = rows_of(out, row)
            assert [[r[k] for k in fields] for r in records] == [[r[k] for k in fields] for r in method]
            assert all((out / row["samples"] / r["file"]).is_file() for r in records)


def test_the_tables_numbers_are_the_rows_evaluation_reports(demo_run):
    from handsynth.hand1000.evaluate import headline as hand1000_headline
    from handsynth.twostage.evaluate import headline as twostage_headline

    out = demo_run
    tables = json.loads((out / "compare" / "table.json").read_text())
    for row in tables["twostage"]["rows"]:
        report = json.loads((out / row["report"]).read_text())
        gestures = json.loads((out / row["report"]).with_name("gesture_accuracy.json").read_text())
        expected = {
            **twostage_headline(report),
            "detection_rate": report["metrics"]["mpjpe"]["detection_rate"],
            "gesture_accuracy": gestures["accuracy"],
        }
        assert row["values"] == {key: expected[key] for key in row["values"]}
        assert report["generated"]["images"] == 4 and gestures["images"] == 4
        assert np.isfinite(row["values"]["dap"])
    assert tables["twostage"]["rows"][3]["paper"]["dap"] == 0.76  # the published values, in their column
    by_row = {}
    for row in tables["hand1000"]["rows"]:
        if "report" in row:
            report = json.loads((out / row["report"]).read_text())
            expected = {
                **hand1000_headline(report),
                "detection_rate": report["metrics"]["hand_conf"]["detection_rate"],
            }
            assert row["values"] == {key: expected[key] for key in row["values"]}
            by_row[row["gesture"], row["row"]] = row["values"]
        else:
            hand, base = by_row[row["gesture"], "hand1000"], by_row[row["gesture"], "base"]
            assert row["values"]["fid"] == pytest.approx(hand["fid"] - base["fid"])
            assert row["paper"]["fid"] == -28.599
    text = (out / "compare" / "table.md").read_text()
    assert "| row | DAP ↑ | DAP ↑ paper |" in text and "| call | base |" in text
    assert "HandRefiner, StablePose and HumanSD" in text


def test_an_interrupted_comparison_resumes_with_the_images_it_had_not_made(demo_run, monkeypatch):
    from handsynth.twostage import baselines

    out = demo_run
    folder = out / "compare" / "twostage" / "samples" / "controlnet"
    records = [json.loads(line) for line in (folder / "records.jsonl").open()]
    last, kept = records[-1], records[:-1]
    image = (folder / last["image"]).read_bytes()
    (folder / last["image"]).unlink()  # as a run killed before its last image
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    others = {p: p.stat().st_mtime_ns for p in (out / "compare").rglob("images/*.png")}
    drawn = []

    def counting(pipe, name, batch):
        drawn.append((name, [r["key"] for r in batch]))
        return draw_batch(pipe, name, batch)

    draw_batch = baselines.draw_batch
    monkeypatch.setattr(baselines, "draw_batch", counting)
    assert main(["compare", "--config", str(out / "config.toml")]) == 0
    assert drawn == [("controlnet", [last["key"]])]
    # its own seed: the image it would have been, but for float rounding in a batch of another size
    again = np.asarray(Image.open(folder / last["image"]), dtype=np.int16)
    before = np.asarray(Image.open(io.BytesIO(image)), dtype=np.int16)
    assert np.abs(again - before).max() <= 1
    assert {p: p.stat().st_mtime_ns for p in others} == others  # nothing else drawn again


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
