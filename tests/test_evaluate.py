"""`handsynth evaluate` end to end on real HaGRID photos, random-weight Inception and a tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from handsynth import files
from handsynth.cli import main
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics
from handsynth.hand1000 import evaluate
from handsynth.tiny.inception import write_random_inception

REAL = ["call", "four", "like", "mute", "ok", "palm", "hand_heart", "holy"]


@pytest.fixture(scope="module")
def setup(hagrid_mini, tmp_path_factory) -> dict:
    """A dataset folder (test.jsonl, 8 real photos as 'call') and a samples folder (5 mirrored ones)."""
    from handsynth.tiny.clip import write_tiny_clip

    root = tmp_path_factory.mktemp("eval")
    records = []
    for i, gesture in enumerate(REAL):
        src = next((hagrid_mini / "images" / gesture).glob("*.jpg"))
        rel = f"images/test/call/{i:03d}.jpg"
        (root / "dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").save(root / "dataset" / rel)
        records.append({"key": f"k{i}", "image": rel, "gesture": "call", "split": "test", "caption": "x"})
    records.append({"key": "other", "image": "images/test/palm/0.jpg", "gesture": "palm", "split": "test"})
    files.write_jsonl(root / "dataset" / "test.jsonl", records)

    samples = root / "samples" / "call"
    out_records = []
    for i, gesture in enumerate(["call", "like", "ok", "palm", "four"]):
        src = next((hagrid_mini / "images" / gesture).glob("*.jpg"))
        files.save_image(samples / "images" / f"{i:06d}.png", ImageOps.mirror(Image.open(src).convert("RGB")))
        prompt = f"a person making phone call hand gesture, photo {i}"
        out_records.append({"file": f"images/{i:06d}.png", "prompt": prompt, "seed": i})
    files.write_jsonl(samples / "records.jsonl", out_records)
    return {
        "root": root,
        "weights": write_random_inception(root / "weights" / inception.WEIGHTS_NAME, seed=0),
        "clip": write_tiny_clip(root / "clip", seed=0),
    }


def _config(setup: dict, **evaluate_overrides) -> Config:
    config = Config()
    config.run.output_dir = str(setup["root"] / "run")
    config.run.device = "cpu"
    config.evaluate.inception_weights = str(setup["weights"])
    config.evaluate.feature_dim = 64  # the stem only: cheap on CPU
    config.evaluate.kid_subsets = 10
    config.evaluate.kid_subset_size = 4
    config.evaluate.clip_model = str(setup["clip"])
    config.evaluate.grid_images = 4
    for key, value in evaluate_overrides.items():
        config.set(f"evaluate.{key}", value)
    return config


@pytest.mark.slow
def test_evaluate_writes_every_metric_with_counts_and_checks_numbers(setup, monkeypatch):
    root = setup["root"]
    config = _config(setup)
    out = root / "run" / "eval" / "call"
    report = evaluate.evaluate(config, root / "dataset", root / "samples", out, gesture="call")

    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    m = report["metrics"]
    assert set(m) == set(evaluate.ALL_METRICS)
    assert report["real"]["images"] == 8 and report["generated"]["images"] == 5  # 'palm' record filtered
    # FID equals an independent extraction with the same network
    model = inception.load_inception(setup["weights"], feature_dim=64)
    real_paths = evaluate.real_images(root / "dataset", "call")
    fake_paths, prompts = evaluate.generated_images(root / "samples", "call")
    real_f, _ = inception.extract_features(model, real_paths)
    fake_f, _ = inception.extract_features(model, fake_paths)
    assert m["fid"]["value"] == pytest.approx(metrics.fid_from_features(real_f, fake_f), rel=1e-6)
    assert m["kid"]["subset_size"] == 4 and m["kid"]["subsets"] == 10 and m["kid"]["estimator"] == "unbiased"
    # hand crops: every photo has a hand, so one crop per image in reference mode
    assert m["fid_h"]["real_crops"]["crops"] == 8 and m["fid_h"]["generated_crops"]["crops"] == 5
    assert m["fid_h"]["real_crops"]["images_without_hand"] == 0
    assert np.isfinite(m["fid_h"]["value"]) and np.isfinite(m["kid_h"]["mean"])
    # HAND-CONF and gesture accuracy equal the metric functions on the generated images
    assert m["hand_conf"]["hand_conf"] == pytest.approx(metrics.hand_confidence(fake_paths)["hand_conf"])
    accuracy = metrics.gesture_accuracy(fake_paths, "call")
    assert m["gesture_accuracy"]["correct"] == accuracy["correct"]
    assert m["gesture_accuracy"]["confusion"] == accuracy["confusion"]
    assert m["clipsim"]["pairs"] == 5 and 0.0 <= m["clipsim"]["clipsim"] <= 100.0
    assert prompts == [r["prompt"] for r in files.read_jsonl(root / "samples" / "call" / "records.jsonl")]

    page = (out / "report.md").read_text()
    for label in ("FID", "KID", "FID-H", "KID-H", "HAND-CONF", "CLIPSIM", "gesture accuracy", "samples.png"):
        assert label in page
    assert Image.open(out / "samples.png").size == (4 * evaluate.GRID_CELL, 2 * evaluate.GRID_CELL)

    # a second model against the same real set: no real image is read again
    def counting(model, images, *args, **kwargs):
        assert all("dataset" not in str(p) for p in images if isinstance(p, str | Path)), "real set re-read"
        return real_extract(model, images, *args, **kwargs)

    real_extract = inception.extract_features
    monkeypatch.setattr(inception, "extract_features", counting)
    monkeypatch.setattr(metrics, "hand_crops", _no_real_crops(metrics.hand_crops))
    second = root / "samples2" / "call"
    files.write_jsonl(
        second / "records.jsonl", files.read_jsonl(root / "samples" / "call" / "records.jsonl")[:3]
    )
    for i in range(3):
        name = f"images/{i:06d}.png"
        files.save_image(second / name, Image.open(root / "samples" / "call" / name).rotate(90))
    config.evaluate.metrics = ["fid", "kid", "fid_h", "kid_h"]
    again = evaluate.evaluate(config, root / "dataset", root / "samples2", root / "run" / "eval2", "call")
    assert again["generated"]["images"] == 3 and again["metrics"]["fid"]["real"] == 8


def _no_real_crops(original):
    def wrapped(paths, *args, **kwargs):
        assert all("dataset" not in str(p) for p in paths), "real hand crops recomputed"
        return original(paths, *args, **kwargs)

    return wrapped


def test_reference_kid_and_per_hand_crops_are_reported(setup):
    root = setup["root"]
    config = _config(setup, kid_estimator="reference", hand_crop="per-hand", metrics=["kid", "kid_h"])
    report = evaluate.evaluate(config, root / "dataset", root / "samples", root / "run" / "ref", "call")
    assert report["metrics"]["kid"]["estimator"] == "reference"
    crops = report["metrics"]["kid_h"]["real_crops"]
    assert crops["settings"]["mode"] == "per-hand" and crops["settings"]["margin"] == 0.25
    assert crops["crops"] > crops["images"] - crops["images_without_hand"]  # two-hand photos: 2 crops
    assert set(report["metrics"]) == {"kid", "kid_h"}

    one = root / "one"  # a single generated image: FID cannot be computed, and the report says why
    files.save_image(one / "0.png", Image.open(next((root / "samples" / "call" / "images").iterdir())))
    config.evaluate.metrics = ["fid"]
    report = evaluate.evaluate(config, root / "dataset", one, root / "run" / "one", "call")
    assert "needs 2+ feature vectors" in report["metrics"]["fid"]["skipped"]


def test_cli_errors_and_folder_inputs(setup, tmp_path, monkeypatch, capsys):
    root = setup["root"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    args = ["evaluate", "--output-dir", str(tmp_path / "run"), "--real", str(root / "dataset")]
    args += ["--generated", str(root / "samples"), "--gesture", "call", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "FID Inception weights were not found" in err and "pytorch-fid/releases" in err

    assert main([*args, "--metrics", "hand_conf,bogus"]) == 2
    assert "unknown metrics ['bogus']" in capsys.readouterr().err
    assert main([*args, "--set", "evaluate.kid_estimator=biased"]) == 2
    assert "evaluate.kid_estimator must be one of" in capsys.readouterr().err

    # plain folders, no gesture: no prompts (CLIPSIM skipped), no target (accuracy skipped)
    plain = [*args[:3], "--real", str(root / "dataset" / "images"), "--generated"]
    plain += [
        str(root / "samples" / "call" / "images"),
        "--gesture",
        "none",
        "--metrics",
        "clipsim,gesture_accuracy",
    ]
    assert main(plain) == 0
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert "skipped" in report["metrics"]["clipsim"] and "skipped" in report["metrics"]["gesture_accuracy"]
    assert (tmp_path / "run" / "eval" / "config.toml").is_file()


def test_input_folders_resolve(setup):
    root = setup["root"]
    paths, prompts = evaluate.generated_images(root / "samples")  # samples root: every gesture folder
    assert len(paths) == len(prompts) == 5 and all(p.suffix == ".png" for p in paths)
    records = files.read_jsonl(root / "samples" / "call" / "records.jsonl")
    lost = root / "lost" / "call"
    files.write_jsonl(lost / "records.jsonl", [*records[:1], {"file": "images/gone.png", "prompt": "x"}])
    files.save_image(lost / records[0]["file"], Image.new("RGB", (8, 8)))
    assert evaluate.generated_images(root / "lost", "call") == (
        [lost / records[0]["file"]],
        [records[0]["prompt"]],
    )
    plain, none = evaluate.generated_images(root / "samples" / "call" / "images")
    assert len(plain) == 5 and none is None
    assert len(evaluate.real_images(root / "dataset")) == 9  # no gesture: the whole manifest
    assert len(evaluate.real_images(root / "dataset" / "images")) == 8  # a folder: what is on disk
    with pytest.raises(HandsynthError, match="no real images for gesture 'ok'"):
        evaluate.real_images(root / "dataset", "ok")


def test_a_named_gesture_uses_only_its_own_samples(setup, tmp_path, capsys):
    """`--gesture ok` on a samples folder that holds only `call/` stops; it never scores call's images."""
    root = setup["root"]
    with pytest.raises(HandsynthError, match=r"gesture .ok. .*of: call\..*generate --gesture ok"):
        evaluate.generated_images(root / "samples", "ok")
    plain = tmp_path / "plain"  # per-gesture image folders without records: the same rule
    files.save_image(plain / "call" / "0.png", Image.new("RGB", (8, 8)))
    with pytest.raises(HandsynthError, match="no samples of gesture 'ok'"):
        evaluate.generated_images(plain, "ok")
    assert evaluate.generated_images(plain, "call") == ([plain / "call" / "0.png"], None)

    args = ["evaluate", "--output-dir", str(tmp_path / "run"), "--real", str(root / "dataset" / "images")]
    args += ["--generated", str(root / "samples"), "--gesture", "ok", "--metrics", "hand_conf"]
    assert main(args) == 2
    assert "no samples of gesture 'ok'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "eval" / "ok").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fid", "torchvision"])
