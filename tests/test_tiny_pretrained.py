"""The pretrained tiny family: `handsynth tiny pretrain` (stages, resume, recipe), the shipped weights
pinned by their manifest, what they have learned, and where the demo and the report use them."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from handsynth.cli import main
from handsynth.errors import HandsynthError
from handsynth.tiny import pretrain as pretrain_module
from handsynth.tiny.pretrained import WEIGHTS, check_pretrained

# sha256 of the shipped manifest.json: a weight file changed together with its manifest line fails here.
MANIFEST_SHA256 = "f4cd46f324e1c0c8070332c1a9dd042451665722bc419320d6fc88e4e1c08541"
SMALL = ["--per-gesture", "1", "--batch-size", "2", "--vae-steps", "4"]


def test_the_shipped_weights_match_their_pinned_manifest():
    assert hashlib.sha256((WEIGHTS / "manifest.json").read_bytes()).hexdigest() == MANIFEST_SHA256
    assert check_pretrained(WEIGHTS) == WEIGHTS
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    folders = ("sd/unet", "sd/vae", "sd-inpainting/unet", "controlnet")
    weights = {f"{folder}/diffusion_pytorch_model.safetensors" for folder in folders}
    assert {*weights, "recipe.json"} <= set(manifest)
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total <= 60e6


def test_a_changed_missing_or_extra_weight_file_fails_the_manifest_check(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    unet = copy / "sd" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    with pytest.raises(HandsynthError, match=r"sd/unet/diffusion_pytorch_model.safetensors: sha256 differs"):
        check_pretrained(copy)
    unet.unlink()
    (copy / "controlnet" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(HandsynthError, match=r"unet/diffusion_pytorch_model.safetensors: missing.*extra"):
        check_pretrained(copy)


@torch.no_grad()
def test_the_pretrained_vae_reconstructs_a_held_out_figure_and_the_random_one_does_not(tiny_sd_path):
    from diffusers import AutoencoderKL
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from handsynth.data.synthetic import render_figure
    from handsynth.tiny.figures import HELD_OUT_DATA_SEED

    image = torch.from_numpy(np.array(render_figure(HELD_OUT_DATA_SEED, "palm", 0, 128).image))
    pixels = image.permute(2, 0, 1)[None].float() / 255

    def psnr(folder) -> float:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        decoded = vae.decode(vae.encode(pixels * 2 - 1).latent_dist.mean).sample
        return float(peak_signal_noise_ratio((decoded / 2 + 0.5).clamp(0, 1), pixels, data_range=1.0))

    assert psnr(WEIGHTS / "sd") == pytest.approx(24.937, abs=0.01)
    assert psnr(tiny_sd_path) == pytest.approx(11.998, abs=0.01)


def test_pretrain_trains_a_stage_skips_it_when_done_and_refuses_another_recipe(tmp_path, caplog):
    out = tmp_path / "pretrained"
    assert main(["tiny", "pretrain", "--out", str(out), "--stages", "vae", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / "work" / "vae" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["mse"] > 0 for r in rows)
    vae_config = json.loads((out / "work" / "vae" / "model" / "config.json").read_text())
    assert vae_config["scaling_factor"] != pytest.approx(0.18215)  # set from the figures' latents
    assert not (out / "sd").exists()  # the diffusers folders wait for every stage
    with caplog.at_level("INFO"):
        assert main(["tiny", "pretrain", "--out", str(out), "--stages", "vae", *SMALL]) == 0
    assert "pretrain vae: done before, skipped" in caplog.text
    assert main(["tiny", "pretrain", "--out", str(out), "--stages", "vae", *SMALL, "--seed", "1"]) == 2


def test_a_stage_needs_the_stages_before_it(tmp_path, capsys):
    assert main(["tiny", "pretrain", "--out", str(tmp_path), "--stages", "unet", *SMALL]) == 2
    assert "pretrain unet needs the vae stage's model" in capsys.readouterr().err


def test_an_interrupted_stage_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, caplog):
    from safetensors.torch import load_file

    from handsynth.training.trainer import Trainer

    monkeypatch.setattr(pretrain_module, "CHECKPOINT_EVERY", 2)
    command = ["tiny", "pretrain", "--stages", "vae", *SMALL]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0

    after_step = Trainer.after_step

    def interrupt_at_step_3(self):
        after_step(self)
        if self.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "after_step", interrupt_at_step_3)
    assert main([*command, "--out", str(tmp_path / "split")]) == 130
    monkeypatch.setattr(Trainer, "after_step", after_step)
    with caplog.at_level("INFO"):
        assert main([*command, "--out", str(tmp_path / "split")]) == 0
    assert "(step 2 of 4)" in caplog.text  # from the checkpoint of step 2, not from scratch

    def weights(run):
        return load_file(tmp_path / run / "work" / "vae" / "model" / "diffusion_pytorch_model.safetensors")

    whole, split = weights("whole"), weights("split")
    assert all(torch.equal(whole[name], split[name]) for name in whole)
    rows = (tmp_path / "split" / "work" / "vae" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def test_the_demo_uses_the_pretrained_models_and_metadata_captions(tmp_path):
    from handsynth.config import Config
    from handsynth.demo import DEMO_DEFAULTS, with_tiny_models

    assert DEMO_DEFAULTS["pose.captioner"] == "metadata"
    config = Config()
    config.run.output_dir = str(tmp_path)
    config.run.methods = ["hand1000", "twostage"]
    config = with_tiny_models(config)
    assert config.model.base == config.handgen.base == str(WEIGHTS / "sd")
    assert config.outpaint.base == str(WEIGHTS / "sd-inpainting")
    assert config.outpaint.controlnet == str(WEIGHTS / "controlnet")
    random = with_tiny_models(Config(), pretrained=False)
    assert random.model.base.endswith("tiny-models/sd")


def test_the_report_shows_the_benchmark_when_present(tmp_path):
    from handsynth.report import _pretrained_section

    assert _pretrained_section(tmp_path / "absent.json") == ""
    row = {"floor": 28.0, "pretrained": 29.5, "random": 11.0, "renders": None, "met": True}
    results = {
        "when": "2026-12-02 17:00 UTC",
        "figures": 30,
        "held_out_seed": 7340002,
        "floors": {"vae_psnr_db": row, "hand_rate": {**row, "floor": 0.3, "pretrained": 0.1, "met": False}},
        "pretrained": {"controlnet": {"detection_rate": 0.9}},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = _pretrained_section(tmp_path / "results.json")
    assert "VAE PSNR at 128 px (dB)" in page and "29.5" in page and "not met" in page
    assert "held-out seed 7340002" in page


@torch.no_grad()
def test_the_pretrained_sd_draws_smooth_figures_where_the_random_one_draws_noise(tiny_sd_path):
    from diffusers import StableDiffusionPipeline

    def roughness(folder) -> float:
        """Mean absolute step between neighbouring pixels in [0, 1]: noise is rough, flat figures not."""
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        prompt = "a man in a blue shirt in a room, making a call gesture with his hand"
        generator = torch.Generator().manual_seed(0)
        out = pipe(prompt, num_inference_steps=10, guidance_scale=3.0, generator=generator, output_type="np")
        image = out.images[0]
        return float(np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean()) / 2

    assert roughness(WEIGHTS / "sd") == pytest.approx(0.0219, abs=0.002)
    assert roughness(tiny_sd_path) == pytest.approx(0.1273, abs=0.002)


def test_the_shipped_recipe_is_the_default_one_and_reads_back():
    from handsynth.tiny.pretrain import Recipe, read_recipe

    shipped = json.loads((WEIGHTS / "recipe.json").read_text())
    assert read_recipe(WEIGHTS / "recipe.json") == Recipe()  # `tiny pretrain --out DIR` trains it again
    assert shipped["command"] == Recipe().command()
    assert shipped["data"]["train_seed"] != shipped["data"]["held_out_seed"]
    assert shipped["seconds"]["total"] == pytest.approx(
        sum(v for k, v in shipped["seconds"].items() if k != "total")
    )


def test_a_bad_recipe_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "recipe.json").write_text('{"recipe": {"steps": {"vae": 1}}}')
    assert (
        main(["tiny", "pretrain", "--out", str(tmp_path / "out"), "--recipe", str(tmp_path / "recipe.json")])
        == 2
    )
    assert "recipe steps must give every stage" in capsys.readouterr().err
