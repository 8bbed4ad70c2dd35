"""Hand1000Pipeline on the tiny model: the folder format, the fused conditioning, pinned pixels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

from handsynth.errors import HandsynthError
from handsynth.hand1000.pipeline import Hand1000Pipeline

PROMPT = "a man in a red shirt making phone call hand gesture"
STEPS = 4  # few steps keep the test fast; the sampler code path is the same as at 45
SIZE = 64  # the tiny model's native size


@pytest.fixture(scope="module")
def pipe(tiny_hand1000_path) -> Hand1000Pipeline:
    pipeline = Hand1000Pipeline.from_pretrained(tiny_hand1000_path, device="cpu")
    pipeline.sd.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipe: Hand1000Pipeline, seed: int, mu: float | None = None) -> np.ndarray:
    out = pipe(
        PROMPT,
        mu=mu,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.images


def test_folder_loads_in_plain_diffusers_ignoring_hand1000(tiny_hand1000_path, tiny_sd_path):
    assert (tiny_hand1000_path / "hand1000" / "fusion.safetensors").is_file()
    plain = StableDiffusionPipeline.from_pretrained(tiny_hand1000_path)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    assert set(plain.components) == set(base.components)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(plain, name).state_dict(), getattr(base, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_loads_the_hand1000_parts(pipe):
    assert pipe.meta["gesture"] == "call" and pipe.default_mu == 0.7
    assert pipe.fusion.kind == "token" and pipe.mean_feature.shape == (63,)
    assert isinstance(pipe.sd.scheduler, DDIMScheduler)
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_fixed_seed_image_is_pinned(pipe):
    image = _generate(pipe, seed=0)
    assert image.shape == (1, SIZE, SIZE, 3)
    expected_slice = np.array(
        [0.530671, 0.640522, 0.425454, 0.364369, 0.369346, 0.463344, 0.492692, 0.339816, 0.411798],
        dtype=np.float32,
    )
    np.testing.assert_allclose(image[0, -3:, -3:, -1].flatten(), expected_slice, atol=1e-4)


def test_same_seed_is_identical_and_different_seeds_differ(pipe):
    a, b, c = _generate(pipe, 7), _generate(pipe, 7), _generate(pipe, 8)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-2


def test_conditioning_matches_an_independent_computation(pipe):
    """d = (1−μ)·fc(e, f) + μ·e from the raw tokenizer, text encoder and fusion weights; uncond = CLIP("")."""
    mu = 0.4
    tok, enc = pipe.sd.tokenizer, pipe.sd.text_encoder

    def clip(text: str) -> torch.Tensor:
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids).last_hidden_state

    e, uncond = clip(PROMPT), clip("")
    w, b = pipe.fusion.fc.weight.detach(), pipe.fusion.fc.bias.detach()
    fused = e @ w[:, :32].T + w[:, 32:] @ pipe.mean_feature + b
    d = (1 - mu) * fused + mu * e

    ours_d, ours_uncond = pipe.encode(PROMPT, mu=mu)
    torch.testing.assert_close(ours_d, d, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours_uncond, uncond)

    expected = pipe.sd(
        prompt_embeds=d,
        negative_prompt_embeds=uncond,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        height=SIZE,
        width=SIZE,
        eta=0.0,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images
    np.testing.assert_allclose(_generate(pipe, 3, mu=mu), expected, atol=1e-5)


def test_mu_one_is_plain_stable_diffusion(pipe):
    plain = pipe.sd(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images
    assert np.array_equal(_generate(pipe, 5, mu=1.0), plain)


def test_long_prompt_warning_names_the_prompt(pipe, caplog):
    long_prompt = "a woman with a green scarf " * 20 + "making phone call hand gesture"
    with caplog.at_level(logging.WARNING, logger="handsynth.hand1000.pipeline"):
        pipe.encode([PROMPT, long_prompt])
    messages = [r.getMessage() for r in caplog.records if r.name == "handsynth.hand1000.pipeline"]
    assert len(messages) == 1
    assert repr(long_prompt) in messages[0] and "longer than CLIP's 77" in messages[0]


def test_non_ddim_scheduler_is_replaced_by_ddim_on_the_same_schedule(pipe):
    pndm = PNDMScheduler.from_config(pipe.sd.scheduler.config)
    sd = StableDiffusionPipeline(**{**pipe.sd.components, "scheduler": pndm})
    wrapped = Hand1000Pipeline(sd, pipe.fusion, pipe.mean_feature, pipe.meta)
    assert isinstance(wrapped.sd.scheduler, DDIMScheduler)
    assert wrapped.sd.scheduler.config.beta_schedule == "scaled_linear"
    assert torch.equal(wrapped.sd.scheduler.alphas_cumprod, pipe.sd.scheduler.alphas_cumprod)


def test_plain_sd_folder_is_refused_with_a_clear_error(tiny_sd_path):
    with pytest.raises(HandsynthError, match="not a Hand1000 model folder.*handsynth train"):
        Hand1000Pipeline.from_pretrained(tiny_sd_path, device="cpu")


def test_flat_fusion_folder_conditions_as_the_reference(tiny_sd_path, tmp_path):
    """The reference's flat fusion: d = (1−μ)·reshape(W·[flatten(e); f] + b) + μ·e."""
    import shutil

    from handsynth.hand1000.fusion import FlatFusion, save_hand1000

    folder = tmp_path / "flat"
    shutil.copytree(tiny_sd_path, folder)
    torch.manual_seed(1)
    fusion = FlatFusion(32).materialize()
    mean = np.linspace(0.0, 1.0, 63, dtype=np.float32)
    save_hand1000(folder, fusion, mean, {"gesture": "call", "mu": 0.7, "train_fusion": False})
    pipe = Hand1000Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.fusion.kind == "flat" and pipe.fusion.is_materialized

    ids = pipe.sd.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        e = pipe.sd.text_encoder(ids).last_hidden_state
    w, b = fusion.fc.weight.detach(), fusion.fc.bias.detach()
    fused = (w @ torch.cat([e.flatten(), torch.from_numpy(mean)]) + b).reshape(1, 77, 32)
    d, _ = pipe.encode(PROMPT)
    torch.testing.assert_close(d, 0.3 * fused + 0.7 * e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_latent_x0_is_never_clipped_whatever_the_base_says(pipe, tiny_sd_clip_sample_path, tmp_path):
    """A base whose scheduler config says clip_sample = true, or does not say it, samples exactly as one
    that says false. (diffusers' StableDiffusionPipeline resets an explicit true when it is built, but a
    DDIM built from a config without the key clipped.)"""
    import shutil

    folder = tmp_path / "clip-sample-base"
    shutil.copytree(tiny_sd_clip_sample_path, folder)
    shutil.copytree(pipe.name + "/hand1000", folder / "hand1000")
    loaded = Hand1000Pipeline.from_pretrained(folder, device="cpu")
    loaded.sd.set_progress_bar_config(disable=True)
    assert loaded.sd.scheduler.config.clip_sample is False
    assert np.array_equal(_generate(loaded, 0), _generate(pipe, 0))
    # and the setting matters here: DDIM that clips x0 draws another image from the same embeddings
    clipping = Hand1000Pipeline(loaded.sd, loaded.fusion, loaded.mean_feature, loaded.meta)
    clipping.sd.scheduler = DDIMScheduler.from_config(loaded.sd.scheduler.config, clip_sample=True)
    assert np.abs(_generate(clipping, 0) - _generate(pipe, 0)).mean() > 1e-2


def test_images_default_to_the_size_the_model_was_trained_at(pipe, tmp_path):
    """The recorded training resolution; without a record the UNet's sample_size x the VAE factor."""
    import json
    import shutil

    assert "resolution" not in pipe.meta
    unrecorded = pipe("a hand", num_inference_steps=1, output_type="np").images
    assert unrecorded.shape == (1, 32 * 2, 32 * 2, 3)
    folder = tmp_path / "trained-at-48"
    shutil.copytree(pipe.name, folder)
    meta_path = folder / "hand1000" / "config.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "resolution": 48}))
    recorded = Hand1000Pipeline.from_pretrained(folder, device="cpu")
    assert recorded.default_size == 48
    assert recorded("a hand", num_inference_steps=1, output_type="np").images.shape == (1, 48, 48, 3)
    assert recorded("a hand", num_inference_steps=1, height=32, output_type="np").images.shape == (
        1,
        32,
        48,
        3,
    )
