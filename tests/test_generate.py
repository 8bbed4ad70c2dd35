"""`handsynth generate` on the tiny Hand1000 folder: prompts, records, seeds, grid and resume."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from handsynth import files
from handsynth.cli import main
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.hand1000.generate import generate_samples, image_size, read_prompts
from handsynth.hand1000.pipeline import Hand1000Pipeline

PROMPTS = ["a man making phone call hand gesture", "a woman in a blue coat making phone call hand gesture"]


def tiny_config(**generate) -> Config:
    config = Config()
    config.run.seed = 10
    config.run.device = "cpu"
    settings = {"steps": 2, "height": 64, "width": 64, "images_per_prompt": 2, "batch_size": 3, **generate}
    for key, value in settings.items():
        config.set(f"generate.{key}", value)
    return config


@pytest.fixture(scope="module")
def pipe(tiny_hand1000_path) -> Hand1000Pipeline:
    return Hand1000Pipeline.from_pretrained(tiny_hand1000_path, device="cpu")


@pytest.fixture
def counted_calls(monkeypatch):
    """Count Hand1000Pipeline calls; `state["fail_on"] = n` makes the n-th call raise KeyboardInterrupt."""
    state = {"calls": [], "fail_on": 0}
    real = Hand1000Pipeline.__call__

    def counting(self, prompt, **kwargs):
        state["calls"].append(list(prompt))
        if len(state["calls"]) == state["fail_on"]:
            raise KeyboardInterrupt
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(Hand1000Pipeline, "__call__", counting)
    return state


def test_read_prompts_from_text_manifest_and_dataset_folder(tmp_path, caplog):
    text = tmp_path / "prompts.txt"
    text.write_text("first prompt\n\n  second prompt  \n")
    assert read_prompts(text) == (["first prompt", "second prompt"], [None, None])

    dataset = tmp_path / "dataset"
    rows = [
        {"key": "a", "gesture": "call", "caption": "a man making phone call hand gesture"},
        {"key": "b", "gesture": "palm", "caption": "a woman giving an open palm"},
        {"key": "c", "gesture": "call", "caption": None},
        {"key": "d", "gesture": "call", "caption": "a child making phone call hand gesture"},
    ]
    files.write_jsonl(dataset / "test.jsonl", rows)
    expected = (
        ["a man making phone call hand gesture", "a child making phone call hand gesture"],
        ["a", "d"],
    )
    assert read_prompts(dataset, "call") == expected
    assert read_prompts(dataset / "test.jsonl", "call") == expected
    assert "skipped 1 records without a caption" in caplog.text

    with pytest.raises(HandsynthError, match="prompt source not found: .*missing.txt"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(HandsynthError, match="no captioned records for gesture 'ok'"):
        read_prompts(dataset, "ok")


def test_generate_writes_images_records_and_grid(tmp_path, pipe, tiny_hand1000_path, counted_calls):
    config = tiny_config()
    out = tmp_path / "samples" / "call"
    records = generate_samples(config, tiny_hand1000_path, PROMPTS, out, keys=["k1", "k2"], pipe=pipe)

    # 4 images in batches of 3: two pipeline calls, the second mixing the prompts' copies as planned
    assert counted_calls["calls"] == [[PROMPTS[0], PROMPTS[0], PROMPTS[1]], [PROMPTS[1]]]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[3] == {
        "index": 3,
        "file": "images/000003.png",
        "prompt": PROMPTS[1],
        "seed": 13,
        "mu": 0.7,
        "steps": 2,
        "guidance": 3.0,
        "height": 64,
        "width": 64,
        "model": str(tiny_hand1000_path.resolve()),
        "weights": files.folder_stamp(tiny_hand1000_path),
        "key": "k2",
    }
    assert files.read_jsonl(out / "records.jsonl") == records
    for r in records:
        assert Image.open(out / r["file"]).size == (64, 64)
    assert Image.open(out / "grid.png").size == (2 * 64, 2 * 64)  # one row per prompt

    # Image 2 was made in a batch with two others; its recorded seed reproduces it alone.
    alone = pipe(
        records[2]["prompt"],
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(records[2]["seed"]),
        output_type="pil",
    ).images[0]
    diff = np.abs(np.asarray(alone, dtype=int) - np.asarray(Image.open(out / records[2]["file"]), dtype=int))
    assert diff.max() <= 1
    # different seeds give different images
    first = np.asarray(Image.open(out / records[0]["file"]), dtype=int)
    second = np.asarray(Image.open(out / records[1]["file"]), dtype=int)
    assert np.abs(first - second).mean() > 1.0


def test_generate_resumes_without_redoing_images(tmp_path, pipe, tiny_hand1000_path, counted_calls):
    config = tiny_config(batch_size=1)
    out = tmp_path / "call"
    counted_calls["fail_on"] = 3  # killed while making the third image
    with pytest.raises(KeyboardInterrupt):
        generate_samples(config, tiny_hand1000_path, PROMPTS, out, pipe=pipe)
    assert [r["index"] for r in files.read_jsonl(out / "records.jsonl")] == [0, 1]
    kept = {i: (out / f"images/{i:06d}.png").read_bytes() for i in (0, 1)}
    assert not (out / "grid.png").exists()

    counted_calls["calls"].clear()
    counted_calls["fail_on"] = 0
    records = generate_samples(config, tiny_hand1000_path, PROMPTS, out, pipe=pipe)
    assert counted_calls["calls"] == [[PROMPTS[1]], [PROMPTS[1]]]  # only images 2 and 3
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert all((out / f"images/{i:06d}.png").read_bytes() == b for i, b in kept.items())
    assert files.read_jsonl(out / "records.jsonl") == records
    assert (out / "grid.png").is_file()

    counted_calls["calls"].clear()
    assert generate_samples(config, tiny_hand1000_path, PROMPTS, out, pipe=pipe) == records
    assert counted_calls["calls"] == []

    # Other settings in the same folder are refused rather than mixed in.
    with pytest.raises(HandsynthError, match="other settings \\(seed differ\\)"):
        changed = tiny_config(batch_size=1)
        changed.run.seed = 11
        generate_samples(changed, tiny_hand1000_path, PROMPTS, out, pipe=pipe)


def test_a_zero_size_is_the_size_the_model_was_trained_at(tmp_path, tiny_hand1000_path, pipe):
    # no recorded resolution: the UNet's sample size times the VAE's scale, as the pipeline defaults
    assert image_size(tiny_config(height=0, width=0), tiny_hand1000_path) == (pipe.default_size,) * 2
    assert pipe.default_size == 64
    folder = tmp_path / "trained-at-32"
    shutil.copytree(tiny_hand1000_path, folder)
    meta_path = folder / "hand1000" / "config.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "resolution": 32}))
    assert image_size(tiny_config(height=0, width=0), folder) == (32, 32)
    assert image_size(tiny_config(height=0, width=48), folder) == (32, 48)
    config = tiny_config(height=0, width=0, images_per_prompt=1)
    records = generate_samples(config, folder, PROMPTS[:1], tmp_path / "out", progress=False)
    assert (records[0]["height"], records[0]["width"]) == (32, 32)
    assert Image.open(tmp_path / "out" / records[0]["file"]).size == (32, 32)
    # the model saved again (retrained) did not make these images: they are not taken as finished
    unet_weights = next((folder / "unet").glob("*.safetensors"))
    os.utime(unet_weights, ns=(0, unet_weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(HandsynthError, match=r"made with other settings \(weights differ\)"):
        generate_samples(config, folder, PROMPTS[:1], tmp_path / "out", progress=False)


def test_bad_settings_are_clear_errors(tmp_path, tiny_hand1000_path):
    with pytest.raises(HandsynthError, match="generate.mu must be in"):
        generate_samples(tiny_config(mu=1.5), tiny_hand1000_path, PROMPTS, tmp_path)
    with pytest.raises(HandsynthError, match="multiple of 8"):
        generate_samples(tiny_config(height=60), tiny_hand1000_path, PROMPTS, tmp_path)


def test_cli_generate_from_a_prompt(tmp_path, tiny_hand1000_path):
    samples = tmp_path / "samples"
    code = main(
        [
            "generate",
            "--model",
            str(tiny_hand1000_path),
            "--samples-dir",
            str(samples),
            "--prompt",
            PROMPTS[0],
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--mu",
            "0.5",
            "--seed",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = samples / "call"  # the model's gesture
    (record,) = files.read_jsonl(out / "records.jsonl")
    assert (
        record["prompt"] == PROMPTS[0]
        and record["seed"] == 4
        and record["mu"] == 0.5
        and record["steps"] == 2
    )
    assert (out / "images" / "000000.png").is_file() and (out / "grid.png").is_file()
    assert "steps = 2" in (out / "config.toml").read_text()
    assert json.loads((tiny_hand1000_path / "hand1000" / "config.json").read_text())["gesture"] == "call"


def test_cli_default_paths_use_the_test_split_of_the_models_gesture(tmp_path, tiny_hand1000_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "models" / "call").symlink_to(tiny_hand1000_path, target_is_directory=True)
    rows = [
        {"key": "p1", "gesture": "palm", "caption": "a woman giving an open palm with five fingers isolated"},
        {"key": "c1", "gesture": "call", "caption": PROMPTS[1]},
        {"key": "c2", "gesture": "call", "caption": PROMPTS[0]},
    ]
    files.write_jsonl(run / "dataset" / "test.jsonl", rows)
    args = ["generate", "--output-dir", str(run), "--gesture", "call", "--max-prompts", "1"]
    assert main([*args, "--steps", "1", "--height", "64", "--width", "64", "--device", "cpu"]) == 0
    (record,) = files.read_jsonl(run / "samples" / "call" / "records.jsonl")
    assert (record["key"], record["prompt"], record["steps"]) == ("c1", PROMPTS[1], 1)


def test_a_folder_from_handsynth_train_generates(tmp_path, tiny_sd_path):
    """End to end: train_hand1000 writes the folder; plain diffusers and generate_samples both use it."""
    from diffusers import StableDiffusionPipeline

    from handsynth.hand1000.trainer import train_hand1000

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        rel = f"images/train/call/k{i}.jpg"
        (tmp_path / "dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "dataset" / rel)
        rows.append({"key": f"k{i}", "image": rel, "gesture": "call", "caption": f"person {i} {PROMPTS[0]}"})
    files.write_jsonl(tmp_path / "dataset" / "train.jsonl", rows)
    files.write_npy(tmp_path / "mean.npy", rng.uniform(0, 1, 63).astype(np.float32))
    config = tiny_config(steps=2, images_per_prompt=1)
    config.model.base = str(tiny_sd_path)
    config.train.checkpoint_every = 0
    config.train.embedding_steps = config.train.unet_steps = 2
    model = train_hand1000(config, tmp_path / "dataset", tmp_path / "mean.npy", tmp_path, "call")

    trained = StableDiffusionPipeline.from_pretrained(model)
    pipe = Hand1000Pipeline.from_pretrained(model, device="cpu")
    assert pipe.meta["gesture"] == "call" and pipe.meta["train_fusion"] is True
    (record,) = generate_samples(config, model, [PROMPTS[1]], tmp_path / "samples" / "call", pipe=pipe)
    assert record["seed"] == 10 and Image.open(tmp_path / "samples" / "call" / record["file"]).size == (
        64,
        64,
    )
    # mu = 1 is plain Stable Diffusion on the trained weights
    kwargs = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    plain = trained(PROMPTS[1], guidance_scale=3.0, generator=torch.Generator().manual_seed(1), **kwargs)
    ours = pipe(PROMPTS[1], mu=1.0, generator=torch.Generator().manual_seed(1), **kwargs)
    np.testing.assert_allclose(ours.images, plain.images, atol=1e-6)


def test_cli_names_a_missing_model(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a Hand1000 model folder" in capsys.readouterr().err
