"""`handsynth handgen train` under `accelerate launch` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hands_fixture import write_hands_manifest
from safetensors.torch import load_file


@pytest.mark.slow
def test_two_process_training_runs_and_the_result_loads(tiny_sd_path, tmp_path):
    from diffusers import UNet2DConditionModel

    manifest = write_hands_manifest(tmp_path / "hands", n=8, crop=64)
    # accelerate 1.15 starts several CPU processes only through torchrun (`--multi_gpu`); `--device cpu`
    # makes them use gloo (as tests/test_train_ddp.py).
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "handsynth", "handgen", "train",
        "--output-dir", str(tmp_path / "run"),
        "--hands", str(manifest),
        "--base", str(tiny_sd_path),
        "--batch-size", "2",
        "--epochs", "1",
        "--checkpoint-every", "1",
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 steps per process on 2 process(es)" in result.stderr

    work = tmp_path / "run" / "train" / "handgen"
    rows = [json.loads(line) for line in (work / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(len(r["keys"]) == 2 for r in rows)
    assert (work / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    # one checkpoint per process of its own state, one shared
    assert sorted(p.name for p in (work / "checkpoints" / "step-00000001").iterdir()) == [
        "rank-0.pt",
        "rank-1.pt",
        "shared.pt",
    ]
    folder = tmp_path / "run" / "models" / "handgen"
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet.config.in_channels == 15 and torch.isfinite(weights["conv_in.weight"]).all()
    settings = json.loads((folder / "handgen.json").read_text())
    assert settings["trained_steps"] == 2 and settings["train"]["mixed_precision"] == "no"
