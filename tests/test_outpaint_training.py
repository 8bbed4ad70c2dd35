"""`handsynth outpaint train` on the tiny models and real HaGRID photos: only the LoRA moves, the saved
LoRA loads elsewhere with identical outputs, and a stopped run resumes bit-identically."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image
from safetensors.torch import load_file
from twostage_data import write_images_jsonl

from handsynth.cli import main as cli_main
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.training.diffusion import token_ids
from handsynth.training.trainer import NonFiniteLoss
from handsynth.twostage.outpaint import trainer as outpaint_trainer
from handsynth.twostage.outpaint.canvas import canvas_from_mask
from handsynth.twostage.outpaint.models import LORA_META, LORA_WEIGHTS, check_unet, load_lora, masked_mse
from handsynth.twostage.outpaint.outpainter import Outpainter
from handsynth.twostage.outpaint.trainer import build_outpaint_trainer, read_outpaint_items, train_outpainter


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, hagrid_mini) -> Path:
    return write_images_jsonl(tmp_path_factory.mktemp("twostage-data"), hagrid_mini, count=3, size=64)


def tiny_config(base: Path, controlnet: Path, out: Path, **settings) -> Config:
    """3 images, batches of 2, 2 epochs: 4 steps."""
    config = Config()
    config.run.device = "cpu"
    config.run.output_dir = str(out)
    config.train.checkpoint_every = 0
    config.outpaint.base, config.outpaint.controlnet = str(base), str(controlnet)
    config.outpaint.batch_size, config.outpaint.epochs, config.outpaint.lr = 2, 2, 1e-3
    for key, value in settings.items():
        section, _, name = key.rpartition("__")
        config.set(f"{section or 'train'}.{name}", value)
    return config


@pytest.fixture
def config_for(tiny_inpaint_path, tiny_controlnet_path):
    return lambda out, **settings: tiny_config(tiny_inpaint_path, tiny_controlnet_path, out, **settings)


def lora_file(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / LORA_WEIGHTS))


def test_masked_mse_averages_over_the_region_only():
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    region = torch.zeros(2, 1, 6, 6)
    region[0, 0, :3] = 1
    region[1, 0, 2, 2] = 1
    expected = [
        ((prediction[0, :, :3] - target[0, :, :3]) ** 2).mean(),
        ((prediction[1, :, 2, 2] - target[1, :, 2, 2]) ** 2).mean(),
    ]
    torch.testing.assert_close(masked_mse(prediction, target, region), torch.stack(expected))
    assert masked_mse(prediction, target, torch.zeros(2, 1, 6, 6)).tolist() == [0.0, 0.0]


def test_training_moves_only_the_lora_and_lowers_the_loss_on_a_fixed_batch(config_for, data_dir, tmp_path):
    trainer = build_outpaint_trainer(config_for(tmp_path, outpaint__lr=3e-2), data_dir)
    controlnet = trainer.acc.unwrap_model(trainer.controlnet)
    frozen = {
        f"{part}.{name}": p.detach().clone()
        for part, model in (
            ("controlnet", controlnet),
            ("unet", trainer.unet),
            ("vae", trainer.vae),
            ("text", trainer.text_encoder),
        )  # fmt: skip
        for name, p in model.named_parameters()
        if ".lora_" not in name
    }
    lora_before = {k: v.detach().clone() for k, v in trainer.lora.items()}
    assert len(lora_before) == 32 and sum(v.numel() for v in lora_before.values()) == 15360
    assert all(".lora_" in name for name, p in controlnet.named_parameters() if p.requires_grad)

    batch = trainer.items[:2]
    losses = []
    for _ in range(6):
        trainer.generator.manual_seed(5)  # the same t, ε and VAE sample every step
        losses.append(trainer.train_step(batch))
    print("masked L2 on a fixed batch:", [round(v, 4) for v in losses])
    assert losses[-1] < losses[0] - 0.02
    assert losses == pytest.approx([1.0911, 1.0887, 1.0819, 1.0748, 1.0706, 1.0655], abs=1e-3)

    now = {
        f"{part}.{name}": p
        for part, model in (
            ("controlnet", controlnet),
            ("unet", trainer.unet),
            ("vae", trainer.vae),
            ("text", trainer.text_encoder),
        )  # fmt: skip
        for name, p in model.named_parameters()
        if ".lora_" not in name
    }
    assert now.keys() == frozen.keys()
    changed = [k for k in frozen if not torch.equal(frozen[k], now[k])]
    assert not changed, f"frozen weights moved: {changed[:5]}"
    assert all(not torch.equal(lora_before[k], p) for k, p in trainer.lora.items() if "lora_B" in k)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_the_caption_is_dropped_to_the_empty_prompt(config_for, data_dir, tmp_path, p):
    trainer = build_outpaint_trainer(config_for(tmp_path, outpaint__caption_dropout=p), data_dir)
    texts = []
    trainer.text_encoder.register_forward_pre_hook(lambda m, args: texts.append(args[0]))
    items = trainer.items[:2]
    trainer.train_step(items)
    captions = [""] * 2 if p else [item.caption for item in items]
    assert torch.equal(texts[0], token_ids(trainer.tokenizer, captions)) and all(i.caption for i in items)


def test_saved_lora_loads_into_a_fresh_controlnet_with_identical_outputs(
    config_for, data_dir, tmp_path, tiny_controlnet_path, tiny_inpaint_path
):
    config = config_for(tmp_path, train__validate_every=4, outpaint__steps=2)
    trainer = build_outpaint_trainer(config, data_dir)
    trainer.train(trainer.loop)
    folder = tmp_path / "lora"
    trainer.save_lora(folder, {"controlnet": str(tiny_controlnet_path), "base": str(tiny_inpaint_path)})
    assert sorted(p.name for p in folder.iterdir()) == sorted([LORA_WEIGHTS, LORA_META])
    saved = lora_file(folder)
    assert len(saved) == 32 and all(".lora_A." in k or ".lora_B." in k for k in saved)

    fresh = ControlNetModel.from_pretrained(tiny_controlnet_path)
    plain = ControlNetModel.from_pretrained(tiny_controlnet_path)
    meta = load_lora(fresh, folder)
    assert meta["controlnet"] == str(tiny_controlnet_path)
    trained = trainer.acc.unwrap_model(trainer.controlnet).eval()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 4, 32, 32, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    e = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        ours = trained(x, torch.tensor([400]), e, controlnet_cond=cond, return_dict=False)
        loaded = fresh(x, torch.tensor([400]), e, controlnet_cond=cond, return_dict=False)
        base = plain(x, torch.tensor([400]), e, controlnet_cond=cond, return_dict=False)
    for a, b in zip([*ours[0], ours[1]], [*loaded[0], loaded[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (ours[1] - base[1]).abs().max() > 1e-4, "the LoRA did not train"

    grid = Image.open(tmp_path / "train" / "outpaint" / "validation" / "step-00000004.png")
    assert grid.size == (4 * 64, 3 * 64)  # canvas | condition | outpainted | truth, one row per image


@pytest.mark.slow
def test_stopped_and_resumed_training_ends_bit_identical(config_for, data_dir, tmp_path):
    straight = train_outpainter(config_for(tmp_path / "a"), data_dir)
    assert straight == tmp_path / "a" / "models" / "outpaint-lora"
    train_outpainter(config_for(tmp_path / "b", max_steps=2), data_dir)
    assert (
        tmp_path / "b" / "train" / "outpaint" / "checkpoints" / "latest"
    ).read_text().strip() == "step-00000002"
    shared = torch.load(tmp_path / "b" / "train" / "outpaint" / "checkpoints" / "step-00000002" / "shared.pt")
    assert set(shared["weights"]) == {"lora"} and len(shared["weights"]["lora"]) == 32  # the LoRA only
    resumed = train_outpainter(config_for(tmp_path / "b", init_from="resume"), data_dir)
    a, b = lora_file(straight), lora_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume changed the LoRA"
    logs = [
        [
            {k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (tmp_path / run / "train" / "outpaint" / "loss.jsonl").read_text().splitlines()
        ]
        for run in ("a", "b")
    ]
    assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == [1, 2, 3, 4]
    assert [r["loss"] for r in logs[0]] == pytest.approx([1.1208, 1.1070, 1.0945, 1.0840], abs=1e-3)
    meta = json.loads((straight / LORA_META).read_text())
    assert meta["rank"] == 8 and meta["alpha"] == 8 and meta["steps"] == 4 and meta["images"] == 3


def test_the_cli_trains_and_the_lora_changes_stage_2(
    tmp_path, data_dir, tiny_inpaint_path, tiny_controlnet_path, capsys
):
    config = tmp_path / "run.toml"
    config.write_text(
        f'[run]\ndevice = "cpu"\noutput_dir = "{tmp_path}"\n[outpaint]\nbatch_size = 3\nlr = 0.01\n'
        f'base = "{tiny_inpaint_path}"\ncontrolnet = "{tiny_controlnet_path}"\n'
    )
    assert (
        cli_main(["outpaint", "train", "--config", str(config), "--data-dir", str(data_dir), "--epochs", "2"])
        == 0
    )
    folder = tmp_path / "models" / "outpaint-lora"
    assert json.loads((folder / LORA_META).read_text())["steps"] == 2

    rows = [json.loads(line) for line in (data_dir / "images.jsonl").read_text().splitlines()]
    image = np.asarray(Image.open(data_dir / rows[0]["image"]))
    canvas = canvas_from_mask(image, np.asarray(Image.open(data_dir / rows[0]["hand_mask"])))
    pose = np.asarray(rows[0]["keypoints"], dtype=np.float32)
    outputs = []
    for lora in (None, folder):
        outpainter = Outpainter.from_pretrained(
            tiny_inpaint_path, tiny_controlnet_path, lora=lora, device="cpu"
        )
        result = outpainter(
            rows[0]["caption"],
            pose,
            canvas,
            generator=torch.Generator().manual_seed(0),
            steps=3,
            progress=False,
        )
        outputs.append(result.image.astype(int))
    assert np.abs(outputs[0] - outputs[1]).mean() > 0.1, "the LoRA did not reach stage 2"

    assert cli_main(["outpaint", "train", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    assert "no image manifest" in capsys.readouterr().err


def test_a_nan_stops_the_run_naming_the_step_and_the_setting(config_for, data_dir, tmp_path, monkeypatch):
    real = outpaint_trainer.masked_mse
    calls = []

    def nan_at_step_3(*args):
        calls.append(1)
        return real(*args) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(outpaint_trainer, "masked_mse", nan_at_step_3)
    with pytest.raises(NonFiniteLoss) as caught:
        train_outpainter(config_for(tmp_path, checkpoint_every=1), data_dir)
    message = str(caught.value)
    assert "outpaint loss is [nan] at step 3 of 4" in message and "outpaint.lr" in message
    assert "step-00000002" in message


def test_bad_rows_are_skipped_with_a_warning_and_bad_settings_refused(config_for, data_dir, tmp_path, caplog):
    rows = [json.loads(line) for line in (data_dir / "images.jsonl").read_text().splitlines()]
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("images", "masks"):
        (broken / name).symlink_to(data_dir / name)
    rows[1]["keypoints"] = rows[1]["keypoints"][:5]
    rows[2]["image"] = "images/missing.png"
    rows.append({**rows[0], "key": "test-row", "split": "test"})
    (broken / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, left_out = read_outpaint_items(broken)
    assert [item.key for item in items] == [rows[0]["key"]] and left_out == {
        "small_hand_mask": 0,
        "multi_person": 0,
    }
    assert "skipped 2 of 3 'train' rows" in caplog.text and "a pose is 133" in caplog.text
    assert "image not found" in caplog.text
    assert [i.key for i in read_outpaint_items(broken, "test")[0]] == ["test-row"]
    with pytest.raises(HandsynthError, match="outpaint.skeleton must be one of"):
        train_outpainter(config_for(tmp_path, outpaint__skeleton="stick"), data_dir)
    with pytest.raises(HandsynthError, match="the UNet of 'hand-generator' reads 15 channels"):
        check_unet(SimpleNamespace(config=SimpleNamespace(in_channels=15)), "hand-generator")


def test_the_papers_filters_leave_small_hands_and_several_people_out_and_are_counted(
    config_for, data_dir, tmp_path
):
    rows = [json.loads(line) for line in (data_dir / "images.jsonl").read_text().splitlines()]
    filtered = tmp_path / "filtered"
    filtered.mkdir()
    for name in ("images", "masks"):
        (filtered / name).symlink_to(data_dir / name)
    rows[0]["outpaint"] = False  # a hand mask under 2,500 px at 512 px
    rows[1]["single_person"] = False
    (filtered / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, left_out = read_outpaint_items(filtered)
    assert [item.key for item in items] == [r["key"] for r in rows[2:]]
    assert left_out == {"small_hand_mask": 1, "multi_person": 1}
    folder = train_outpainter(config_for(tmp_path, outpaint__epochs=1), filtered)
    meta = json.loads((folder / LORA_META).read_text())
    assert meta["images"] == len(rows) - 2 and meta["left_out"] == left_out
    for row in rows:
        row["outpaint"] = False
    (filtered / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HandsynthError, match="pose.min_mask_pixels"):
        read_outpaint_items(filtered)


def test_a_plain_4_channel_base_trains_too(tiny_sd_path, tiny_controlnet_path, data_dir, tmp_path):
    config = tiny_config(tiny_sd_path, tiny_controlnet_path, tmp_path, outpaint__epochs=1)
    folder = train_outpainter(config, data_dir)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train" / "outpaint" / "loss.jsonl").open()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert json.loads((folder / LORA_META).read_text())["base"] == str(tiny_sd_path)
