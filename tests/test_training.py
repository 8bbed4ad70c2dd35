"""Hand1000 Stages II and III on the tiny model, with real photos resized to 64 px."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from handsynth.cli import main as cli_main
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.hand1000 import trainer as hand1000_trainer
from handsynth.hand1000.trainer import (
    SCHEDULES,
    Hand1000Trainer,
    read_mean_feature,
    read_train_items,
    train_hand1000,
)
from handsynth.run import check_config
from handsynth.training import diffusion
from handsynth.training import trainer as machinery
from handsynth.training.trainer import NonFiniteLoss

GESTURE = "call"


def write_tiny_dataset(folder: Path, photos: list[Path], size: int = 64) -> Path:
    """`<folder>/train.jsonl` and images/train/call/*.jpg from real photos, laid out as `data build` does."""
    rows = []
    for i, photo in enumerate(photos):
        key = f"img{i}"
        rel = f"images/train/{GESTURE}/{key}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(
            folder / rel, quality=95
        )
        rows.append(
            {
                "key": key,
                "image": rel,
                "gesture": GESTURE,
                "split": "train",
                "caption_raw": f"a person number {i}",
                "caption": f"a person number {i} making phone call hand gesture",
            }
        )
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, hagrid_mini) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-data")
    photos = sorted((hagrid_mini / "images").glob("*/*.jpg"))[:3]
    dataset = write_tiny_dataset(root / "dataset", photos)
    feature = root / "features" / GESTURE / "mean.npy"
    feature.parent.mkdir(parents=True)
    np.save(feature, np.random.default_rng(0).uniform(0, 1, 63).astype(np.float32))
    return dataset, feature


def tiny_config(base: Path, **train) -> Config:
    config = Config()
    config.model.base = str(base)
    config.run.device = "cpu"
    config.train.checkpoint_every = 0
    for key, value in train.items():
        section, _, name = key.rpartition("__")
        config.set(f"{section or 'train'}.{name}", value)
    return config


def first_image_trainer(config: Config, tiny_data, work: Path, total_steps: int) -> Hand1000Trainer:
    """A Trainer on CPU (reference schedule), its unit begun on the first training image."""
    from accelerate import Accelerator

    dataset, feature = tiny_data
    trainer = Hand1000Trainer(
        config,
        Accelerator(cpu=True),
        diffusion.load_base_models(config.model.base),
        read_mean_feature(feature),
        work,
        {"gesture": GESTURE, "schedule": "reference"},
        total_steps=total_steps,
        validation_captions=[],
    )
    trainer.begin_unit(read_train_items(dataset, GESTURE)[:1], fresh=True, reset_unet_optimizer=True)
    return trainer


def unet_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def test_diffusion_loss_matches_the_closed_form(tiny_sd_path):
    """z_t = sqrt(ᾱ_t)·z0 + sqrt(1−ᾱ_t)·ε with SD v1.4's scaled-linear betas, computed here by hand."""
    models = diffusion.load_base_models(str(tiny_sd_path))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 32, 32, generator=g)
    d = torch.randn(2, 77, 32, generator=g)
    t, eps = diffusion.draw_timesteps_and_noise(g, z0, 1000)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    zt = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    with torch.no_grad():
        expected = ((models.unet(zt, t, encoder_hidden_states=d).sample - eps) ** 2).mean(dim=(1, 2, 3))
        got = diffusion.diffusion_loss(models.unet, models.noise_scheduler, z0, d, t, eps)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_stage2_then_stage3_lower_the_loss_on_fixed_pairs(tiny_sd_path, tiny_data, tmp_path):
    """50 Adam steps on d (UNet frozen) lower the loss on fixed (t, ε) pairs; UNet steps lower it further.

    The tiny random UNet barely listens to its text input: at the paper's lr 1e-3, 50 steps move the loss
    by 3e-4, so the test uses 0.1 (and 1e-4 for the UNet) to make both effects measurable.
    """
    config = tiny_config(tiny_sd_path, embedding_lr=0.1, unet_lr=1e-4, model__train_fusion=False)
    trainer = first_image_trainer(config, tiny_data, tmp_path, total_steps=70)
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.tensor([t]), torch.randn(1, 4, 32, 32, generator=g)) for t in (100, 400, 700, 950)]
    z0 = trainer.latents

    @torch.no_grad()
    def pair_loss(d: torch.Tensor) -> float:
        losses = [
            diffusion.diffusion_loss(trainer.unet_plain, trainer.noise_scheduler, z0, d, t, e)
            for t, e in pairs
        ]
        return torch.cat(losses).mean().item()

    d0 = trainer.frozen_embeddings()
    before = pair_loss(d0)
    unet_before = {k: v.clone() for k, v in trainer.trainable.items()}
    trainer.embedding_step(*pairs[0])
    # Adam's first step moves every coordinate with a gradient by lr (to within its eps).
    moved = (trainer.frozen_embeddings() - d0).abs()
    assert moved.max().item() == pytest.approx(0.1, rel=1e-3)
    assert (moved > 0.05).float().mean().item() > 0.99
    for s in range(1, 50):
        trainer.embedding_step(*pairs[s % len(pairs)])
    assert all(torch.equal(unet_before[k], p) for k, p in trainer.trainable.items()), (
        "Stage II moved the UNet"
    )
    d = trainer.frozen_embeddings()
    after_stage2 = pair_loss(d)
    for s in range(20):
        trainer.unet_step(z0, d, *pairs[s % len(pairs)], trainer.keys)
    assert torch.equal(trainer.frozen_embeddings(), d), "Stage III moved d"
    after_stage3 = pair_loss(d)
    print(f"pair loss: {before:.5f} -> {after_stage2:.5f} (Stage II) -> {after_stage3:.5f} (Stage III)")
    assert after_stage2 < before - 0.01
    assert after_stage3 < after_stage2 - 0.01
    assert [before, after_stage2, after_stage3] == pytest.approx([1.1127, 1.0907, 0.6522], abs=2e-3)


