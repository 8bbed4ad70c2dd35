"""Training the hand generator on the tiny SD with synthetic hand crops (tests/hands_fixture.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from hands_fixture import write_hands_manifest
from PIL import Image
from safetensors.torch import load_file

from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.training.diffusion import (
    drop_captions,
    encode_images,
    encode_text,
    load_base_models,
    token_ids,
)
from handsynth.training.trainer import make_accelerator
from handsynth.twostage.data.heatmaps import dequantize
from handsynth.twostage.handgen.data import (
    AUGMENT_P,
    BRIGHTNESS,
    CONTRAST,
    PREFETCH_BATCHES,
    RGB_SHIFT,
    augment,
    batch_loader,
    built_crop_margin,
    drop_masks,
    load_batch,
    read_hand_items,
)
from handsynth.twostage.handgen.model import MaskHead
from handsynth.twostage.handgen.trainer import HandgenTrainer, train_handgen


@pytest.fixture(scope="module")
def hands_manifest(tmp_path_factory) -> Path:
    return write_hands_manifest(tmp_path_factory.mktemp("hands"), n=8, crop=64)


def tiny_config(base: Path, **keys) -> Config:
    config = Config()
    config.run.device = "cpu"
    config.handgen.base = str(base)
    config.handgen.batch_size = 4
    config.train.checkpoint_every = 0
    for key, value in keys.items():
        config.set(key.replace("__", "."), value)
    return config


def make_trainer(config: Config, hands_manifest: Path, work: Path, total: int = 10) -> HandgenTrainer:
    items = read_hand_items(hands_manifest)
    models = load_base_models(config.handgen.base)
    return HandgenTrainer(config, make_accelerator(config, work), models, items, work, {}, total)


def copy_manifest(manifest: Path, folder: Path, edit) -> Path:
    """A copy of the fixture's folder whose rows `edit(rows)` changes."""
    shutil.copytree(manifest.parent, folder)
    rows = [json.loads(line) for line in (folder / "hands.jsonl").read_text().splitlines()]
    edit(rows, folder)
    (folder / "hands.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "hands.jsonl"


# ------------------------------------------------------------------------------------------ data


def test_the_manifest_is_read_and_bad_rows_are_named(hands_manifest, tmp_path):
    items = read_hand_items(hands_manifest)
    assert [i.key for i in items] == [f"hand{i:03d}" for i in range(8)]
    assert items[0].hands.shape == (42, 3) and items[0].caption.startswith("a hand of a ")

    with pytest.raises(HandsynthError, match="no hand-crop manifest.*handsynth pose build"):
        read_hand_items(tmp_path / "none" / "hands.jsonl")
    with pytest.raises(HandsynthError, match="no rows of split 'test'"):
        read_hand_items(hands_manifest, split="test")

    def break_rows(rows, folder):
        (folder / rows[2]["mask"]).unlink()
        del rows[5]["heatmaps"]
        rows[6]["hands"] = rows[6]["hands"][:21]

    broken = copy_manifest(hands_manifest, tmp_path / "broken", break_rows)
    with pytest.raises(HandsynthError) as caught:
        read_hand_items(broken)
    message = str(caught.value)
    assert "3 of 8 'train' rows cannot be used" in message
    assert "hand002: mask " in message and "masks/hand002.png not found" in message
    assert "hand005: no heatmaps" in message
    assert "hand006: hands must be 42 x [x, y, v], got shape (21, 3)" in message


def test_the_crop_margin_is_the_builds_or_else_the_configured_one(hands_manifest, tmp_path):
    assert built_crop_margin(hands_manifest, 0.25) == 0.15  # hands_fixture's settings.json
    own = copy_manifest(hands_manifest, tmp_path / "own", lambda rows, folder: None)
    (own.parent / "settings.json").unlink()
    assert built_crop_margin(own, 0.3) == 0.3
    (own.parent / "settings.json").write_text("{}")
    with pytest.raises(HandsynthError, match="settings.json holds no readable crop_margin"):
        built_crop_margin(own, 0.3)


def test_a_mask_or_heatmaps_of_the_wrong_size_is_named_when_loaded(hands_manifest, tmp_path):
    def small_mask(rows, folder):
        Image.new("L", (32, 32)).save(folder / rows[1]["mask"])
        np.savez_compressed(folder / rows[3]["heatmaps"], heatmaps=np.zeros((10, 32, 32), np.uint8))

    items = read_hand_items(copy_manifest(hands_manifest, tmp_path / "small", small_mask))
    with pytest.raises(HandsynthError, match=r"hand crop hand001: mask .* is 32x32, its image 64x64"):
        load_batch(items[:2], 64, 32)
    with pytest.raises(HandsynthError, match=r"hand crop hand003: heatmaps .* shape \(10, 32, 32\)"):
        load_batch(items[3:4], 64, 32)


def test_a_batch_holds_pixels_mask_targets_and_the_condition(hands_manifest):
    items = read_hand_items(hands_manifest)
    batch = load_batch(items[:2], 64, 32)
    assert batch.pixels.shape == (2, 3, 64, 64) and 0 <= batch.pixels.min() and batch.pixels.max() <= 1
    assert batch.masks.shape == (2, 1, 64, 64) and set(batch.masks.unique().tolist()) == {0.0, 1.0}
    assert batch.conditions.shape == (2, 11, 32, 32)
    with np.load(items[0].heatmaps) as archive:
        maps = dequantize(archive["heatmaps"])
    mask = np.asarray(Image.open(items[0].mask), np.float32) / 255
    expected = [
        np.asarray(Image.fromarray(m).resize((32, 32), Image.Resampling.BILINEAR)) for m in [*maps, mask]
    ]
    np.testing.assert_allclose(batch.conditions[0], np.stack(expected), atol=1e-6)
    # row 0 has its hand in the left slot, row 1 in the right one
    assert batch.conditions[0, :5].max() > 0.5 and batch.conditions[0, 5:10].max() == 0
    assert batch.conditions[1, :5].max() == 0 and batch.conditions[1, 5:10].max() > 0.5


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_yields_the_planned_batches_in_order_from_its_workers(hands_manifest, workers):
    items = read_hand_items(hands_manifest)
    plan = [[3, 1], [0, 7], [5, 2], [6, 4], [1, 1]]
    loader = batch_loader(items, plan, 32, 4, workers)
    assert (loader.num_workers, loader.persistent_workers) == (workers, workers > 0)
    assert loader.prefetch_factor == (PREFETCH_BATCHES if workers else None)
    batches = list(loader)
    assert [b.keys for b in batches] == [[items[i].key for i in index] for index in plan]
    for batch, index in zip(batches, plan, strict=True):
        expected = load_batch([items[i] for i in index], 32, 4)
        assert torch.equal(batch.pixels, expected.pixels) and torch.equal(batch.masks, expected.masks)
        assert torch.equal(batch.conditions, expected.conditions) and batch.captions == expected.captions


def test_augmentation_matches_its_formula_and_draws_7_numbers_per_image():
    pixels = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    out = augment(pixels, g)
    u = torch.rand(3, 7, generator=torch.Generator().manual_seed(5)).numpy().astype(np.float64)
    after = torch.Generator().manual_seed(5)
    torch.rand(3, 7, generator=after)
    assert g.get_state().equal(after.get_state())
    for i in range(3):
        x = pixels[i].numpy().astype(np.float64)
        if u[i, 0] < AUGMENT_P:
            x = x + ((u[i, 1:4] * 2 - 1) * RGB_SHIFT)[:, None, None]
        if u[i, 4] < AUGMENT_P:
            mean = x.mean()
            x = (x - mean) * (1 + (u[i, 6] * 2 - 1) * CONTRAST) + mean + (u[i, 5] * 2 - 1) * BRIGHTNESS
        np.testing.assert_allclose(out[i].numpy(), np.clip(x, 0, 1), atol=1e-6)
    # over many images each change is applied about half the time
    many = augment(torch.full((4000, 3, 1, 1), 0.5), torch.Generator().manual_seed(1))
    changed = (many != 0.5).flatten(1).any(1).float().mean().item()
    assert changed == pytest.approx(0.75, abs=0.03)  # 1 - 0.5 * 0.5


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_the_mask_channel_is_dropped_at_the_configured_rate(p):
    """20,000 draws: the rate's binomial σ is at most sqrt(0.25 / 20000) = 0.0035, so a tolerance of
    0.02 (5.7σ) fails a correct rate with probability below 1e-8 and catches any rate off by 0.02."""
    n = 20_000
    conditions = torch.rand(n, 11, 2, 2, generator=torch.Generator().manual_seed(0)) + 0.1
    out, dropped = drop_masks(conditions, p, torch.Generator().manual_seed(3))
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.02)
    assert torch.equal(out[:, :10], conditions[:, :10])  # the heatmaps are never dropped
    assert (out[dropped, 10] == 0).all()
    assert torch.equal(out[~dropped, 10], conditions[~dropped, 10])


