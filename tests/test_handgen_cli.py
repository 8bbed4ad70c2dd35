"""`handsynth handgen train` and `handsynth handgen generate` end to end on the tiny SD."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hands_fixture import write_hands_manifest
from PIL import Image

from handsynth.cli import main
from handsynth.errors import HandsynthError
from handsynth.twostage.handgen.generate import read_keypoint_jobs
from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline


@pytest.fixture(scope="module")
def hands_manifest(tmp_path_factory) -> Path:
    return write_hands_manifest(tmp_path_factory.mktemp("hands"), n=6, crop=64)


def manifest_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_keypoints_of_a_hands_manifest_are_scaled_from_the_crop_to_the_output(hands_manifest, tmp_path):
    rows = manifest_rows(hands_manifest)
    jobs = read_keypoint_jobs(hands_manifest, 32)
    assert [job["key"] for job in jobs] == [row["key"] for row in rows]
    expected = np.asarray(rows[1]["hands"], np.float32)
    expected[:, :2] *= 0.5  # 64 px crops, 32 px output
    np.testing.assert_allclose(jobs[1]["hands"], expected)
    assert jobs[1]["prompt"] == rows[1]["caption"] and jobs[1]["mask"] is None

    own = tmp_path / "own.jsonl"  # no crop image: keypoints are in output pixels
    own.write_text(json.dumps({"hands": rows[0]["hands"], "prompt": "a hand"}) + "\n")
    np.testing.assert_allclose(read_keypoint_jobs(own, 32)[0]["hands"], rows[0]["hands"])

    masked = read_keypoint_jobs(hands_manifest, 32, prompt="one prompt", with_masks=True)
    assert masked[0]["prompt"] == "one prompt" and masked[0]["mask_input"] == rows[0]["mask"]
    assert masked[0]["mask"].shape == (32, 32) and masked[0]["mask"].max() == 1.0

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "k0", "hands": rows[0]["hands"][:21], "prompt": "p"}) + "\n")
    with pytest.raises(HandsynthError, match=r"bad.jsonl row 1 \(k0\): keypoints must be \(42, 3\)"):
        read_keypoint_jobs(bad, 32)
    np.save(tmp_path / "k.npy", np.zeros((2, 42, 3), np.float32))
    with pytest.raises(HandsynthError, match="give the text with --prompt"):
        read_keypoint_jobs(tmp_path / "k.npy", 32)


def test_a_wide_output_scales_each_axis_and_the_mask(hands_manifest):
    rows = manifest_rows(hands_manifest)
    jobs = read_keypoint_jobs(hands_manifest, (48, 32), with_masks=True)  # (width, height), 64 px crops
    expected = np.asarray(rows[1]["hands"], np.float32)
    expected[:, 0] *= 0.75
    expected[:, 1] *= 0.5
    np.testing.assert_allclose(jobs[1]["hands"], expected)
    assert jobs[1]["mask"].shape == (32, 48)


def test_a_row_without_hands_names_the_field_it_wants(tmp_path):
    poses = tmp_path / "poses.jsonl"
    poses.write_text(json.dumps({"image": "a.jpg", "width": 64, "height": 64, "keypoints": None}) + "\n")
    with pytest.raises(HandsynthError) as caught:
        read_keypoint_jobs(poses, 32)
    assert str(caught.value) == (
        f"{poses} row 1 has no \"hands\": 42 [x, y, v] keypoints, the left hand's 21 then the right's (v 0 "
        "where a hand is absent), as in the hands.jsonl of `handsynth pose build`; it holds whole-body "
        '"keypoints" (a poses.jsonl): give it to `handsynth twostage generate --pose`'
    )


def test_a_bad_middle_line_of_a_hands_file_is_named_not_the_end_of_the_rows(hands_manifest, tmp_path):
    from handsynth.twostage.handgen.data import read_hand_items

    lines = hands_manifest.read_text().splitlines()
    broken = tmp_path / "hands.jsonl"  # before: 1 row read, the 4 after the bad line silently gone
    broken.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    for read in (lambda: read_keypoint_jobs(broken, 32), lambda: read_hand_items(broken, "train")):
        with pytest.raises(HandsynthError, match=r"hands.jsonl line 2 is not valid JSON .*fix or delete"):
            read()


@pytest.mark.slow
def test_train_then_generate_resumably(tiny_sd_path, hands_manifest, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "handgen",
            "train",
            "--output-dir",
            str(run),
            "--hands",
            str(hands_manifest),
            "--base",
            str(tiny_sd_path),
        ]
        + ["--batch-size", "3", "--epochs", "2", "--lr", "1e-4", "--validate-every", "4", "--device", "cpu"]
        + ["--set", "handgen.steps=3"]
    )
    assert code == 0
    folder = run / "models" / "handgen"
    assert {p.name for p in folder.iterdir()} >= {"unet", "mask_head", "vae", "text_encoder", "handgen.json"}
    grid = Image.open(run / "train" / "handgen" / "validation" / "step-00000004.png")
    assert grid.size == (3 * 64, 4 * 64)  # heatmap | hand | mask, for 4 hands
    rows = [json.loads(line) for line in (run / "train" / "handgen" / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all({"ldm", "mask"} <= set(r) for r in rows)
    saved = tomllib.loads((run / "train" / "handgen" / "config.toml").read_text())
    assert saved["train"]["gradient_checkpointing"] is True  # the command's default
    assert isinstance(HandGeneratorPipeline.from_pretrained(folder, device="cpu"), HandGeneratorPipeline)

    generate = ["handgen", "generate", "--output-dir", str(run), "--keypoints", str(hands_manifest)]
    generate += ["--steps", "3", "--batch-size", "4", "--device", "cpu"]
    assert main(generate) == 0
    out = run / "hands"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6)) and records[0]["steps"] == 3
    assert [r["key"] for r in records] == [row["key"] for row in manifest_rows(hands_manifest)]
    for record in records:
        mask = np.asarray(Image.open(out / record["mask"]))
        binary = np.asarray(Image.open(out / record["mask_binary"]))
        assert Image.open(out / record["file"]).size == (64, 64) and mask.shape == binary.shape == (64, 64)
        assert set(np.unique(binary)) <= {0, 255}
        assert np.array_equal(binary == 255, mask > 127.5)
    assert Image.open(out / "grid.png").size == (3 * 64, 6 * 64)

    # a re-run makes nothing; a lost image is remade alone, from its own seed
    made = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in records}
    before = np.asarray(Image.open(out / records[4]["file"])).astype(int)
    (out / records[4]["file"]).unlink()
    assert main(generate) == 0
    assert [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()] == records
    assert all((out / f).stat().st_mtime_ns == t for f, t in made.items() if f != records[4]["file"])
    np.testing.assert_allclose(np.asarray(Image.open(out / records[4]["file"])), before, atol=1)

    capsys.readouterr()
    assert main([*generate, "--steps", "5"]) == 2
    assert "other settings (steps differ)" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_from_an_npy_with_a_prompt(tiny_sd_path, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from handsynth.twostage.handgen.model import build_mask_head, widen_conv_in
    from handsynth.twostage.handgen.pipeline import save_hand_generator

    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet"))
    folder = save_hand_generator(
        tmp_path / "handgen", str(tiny_sd_path), unet, build_mask_head(unet, 2), {"resolution": 64}
    )
    keypoints = np.zeros((2, 42, 3), np.float32)
    keypoints[:, 21:, :2] = np.random.default_rng(0).uniform(8, 56, (2, 21, 2))
    keypoints[:, 21:, 2] = 2
    np.save(tmp_path / "hands.npy", keypoints)
    command = ["handgen", "generate", "--model", str(folder), "--keypoints", str(tmp_path / "hands.npy")]
    command += ["--out", str(tmp_path / "out"), "--steps", "2", "--size", "32", "--device", "cpu"]
    assert main(command) == 2
    assert "give the text with --prompt" in capsys.readouterr().err
    assert main([*command, "--prompt", "a hand"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["width"], r["height"], "key" in r) for r in records] == [
        ("a hand", 32, 32, False)
    ] * 2
    np.testing.assert_allclose(records[1]["hands"], keypoints[1], atol=1e-4)  # .npy: output pixels
    assert Image.open(tmp_path / "out" / records[1]["file"]).size == (32, 32)
    assert (tmp_path / "out" / "config.toml").is_file()
