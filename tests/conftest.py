"""Shared fixtures: tiny models built once per session, and the real photos in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    """One torch thread for the whole suite: tiny models run faster on one, and pinned values then
    come from the same reduction order on every machine."""
    import torch

    torch.set_num_threads(1)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER_GESTURES = ["call", "four", "like", "mute", "ok", "palm"]


@pytest.fixture(scope="session")
def hagrid_mini() -> Path:
    """The 33 real HaGRID v2 photos. Missing folder: a skip on a laptop, a failure under CI."""
    path = SHARED_DATA / "hagrid-mini"
    if not (path / "annotations").is_dir():
        message = f"real test photos not found at {path} (../shared/data beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    """A tiny Stable-Diffusion folder (64 px), written once for the whole session."""
    from handsynth.tiny.sd import write_tiny_sd

    return write_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session", params=["DDIM-true", "PNDM-true", "PNDM-silent"])
def tiny_sd_clip_sample_path(request, tiny_sd_path, tmp_path_factory) -> Path:
    """The tiny SD with a scheduler config that says `clip_sample = true`, under a DDIM or (as SD v1.4
    ships it) a PNDM class, or a PNDM config that does not say it, which DDIM's default makes true."""
    import json
    import shutil

    kind, clip_sample = request.param.split("-")
    folder = tmp_path_factory.mktemp("models") / f"tiny-sd-clip-sample-{request.param}"
    shutil.copytree(tiny_sd_path, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = {**json.loads(config_path.read_text()), "_class_name": f"{kind}Scheduler", "clip_sample": True}
    if clip_sample == "silent":
        del config["clip_sample"]
    config_path.write_text(json.dumps(config))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", f"{kind}Scheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="session")
def tiny_hand1000_path(tiny_sd_path, tmp_path_factory) -> Path:
    """A Hand1000 folder before training: the tiny SD + a random token fusion and mean feature."""
    import shutil

    import numpy as np
    import torch

    from handsynth.hand1000.fusion import TokenFusion, save_hand1000
    from handsynth.tiny.sd import TEXT_DIM

    folder = tmp_path_factory.mktemp("models") / "tiny-hand1000"
    shutil.copytree(tiny_sd_path, folder)
    torch.manual_seed(0)
    mean = np.random.default_rng(0).uniform(0.0, 1.0, 63).astype(np.float32)
    meta = {"gesture": "call", "phrase": "making phone call hand gesture", "lam": 0.7, "mu": 0.7}
    save_hand1000(folder, TokenFusion(TEXT_DIM), mean, {**meta, "base_model": str(tiny_sd_path)})
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_path(tmp_path_factory) -> Path:
    """A tiny SD-1.5-inpainting-shaped folder (9-channel UNet, 64 px), written once for the session."""
    from handsynth.tiny.sd import write_tiny_sd_inpainting

    return write_tiny_sd_inpainting(tmp_path_factory.mktemp("models") / "tiny-sd-inpainting", seed=0)


@pytest.fixture(scope="session")
def tiny_controlnet_path(tmp_path_factory) -> Path:
    """A tiny OpenPose-style ControlNet folder for the tiny SD, written once for the session."""
    from handsynth.tiny.controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet", seed=0)