def test_adam8bit_keeps_8_bit_state_and_trains(tiny_sd_path, tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_sd_path, optimizer="adam8bit", unet_lr=1e-4)
    trainer = first_image_trainer(config, tiny_data, tmp_path, total_steps=1)
    g = torch.Generator().manual_seed(1)
    t, noise = torch.tensor([500]), torch.randn(1, 4, 32, 32, generator=g)
    before = {k: v.clone() for k, v in trainer.trainable.items()}
    trainer.unet_step(trainer.latents, trainer.frozen_embeddings(), t, noise, trainer.keys)
    optimizer = trainer.unet_optimizer.optimizer  # accelerate's wrapper around it
    assert type(optimizer).__name__ == "Adam8bit"
    big = [p for p in trainer.trainable.values() if p.numel() >= 4096]
    assert big and all(optimizer.state[p]["state1"].dtype == torch.uint8 for p in big)
    assert all(not torch.equal(before[k], p) for k, p in trainer.trainable.items() if p.numel() >= 4096)

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(HandsynthError, match='optimizer = "adam8bit" needs bitsandbytes'):
        machinery.make_optimizer(big, config.train.unet_lr, config.train.optimizer)


def test_losses_and_validation_grids_go_to_tensorboard(tiny_sd_path, tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset, feature = tiny_data
    config = tiny_config(
        tiny_sd_path, embedding_steps=2, unet_steps=2, max_images=1, validate_every=2, generate__steps=2
    )
    train_hand1000(config, dataset, feature, tmp_path, GESTURE)
    work = tmp_path / "train" / GESTURE
    (events,) = (work / "hand1000").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events), size_guidance={"images": 0})
    board.Reload()
    logged = [json.loads(line) for line in (work / "loss.jsonl").read_text().splitlines()]
    for stage in ("embedding", "unet"):
        scalars = [(e.step, e.value) for e in board.Scalars(f"loss/{stage}")]
        expected = [(r["step"], r["loss"]) for r in logged if r["stage"] == stage]
        assert [s for s, _ in scalars] == [s for s, _ in expected] and len(expected) == 2
        assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [e.step for e in board.Images("validation")] == [2, 4]
    assert sorted(p.name for p in (work / "validation").glob("*.png")) == [
        "step-00000002.png",
        "step-00000004.png",
    ]