def test_the_input_normalisation_follows_the_network_whatever_the_preprocessing(setup, tmp_path, variant):
    """Each network gets the input it was trained on: 2x−1 for the TF-FID one, ImageNet normalisation
    then transform_input (also 2x−1) for torchvision's; `preprocess` only chooses the resizing."""
    import torch

    from handsynth.files import load_rgb

    root = setup["root"]
    weights = write_random_inception(tmp_path / f"{variant}.pth", seed=3, variant=variant)
    network = inception.load_inception(weights, feature_dim=64)
    network.normalize = lambda x: x  # fed by hand below

    def features(paths, preprocess):
        rgb = np.stack([inception.preprocess_image(load_rgb(p), preprocess) for p in paths])
        x = torch.from_numpy(rgb).permute(0, 3, 1, 2) / 127.5 - 1.0
        with torch.no_grad():
            return network(x).numpy()

    real = evaluate.real_images(root / "dataset", "call")
    fake, _ = evaluate.generated_images(root / "samples", "call")
    for preprocess in inception.PREPROCESS_MODES:
        config = _config(setup, preprocess=preprocess, metrics=["fid"], cache_dir=str(tmp_path / "cache"))
        config.evaluate.inception_weights = str(weights)
        report = evaluate.evaluate(config, root / "dataset", root / "samples", tmp_path / preprocess, "call")
        expected = metrics.fid_from_features(features(real, preprocess), features(fake, preprocess))
        assert report["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-4)
        assert report["settings"]["input_norm"] == {"fid": "fid", "torchvision": "imagenet"}[variant]


def test_a_skipped_metric_reads_not_computed_with_its_reason_in_report_md():
    reason = "needs 2+ feature vectors per set, got 1 real, 1 generated"
    report = {
        "gesture": "call",
        "real": {"images": 1, "source": "test.jsonl"},
        "generated": {"images": 1, "source": "samples"},
        "settings": {},
        "metrics": {
            "fid": {"skipped": reason},
            "kid": {"skipped": reason},
            "clipsim": {"skipped": "generated folder has no records.jsonl with prompts"},
            "gesture_accuracy": {"skipped": "no target gesture (pass --gesture)"},
        },
    }
    text = evaluate._markdown(report)
    assert "None" not in text
    assert f"| FID | not computed | {reason} |" in text and f"| KID | not computed | {reason} |" in text
    assert "| CLIPSIM | not computed | generated folder has no records.jsonl with prompts |" in text
    assert "| gesture accuracy | not computed | no target gesture (pass --gesture) |" in text