@pytest.mark.parametrize("p", [0.0, 0.1, 1.0])
def test_captions_are_dropped_to_the_empty_prompt_at_the_configured_rate(p):
    """20,000 draws, the tolerance of the mask dropout's test above."""
    captions = [f"a hand {i}" for i in range(20_000)]
    out = drop_captions(captions, p, torch.Generator().manual_seed(3))
    assert np.mean([text == "" for text in out]) == pytest.approx(p, abs=0.02)
    assert all(text in ("", caption) for text, caption in zip(out, captions, strict=True))


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_a_training_step_feeds_the_unet_the_heatmaps_and_the_dropped_mask_and_caption(
    tiny_sd_path, hands_manifest, tmp_path, p
):
    config = tiny_config(tiny_sd_path, handgen__mask_dropout=p, handgen__caption_dropout=p)
    trainer = make_trainer(config, hands_manifest, tmp_path)
    seen, texts = [], []
    trainer.model_plain.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    trainer.text_encoder.register_forward_pre_hook(lambda m, args: texts.append(args[0]))
    batch = load_batch(trainer.items[:4], trainer.resolution, trainer.latent_size)
    trainer.train_step(batch)
    sample = seen[0]
    assert sample.shape == (4, 15, 32, 32)
    assert torch.equal(sample[:, 4:14], batch.conditions[:, :10])
    expected = batch.conditions[:, 10] * (1 - p)
    assert torch.equal(sample[:, 14], expected) and batch.conditions[:, 10].max() > 0.5
    # the text encoder reads the captions, or with p = 1 only the empty prompt guidance samples with
    captions = [""] * 4 if p else batch.captions
    assert torch.equal(texts[0], token_ids(trainer.tokenizer, captions)) and all(batch.captions)