def test_reference_schedule_takes_10_plus_20_steps_per_image(tiny_sd_path, tiny_data, tmp_path):
    dataset, feature = tiny_data
    steps: list[tuple[str, float, int]] = []

    def count(optimizer, args, kwargs):
        shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
        first = optimizer.param_groups[0]["params"][0]
        kind = "embedding" if shapes == [(1, 77, 32)] else "unet"
        steps.append((kind, optimizer.param_groups[0]["lr"], int(optimizer.state[first]["step"])))

    handle = register_optimizer_step_post_hook(count)
    try:
        config = tiny_config(tiny_sd_path, schedule="reference", max_images=2, model__train_fusion=False)
        train_hand1000(config, dataset, feature, tmp_path, GESTURE)
    finally:
        handle.remove()
    one_image = [("embedding", 1e-3, s) for s in range(1, 11)] + [("unet", 1e-6, s) for s in range(1, 21)]
    # A fresh Adam per image: the per-parameter step count starts again at 1 on the second image.
    assert steps == one_image * 2
    log = [
        json.loads(line) for line in (tmp_path / "train" / GESTURE / "loss.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 61))
    assert [r["keys"] for r in log] == [["img0"]] * 30 + [["img1"]] * 30


@pytest.mark.parametrize(
    "settings",
    [
        # one image: 2 embedding steps, 4 UNet steps; stopped inside Stage III
        dict(schedule="reference", embedding_steps=2, unet_steps=4, max_images=1, model__train_fusion=False),
        # 3 images, batches of 2: 2 embedding steps, then 2 epochs of 2 UNet steps; stopped inside Stage III
        dict(schedule="batched", batch_size=2, embedding_steps=1, unet_epochs=2, model__train_fusion=True),
        # the same with bitsandbytes' 8-bit Adam: its quantised state goes through the checkpoint
        dict(schedule="batched", batch_size=2, embedding_steps=1, unet_epochs=2, optimizer="adam8bit"),
    ],
    ids=["reference", "batched", "batched-adam8bit"],
)
def test_resume_ends_bit_identical(tiny_sd_path, tiny_data, tmp_path, settings):
    dataset, feature = tiny_data
    straight = train_hand1000(
        tiny_config(tiny_sd_path, **settings), dataset, feature, tmp_path / "a", GESTURE
    )
    stopped = train_hand1000(
        tiny_config(tiny_sd_path, max_steps=3, **settings), dataset, feature, tmp_path / "b", GESTURE
    )
    assert (
        tmp_path / "b" / "train" / GESTURE / "checkpoints" / "latest"
    ).read_text().strip() == "step-00000003"
    assert not torch.equal(unet_weights(stopped)["conv_in.weight"], unet_weights(straight)["conv_in.weight"])
    resumed = train_hand1000(
        tiny_config(tiny_sd_path, init_from="resume", **settings), dataset, feature, tmp_path / "b", GESTURE
    )
    a, b = unet_weights(straight), unet_weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed UNet differs from the uninterrupted one"
    fusion_a = load_file(str(straight / "hand1000" / "fusion.safetensors"))
    fusion_b = load_file(str(resumed / "hand1000" / "fusion.safetensors"))
    assert all(torch.equal(fusion_a[k], fusion_b[k]) for k in fusion_a)
    log_a = (tmp_path / "a" / "train" / GESTURE / "loss.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train" / GESTURE / "loss.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if k != "time"} for line in log_a]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "time"} for line in log_b]
    assert len(strip) == 6


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    tiny_sd_path, tiny_data, tmp_path, monkeypatch
):
    dataset, feature = tiny_data
    settings = dict(
        schedule="reference", embedding_steps=2, unet_steps=4, max_images=1, model__train_fusion=False
    )
    good = train_hand1000(
        tiny_config(tiny_sd_path, max_steps=4, **settings), dataset, feature, tmp_path / "a", GESTURE
    )

    real_loss = hand1000_trainer.diffusion_loss
    calls = []

    def loss_with_nan_at_step_5(*args, **kwargs):
        calls.append(1)
        losses = real_loss(*args, **kwargs)
        return losses * float("nan") if len(calls) == 5 else losses

    monkeypatch.setattr(hand1000_trainer, "diffusion_loss", loss_with_nan_at_step_5)
    config = tiny_config(tiny_sd_path, checkpoint_every=1, **settings)
    with pytest.raises(NonFiniteLoss) as caught:
        train_hand1000(config, dataset, feature, tmp_path / "b", GESTURE)
    message = str(caught.value)
    for part in (
        "Stage III (UNet) loss is [nan]",
        "step 5 of 6",
        "image img0",
        "step-00000004",
        "train.unet_lr",
    ):
        assert part in message
    assert 'mixed_precision = "no"' in message
    checkpoints = tmp_path / "b" / "train" / GESTURE / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000004"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004"]
    assert not (tmp_path / "b" / "models" / GESTURE).exists()
    shared = torch.load(checkpoints / "step-00000004" / "shared.pt", weights_only=False)
    expected = unet_weights(good)
    assert shared["step"] == 4
    assert all(torch.equal(shared["weights"]["unet"][k], expected[k]) for k in expected)

    # The kept checkpoint resumes to the same end as a run that never saw the NaN.
    monkeypatch.setattr(hand1000_trainer, "diffusion_loss", real_loss)
    resumed = train_hand1000(
        tiny_config(tiny_sd_path, init_from="resume", checkpoint_every=1, **settings),
        dataset,
        feature,
        tmp_path / "b",
        GESTURE,
    )
    straight = train_hand1000(
        tiny_config(tiny_sd_path, **settings), dataset, feature, tmp_path / "c", GESTURE
    )
    a, b = unet_weights(straight), unet_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_is_saved_and_merged_so_plain_diffusers_loads_it(tiny_sd_path, tiny_data, tmp_path):
    from diffusers import StableDiffusionPipeline

    dataset, feature = tiny_data
    config = tiny_config(
        tiny_sd_path,
        schedule="batched",
        lora_rank=4,
        unet_lr=1e-2,
        embedding_steps=1,
        unet_epochs=2,
        batch_size=3,
    )
    config.train.validate_every = 3
    config.generate.steps = 2
    folder = train_hand1000(config, dataset, feature, tmp_path, GESTURE)
    merged = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert not any("lora" in k for k in merged.unet.state_dict())
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    with_lora = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    with_lora.load_lora_weights(folder / "hand1000" / "lora")
    g = torch.Generator().manual_seed(0)
    x, t, d = torch.randn(1, 4, 32, 32, generator=g), torch.tensor([500]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        out_base = base.unet(x, t, encoder_hidden_states=d).sample
        out_merged = merged.unet(x, t, encoder_hidden_states=d).sample
        out_lora = with_lora.unet(x, t, encoder_hidden_states=d).sample
    assert (out_merged - out_base).abs().max().item() > 1e-3, "the LoRA did not train"
    torch.testing.assert_close(out_merged, out_lora, rtol=1e-4, atol=1e-5)
    # The frozen parts are the base model's, unchanged.
    vae_a = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_b = load_file(str(Path(tiny_sd_path) / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_b)
    meta = json.loads((folder / "hand1000" / "config.json").read_text())
    assert meta["gesture"] == GESTURE and meta["lam"] == 0.7 and meta["lora"] == "hand1000/lora"
    grid = Image.open(tmp_path / "train" / GESTURE / "validation" / "step-00000003.png")
    assert grid.size == (3 * 64, 64)


def test_bad_inputs_get_clear_errors(tiny_sd_path, tiny_data, tmp_path):
    dataset, feature = tiny_data
    with pytest.raises(HandsynthError, match="no training manifest"):
        train_hand1000(tiny_config(tiny_sd_path), tmp_path, feature, tmp_path, GESTURE)
    with pytest.raises(HandsynthError, match="no training images of gesture 'palm'; it has: call"):
        train_hand1000(tiny_config(tiny_sd_path), dataset, feature, tmp_path, "palm")
    with pytest.raises(HandsynthError, match="run `handsynth features`"):
        train_hand1000(tiny_config(tiny_sd_path), dataset, tmp_path / "nope.npy", tmp_path, GESTURE)
    with pytest.raises(HandsynthError, match="train.optimizer must be one of auto, adam, adam8bit"):
        train_hand1000(tiny_config(tiny_sd_path, optimizer="sgd"), dataset, feature, tmp_path, GESTURE)
    with pytest.raises(HandsynthError, match="no checkpoint"):
        train_hand1000(tiny_config(tiny_sd_path, init_from="resume"), dataset, feature, tmp_path, GESTURE)


@pytest.mark.parametrize(
    "device,cuda,bf16,bitsandbytes,expected",
    [
        ("auto", False, False, True, ("no", "adam")),  # CPU: fp32 and torch Adam, as the reference
        ("auto", True, True, True, ("bf16", "adam8bit")),
        ("auto", True, False, True, ("fp16", "adam8bit")),  # a GPU without bf16
        ("auto", True, True, False, ("bf16", "adam")),  # bitsandbytes not installed
        ("cpu", True, True, True, ("no", "adam")),  # run.device = "cpu" on a GPU machine
    ],
)
def test_auto_precision_and_optimizer_follow_the_machine(
    monkeypatch, device, cuda, bf16, bitsandbytes, expected
):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "bitsandbytes":
            return object() if bitsandbytes else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    config = Config()
    config.run.device = device
    resolved = machinery.resolve_auto_settings(config).train
    assert (resolved.mixed_precision, resolved.optimizer) == expected
    config.train.mixed_precision, config.train.optimizer = "fp16", "adam"  # explicit settings are kept
    resolved = machinery.resolve_auto_settings(config).train
    assert (resolved.mixed_precision, resolved.optimizer) == ("fp16", "adam")
    assert config.train.optimizer == "adam" and Config().train.optimizer == "auto"  # not changed in place


def test_corrupt_image_is_skipped_and_counted(tiny_data, tmp_path, caplog):
    dataset, _ = tiny_data
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    rows.append({**rows[0], "key": "broken", "image": "images/broken.jpg"})
    for row in rows[:3]:
        row["image"] = str(dataset / row["image"])
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_train_items(tmp_path, GESTURE)
    assert [item.key for item in items] == ["img0", "img1", "img2"]
    assert "skipped 1 of 4 training images of 'call': broken" in caplog.text


def test_cli_trains_and_resumes(tiny_sd_path, tiny_data, tmp_path):
    dataset, feature = tiny_data
    args = [
        "train",
        "--output-dir", str(tmp_path),
        "--dataset-dir", str(dataset),
        "--features-dir", str(feature.parent.parent),
        "--gesture", GESTURE,
        "--base", str(tiny_sd_path),
        "--schedule", "batched",
        "--batch-size", "3",
        "--embedding-steps", "1",
        "--epochs", "1",
        "--device", "cpu",
        "--max-steps", "1",
    ]  # fmt: skip
    assert cli_main(args) == 0
    assert cli_main([*args[:-2], "--resume"]) == 0
    log = [
        json.loads(line) for line in (tmp_path / "train" / GESTURE / "loss.jsonl").read_text().splitlines()
    ]
    assert [(r["step"], r["stage"]) for r in log] == [(1, "embedding"), (2, "unet")]
    saved = (tmp_path / "train" / GESTURE / "config.toml").read_text()
    assert 'schedule = "batched"' in saved and 'init_from = "resume"' in saved
    assert (tmp_path / "models" / GESTURE / "hand1000" / "fusion.safetensors").is_file()


@pytest.mark.parametrize("kind", ["flat", "token"])
def test_fusion_stays_the_seeded_random_projection_unless_trained(tiny_sd_path, tiny_data, tmp_path, kind):
    from handsynth.hand1000.fusion import build_fusion

    dataset, feature = tiny_data
    torch.manual_seed(0)  # run.seed: the fusion is initialised from it
    fresh = build_fusion(kind, 32)
    if kind == "flat":
        fresh.materialize()
    fresh_state = {k: v.detach() for k, v in fresh.state_dict().items()}
    settings = dict(schedule="reference", embedding_steps=2, unet_steps=1, max_images=1, model__fusion=kind)
    for train_fusion in (False, True):
        config = tiny_config(tiny_sd_path, model__train_fusion=train_fusion, **settings)
        folder = train_hand1000(config, dataset, feature, tmp_path / str(train_fusion), GESTURE)
        saved = load_file(str(folder / "hand1000" / "fusion.safetensors"))
        same = all(torch.equal(saved[k], fresh_state[k]) for k in fresh_state)
        assert same is not train_fusion, (
            f"train_fusion={train_fusion}: fusion {'changed' if not same else 'did not train'}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_lambda_trains_or_is_refused_before_any_model_loads(
    tiny_sd_path, tiny_data, tmp_path, monkeypatch, schedule
):
    """λ = 0 and 1 train, with d free or through the fusion; λ = 1 with a trained fusion has no meaning
    (d = e leaves the fusion out of the loss) and is refused, naming what to set, before a model loads."""
    dataset, feature = tiny_data
    settings = dict(schedule=schedule, embedding_steps=2, unet_steps=1, unet_epochs=1, max_images=1)
    for lam, train_fusion in ((0.0, False), (0.0, True), (1.0, False)):
        config = tiny_config(tiny_sd_path, model__lam=lam, model__train_fusion=train_fusion, **settings)
        train_hand1000(config, dataset, feature, tmp_path / f"{lam}-{train_fusion}", GESTURE)
        log = [
            json.loads(line)
            for line in (tmp_path / f"{lam}-{train_fusion}" / "train" / GESTURE / "loss.jsonl")
            .read_text()
            .splitlines()
        ]
        assert [r["stage"] for r in log] == ["embedding", "embedding", "unet"]
        meta = json.loads(
            (tmp_path / f"{lam}-{train_fusion}" / "models" / GESTURE / "hand1000" / "config.json").read_text()
        )
        assert meta["resolution"] == 64  # the tiny base's 32 latent px x 2
        assert all(np.isfinite(r["loss"]) for r in log)

    def no_model_may_load(base):
        raise AssertionError(f"a model was loaded from {base}")

    monkeypatch.setattr(hand1000_trainer, "load_base_models", no_model_may_load)
    refused = tiny_config(tiny_sd_path, model__lam=1.0, model__train_fusion=True, **settings)
    with pytest.raises(HandsynthError, match="model.lam = 1 makes d = e.*Set model.train_fusion = false"):
        train_hand1000(refused, dataset, feature, tmp_path / "refused", GESTURE)
    with pytest.raises(HandsynthError, match="model.lam = 1 makes d = e"):
        check_config(refused)  # `handsynth run` refuses it before its first step
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["embedding_lr", "unet_lr"])
def test_resume_refuses_a_changed_learning_rate(tiny_sd_path, tiny_data, tmp_path, key):
    """A changed lr was silently ignored: the optimiser state came back with the old one. Now the plan
    holds both learning rates, beside the resolved precision and optimiser the machinery adds."""
    import re

    dataset, feature = tiny_data
    settings = dict(schedule="reference", embedding_steps=2, unet_steps=2, max_images=1)
    train_hand1000(tiny_config(tiny_sd_path, max_steps=1, **settings), dataset, feature, tmp_path, GESTURE)
    shared = torch.load(
        tmp_path / "train" / GESTURE / "checkpoints" / "step-00000001" / "shared.pt", weights_only=False
    )
    assert {k: shared["plan"][k] for k in ("embedding_lr", "unet_lr", "mixed_precision", "optimizer")} == {
        "embedding_lr": 1e-3,
        "unet_lr": 1e-6,
        "mixed_precision": "no",
        "optimizer": "adam",
    }
    changed = tiny_config(tiny_sd_path, init_from="resume", **{key: 2e-3}, **settings)
    old = shared["plan"][key]
    with pytest.raises(HandsynthError, match=re.escape(f"different run setup ({key}: {old!r} -> 0.002)")):
        train_hand1000(changed, dataset, feature, tmp_path, GESTURE)


@pytest.mark.slow
def test_an_untrained_fusion_is_rebuilt_from_the_seed_not_checkpointed(tiny_sd_path, tiny_data, tmp_path):
    """The reference's flat fusion never trains: checkpoints leave it out (14 GB at SD size) and a
    resumed run rebuilds it from run.seed, ending bit-identical; a trained fusion is checkpointed."""
    dataset, feature = tiny_data
    settings = dict(schedule="reference", embedding_steps=2, unet_steps=2, max_images=1, model__fusion="flat")
    untrained = dict(settings, model__train_fusion=False)
    straight = train_hand1000(
        tiny_config(tiny_sd_path, **untrained), dataset, feature, tmp_path / "a", GESTURE
    )
    train_hand1000(
        tiny_config(tiny_sd_path, max_steps=3, **untrained), dataset, feature, tmp_path / "b", GESTURE
    )
    checkpoint = tmp_path / "b" / "train" / GESTURE / "checkpoints" / "step-00000003" / "shared.pt"
    assert set(torch.load(checkpoint, weights_only=False)["weights"]) == {"unet"}
    resumed = train_hand1000(
        tiny_config(tiny_sd_path, init_from="resume", **untrained), dataset, feature, tmp_path / "b", GESTURE
    )
    for part in ("unet/diffusion_pytorch_model.safetensors", "hand1000/fusion.safetensors"):
        a, b = load_file(str(straight / part)), load_file(str(resumed / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part

    trained = dict(settings, model__train_fusion=True)
    train_hand1000(
        tiny_config(tiny_sd_path, max_steps=1, **trained), dataset, feature, tmp_path / "c", GESTURE
    )
    checkpoint = tmp_path / "c" / "train" / GESTURE / "checkpoints" / "step-00000001" / "shared.pt"
    assert set(torch.load(checkpoint, weights_only=False)["weights"]) == {"unet", "fusion"}
