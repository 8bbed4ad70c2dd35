"""The generators under `accelerate launch` with two CPU processes: each makes its share, the folder
ends as a one-process run's, and a stopped two-process run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hands_fixture import write_hands_manifest
from PIL import Image
from test_twostage_pipeline import PROMPT, handgen_path  # noqa: F401 (a fixture)
from twostage_data import toy_pose

from handsynth import files
from handsynth.cli import main

PROMPTS = ["a man making phone call hand gesture", "a woman in a coat making phone call hand gesture"]
PROMPTS += ["a child making phone call hand gesture in a kitchen"]
# accelerate 1.15 starts several CPU processes only through torchrun (`--multi_gpu`); `--device cpu`
# makes them use gloo (as tests/test_train_ddp.py)
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
    "-m", "handsynth",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch(args: list[str], cwd: Path) -> str:
    result = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, env=ENV, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def read_records(folder: Path) -> list[dict]:
    return files.read_jsonl(folder / "records.jsonl")


def assert_same_output(one: Path, two: Path, fields: tuple[str, ...]) -> None:
    """The same records, and every image within 1/255 per pixel."""
    records = read_records(one)
    assert read_records(two) == records and records
    assert not list(two.glob("records.process-*.jsonl"))
    for record in records:
        for field in fields:
            a = np.asarray(Image.open(one / record[field]), dtype=int)
            b = np.asarray(Image.open(two / record[field]), dtype=int)
            assert np.abs(a - b).max() <= 1, f"{record[field]} differs"


@pytest.mark.slow
def test_two_processes_make_a_one_process_runs_images_and_a_stopped_run_resumes(tiny_hand1000_path, tmp_path):
    # 6 images in batches of 4: one process makes [0-3] [4 5]; two make [0 1 2] and [3 4 5]
    args = ["generate", "--model", str(tiny_hand1000_path), "--steps", "2", "--height", "64"]
    args += ["--width", "64", "--images-per-prompt", "2", "--batch-size", "4", "--seed", "3"]
    args += ["--device", "cpu"] + [x for p in PROMPTS for x in ("--prompt", p)]
    assert main([*args, "--samples-dir", str(tmp_path / "one")]) == 0
    log = launch([*args, "--samples-dir", "two"], tmp_path)
    assert "generate call (process 0's share of 2): 100%" in log and "| 3/3 [" in log  # 3 of the 6 each
    one, two = tmp_path / "one" / "call", tmp_path / "two" / "call"
    assert_same_output(one, two, ("file",))
    assert (two / "grid.png").is_file()

    # stopped: process 0 had recorded 0-2 and lost 1's image; process 1 had recorded 3 and 5, 4's
    # image is gone, and its last append is torn
    records = read_records(two)
    files.write_jsonl(two / "records.jsonl", records[:3])
    part = two / "records.process-1.jsonl"
    files.write_text(part, "".join(json.dumps(r) + "\n" for r in records[3:]) + '{"index": 6, "fi')
    for index in (1, 4):
        (two / records[index]["file"]).unlink()
    kept = {r["file"]: (two / r["file"]).stat().st_mtime_ns for r in records if r["index"] not in (1, 4)}
    launch([*args, "--samples-dir", "two"], tmp_path)
    assert_same_output(one, two, ("file",))
    assert all((two / f).stat().st_mtime_ns == t for f, t in kept.items()), "a made image was made again"


@pytest.mark.slow
def test_two_processes_make_a_one_process_runs_hands(handgen_path, tmp_path):  # noqa: F811
    manifest = write_hands_manifest(tmp_path / "hands", n=3, crop=64)
    args = ["handgen", "generate", "--model", str(handgen_path), "--keypoints", str(manifest)]
    args += ["--steps", "2", "--size", "32", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    log = launch([*args, "--out", "two"], tmp_path)
    assert "(process 0's share of 2): 100%" in log and "| 2/2 [" in log
    assert_same_output(tmp_path / "one", tmp_path / "two", ("file", "mask", "mask_binary"))


@pytest.mark.slow
def test_two_processes_make_a_one_process_runs_two_stage_images(
    handgen_path,  # noqa: F811
    tiny_inpaint_path,
    tiny_controlnet_path,
    tmp_path,
):
    size = 64
    rows = [
        {"key": f"p{i}", "width": size, "height": size, "keypoints": toy_pose(size).tolist()} for i in (0, 1)
    ]
    files.write_jsonl(tmp_path / "poses.jsonl", rows)
    args = ["twostage", "generate", "--pose", str(tmp_path / "poses.jsonl"), "--prompt", PROMPT]
    args += ["--handgen", str(handgen_path), "--size", str(size), "--steps", "2", "--device", "cpu"]
    args += [
        "--set",
        f"outpaint.base={tiny_inpaint_path}",
        "--set",
        f"outpaint.controlnet={tiny_controlnet_path}",
    ]
    args += ["--set", "handgen.steps=2", "--set", "outpaint.previews=1", "--output-dir", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    log = launch([*args, "--out", "two"], tmp_path)
    assert "two-stage (process 0's share of 2): 100%" in log and "| 1/1 [" in log
    assert_same_output(tmp_path / "one", tmp_path / "two", ("image",))