# -------------------------------------------------------------------------------------- training


def fixed_batch_run(config: Config, hands_manifest: Path, work: Path, steps: int = 10):
    """(loss, L_LDM, mask MSE) on the first 4 crops at fixed t and ε, mask-free (the inference case),
    before and after `steps` training steps on them; and whether the mask head's weights stayed."""
    trainer = make_trainer(config, hands_manifest, work)
    batch = load_batch(trainer.items[:4], trainer.resolution, trainer.latent_size)
    g = torch.Generator().manual_seed(1)
    z0 = encode_images(trainer.vae, batch.pixels * 2 - 1, g)
    e = encode_text(trainer.tokenizer, trainer.text_encoder, batch.captions)
    t, noise = torch.tensor([100, 400, 700, 950]), torch.randn(z0.shape, generator=g)
    mask_free = batch.conditions.clone()
    mask_free[:, 10] = 0

    def fixed_losses() -> tuple[float, float, float]:
        with torch.no_grad():
            total, ldm, mask = trainer.losses(z0, e, t, noise, mask_free, batch.masks)
        return total.mean().item(), ldm.mean().item(), mask.mean().item()

    head = trainer.model_plain.mask_head
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    before = fixed_losses()
    for _ in range(steps):
        trainer.train_step(batch)
    return before, fixed_losses(), all(torch.equal(v, initial[k]) for k, v in head.state_dict().items())


@pytest.mark.slow
def test_ten_steps_lower_the_mask_loss_on_a_fixed_batch_and_lambda_0_leaves_the_head(
    tiny_sd_path, hands_manifest, tmp_path
):
    """lr 1e-3: at the paper's 1e-5 the tiny random model moves too little to see in 10 steps."""
    config = tiny_config(tiny_sd_path, handgen__lr=1e-3)
    before, after, head_kept = fixed_batch_run(config, hands_manifest, tmp_path / "multi")
    assert before == pytest.approx((1.133717, 1.121472, 0.244895), abs=1e-5)
    assert after == pytest.approx((0.325976, 0.316850, 0.182535), abs=1e-4)
    assert after[2] < 0.76 * before[2] and not head_kept

    config = tiny_config(tiny_sd_path, handgen__lr=1e-3, handgen__mask_loss_weight=0.0)
    before, after, head_kept = fixed_batch_run(config, hands_manifest, tmp_path / "single")
    assert head_kept  # the single-task ablation: no gradient reaches the mask head
    assert before[0] == pytest.approx(before[1]) and after[0] == pytest.approx(after[1])  # L = L_LDM
    assert after[2] > 0.9 * before[2]


def log_rows(work: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "time"}
        for line in (work / "loss.jsonl").read_text().splitlines()
    ]


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    head = load_file(str(folder / "mask_head" / "diffusion_pytorch_model.safetensors"))
    return {**{f"unet.{k}": v for k, v in unet.items()}, **{f"mask_head.{k}": v for k, v in head.items()}}


@pytest.fixture(scope="module")
def trained(tiny_sd_path, hands_manifest, tmp_path_factory) -> Path:
    """An uninterrupted run: 8 crops, batch 4, 3 epochs = 6 steps."""
    run = tmp_path_factory.mktemp("straight")
    config = tiny_config(tiny_sd_path, handgen__epochs=3, handgen__lr=1e-4, train__num_workers=0)
    train_handgen(config, hands_manifest, run)
    return run


@pytest.mark.slow
def test_stopped_and_resumed_training_ends_bit_identical(trained, tiny_sd_path, hands_manifest, tmp_path):
    # the uninterrupted run loaded its batches in its own process; this one in 2 workers, stopped and resumed
    keys = dict(handgen__epochs=3, handgen__lr=1e-4, train__checkpoint_every=2, train__num_workers=2)
    train_handgen(tiny_config(tiny_sd_path, train__max_steps=3, **keys), hands_manifest, tmp_path)
    assert (tmp_path / "train" / "handgen" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert json.loads((tmp_path / "models" / "handgen" / "handgen.json").read_text())["trained_steps"] == 3
    train_handgen(tiny_config(tiny_sd_path, train__init_from="resume", **keys), hands_manifest, tmp_path)

    a, b = model_weights(trained / "models" / "handgen"), model_weights(tmp_path / "models" / "handgen")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert log_rows(trained / "train" / "handgen") == log_rows(tmp_path / "train" / "handgen")
    rows = log_rows(trained / "train" / "handgen")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] == pytest.approx(r["ldm"] + 0.05 * r["mask"], rel=1e-6) for r in rows)
    assert sorted(sum((r["keys"] for r in rows[:2]), [])) == [f"hand{i:03d}" for i in range(8)]


@pytest.mark.slow
def test_the_saved_folder_loads_in_plain_diffusers(trained):
    folder = trained / "models" / "handgen"
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert unet.config.in_channels == 15 and unet.conv_in.weight.shape[1] == 15
    head = MaskHead.from_pretrained(folder, subfolder="mask_head")
    assert head.config.in_channels == 64 and head.config.num_layers == 2
    weights = model_weights(folder)
    assert torch.equal(unet.conv_in.weight, weights["unet.conv_in.weight"])
    settings = json.loads((folder / "handgen.json").read_text())
    assert settings["resolution"] == 64 and settings["mask_loss_weight"] == 0.05
    assert settings["mask_feature"] == "input of up_blocks.0.upsamplers.0"
    assert settings["trained_steps"] == settings["total_steps"] == 6
    # the margin the crops were cut with (settings.json beside hands.jsonl), not pose.crop_margin's 0.25
    assert settings["crop_margin"] == 0.15
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
