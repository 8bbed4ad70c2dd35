"""The shared training machinery on its own, with a toy model: resume, the NaN stop, batches, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.training.trainer import NonFiniteLoss, Trainer, make_accelerator

ITEMS, BATCH, EPOCHS = 12, 4, 3
TOTAL = EPOCHS * ITEMS // BATCH  # 9 steps


class Interrupted(Exception):
    """What the test's callback raises, as a killed run would stop."""


class ToyTrainer(Trainer):
    """A 4 -> 8 -> 1 MLP fitted to fixed data; each step also draws input noise from the trainer's
    generator and keeps a per-process running sum, so resume must restore both."""

    def __init__(self, config: Config, work: Path, nan_at: int = 0) -> None:
        super().__init__(config, make_accelerator(config, work), work, {"toy": 1}, TOTAL, name="toy")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.model, self.optimizer = self.acc.prepare(model, self.make_optimizer(model.parameters(), 0.05))
        data = torch.Generator().manual_seed(1)
        self.x = torch.randn(ITEMS, 4, generator=data)
        self.y = self.x.sum(dim=1, keepdim=True).sin()
        self.noise_sum = torch.zeros(())
        self.nan_at = nan_at

    def checkpoint_weights(self):
        return {"model": dict(self.model.named_parameters())}

    def shared_optimizers(self):
        return {"model": self.optimizer}

    def rank_state(self):
        return {"noise_sum": self.noise_sum.clone()}

    def load_rank_state(self, state):
        self.noise_sum = state["noise_sum"]

    def loop(self) -> None:
        for index in self.shuffled_batches(ITEMS, BATCH, EPOCHS):
            noise = 0.1 * torch.randn(len(index), 4, generator=self.generator)
            self.noise_sum += noise.sum()
            losses = ((self.model(self.x[index] + noise) - self.y[index]) ** 2).mean(dim=1)
            if self.step + 1 == self.nan_at:
                losses = losses * float("nan")
            keys = [f"item{i}" for i in index.tolist()]
            value = self.check_loss(losses, "toy", keys, "toy.lr")
            self.acc.backward(losses.mean())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.record("toy", value, keys, half=value / 2)
            self.after_step()


def toy_config(**train) -> Config:
    config = Config()
    config.run.device = "cpu"
    config.train.checkpoint_every = 0
    for key, value in train.items():
        config.set(f"train.{key}", value)
    return config


def run_toy(work: Path, stop_at: int = 0, nan_at: int = 0, **train) -> ToyTrainer:
    trainer = ToyTrainer(toy_config(**train), work, nan_at=nan_at)
    if stop_at:

        def stop(t: Trainer) -> None:
            if t.step == stop_at:
                raise Interrupted

        trainer.callbacks.append(stop)
    trainer.train(trainer.loop)
    return trainer


def weights(trainer: ToyTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def log_rows(work: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "time"}
        for line in (work / "loss.jsonl").read_text().splitlines()
    ]


def test_stopped_by_a_callback_and_resumed_ends_bit_identical(tmp_path):
    straight = run_toy(tmp_path / "a")
    assert straight.step == TOTAL
    with pytest.raises(Interrupted):
        run_toy(tmp_path / "b", stop_at=5, checkpoint_every=2)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert len(log_rows(tmp_path / "b")) == 5  # step 5 was logged, then redone after the resume
    resumed = run_toy(tmp_path / "b", init_from="resume", checkpoint_every=2)
    assert resumed.step == TOTAL
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert torch.equal(straight.noise_sum, resumed.noise_sum)
    assert straight.generator.get_state().equal(resumed.generator.get_state())
    assert log_rows(tmp_path / "a") == log_rows(tmp_path / "b")
    assert [r["step"] for r in log_rows(tmp_path / "b")] == list(range(1, TOTAL + 1))
    assert all(r["half"] == pytest.approx(r["loss"] / 2) for r in log_rows(tmp_path / "a"))
    # every item once per epoch, in a different order each epoch
    keys = [r["keys"] for r in log_rows(tmp_path / "a")]
    epochs = [sum(keys[e * 3 : e * 3 + 3], []) for e in range(EPOCHS)]
    assert all(sorted(e) == sorted(f"item{i}" for i in range(ITEMS)) for e in epochs)
    assert epochs[0] != epochs[1]


def test_a_nan_stops_the_run_naming_the_step_and_the_last_checkpoint_loads(tmp_path):
    with pytest.raises(NonFiniteLoss) as caught:
        run_toy(tmp_path / "nan", nan_at=5, checkpoint_every=1)
    message = str(caught.value)
    assert "toy loss is [nan] at step 5 of 9" in message
    assert "step-00000004" in message and "toy.lr" in message and "item" in message
    assert (tmp_path / "nan" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert [r["step"] for r in log_rows(tmp_path / "nan")] == [1, 2, 3, 4]

    four_steps = run_toy(tmp_path / "four", max_steps=4)
    assert four_steps.step == 4
    loaded = ToyTrainer(toy_config(init_from="resume"), tmp_path / "nan")
    loaded.load_checkpoint()
    assert loaded.step == 4
    a, b = weights(four_steps), weights(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded.noise_sum, four_steps.noise_sum)


def test_resume_refuses_a_different_plan_and_a_missing_checkpoint(tmp_path):
    with pytest.raises(HandsynthError, match="no checkpoint in"):
        run_toy(tmp_path / "none", init_from="resume")
    run_toy(tmp_path / "a", max_steps=2)
    other = ToyTrainer(toy_config(init_from="resume"), tmp_path / "a")
    other.plan = {"toy": 2}
    with pytest.raises(HandsynthError, match=r"different run setup \(toy: 1 -> 2\)"):
        other.load_checkpoint()


def test_resume_refuses_another_seed(tmp_path):
    """The shuffles and the noise draw from run.seed: a resume with another would be another run."""
    run_toy(tmp_path, max_steps=2)
    config = toy_config(init_from="resume")
    config.run.seed = 5
    with pytest.raises(HandsynthError, match=r"different run setup \(seed: 0 -> 5\)"):
        ToyTrainer(config, tmp_path).load_checkpoint()


def test_a_scratch_run_clears_the_outputs_of_the_last_one(tmp_path):
    run_toy(tmp_path, max_steps=3)
    assert (tmp_path / "checkpoints" / "latest").is_file()
    run_toy(tmp_path, max_steps=2)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert [r["step"] for r in log_rows(tmp_path)] == [1, 2]


def test_batches_are_split_between_processes_and_padded(tmp_path):
    trainer = ToyTrainer(toy_config(), tmp_path)
    assert trainer.batches_per_epoch(10, 4) == 3
    batches = list(trainer.shuffled_batches(10, 4, epochs=1))
    assert [len(b) for b in batches] == [4, 4, 4]  # 10 items wrapped round to 12
    seen = torch.cat(batches).tolist()
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12


@pytest.mark.parametrize(("key", "value"), [("optimizer", "adam8bit"), ("mixed_precision", "bf16")])
def test_resume_refuses_another_optimizer_or_precision(tmp_path, key, value):
    """The resolved settings are in every trainer's plan: "auto" on this CPU is fp32 and torch Adam, so
    naming them resumes, and 8-bit Adam (as after installing bitsandbytes) or bf16 is refused."""
    run_toy(tmp_path, max_steps=2)
    shared = torch.load(tmp_path / "checkpoints" / "step-00000002" / "shared.pt", weights_only=False)
    plan = {"toy": 1, "seed": 0, "processes": 1, "mixed_precision": "no", "optimizer": "adam"}
    assert shared["plan"] == plan
    same = ToyTrainer(toy_config(init_from="resume", mixed_precision="no", optimizer="adam"), tmp_path)
    same.load_checkpoint()
    assert same.step == 2
    # The run's accelerator is the process's (accelerate keeps one precision per process); the plan
    # comes from the config alone.
    other = Trainer(
        toy_config(init_from="resume", **{key: value}),
        make_accelerator(toy_config(), tmp_path),
        tmp_path,
        {"toy": 1},
        TOTAL,
        name="toy",
    )
    assert other.plan[key] == value
    old = {"optimizer": "adam", "mixed_precision": "no"}[key]
    with pytest.raises(HandsynthError, match=rf"different run setup \({key}: '{old}' -> '{value}'\)"):
        other.load_checkpoint()


def test_checkpoints_write_the_weights_without_copying_them(tmp_path, monkeypatch):
    """torch.save gets the live tensors (it moves device ones to the host a storage at a time), not a
    copy of every weight: with a flat fusion that copy was 14 GB, two on a GPU (.cpu() then .clone())."""
    saved = []
    real_save = torch.save

    def keep(obj, f, *args, **kwargs):
        saved.append(obj)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", keep)
    trainer = run_toy(tmp_path, max_steps=2)
    (shared,) = [obj for obj in saved if "weights" in obj]
    live = dict(trainer.model.named_parameters())
    assert shared["weights"]["model"].keys() == live.keys()
    for name, tensor in shared["weights"]["model"].items():
        assert tensor.untyped_storage().data_ptr() == live[name].untyped_storage().data_ptr(), name
    loaded = ToyTrainer(toy_config(init_from="resume"), tmp_path)
    loaded.load_checkpoint()
    a, b = weights(loaded), weights(trainer)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_weights_nan_check_reads_a_chunk_at_a_time(tmp_path, monkeypatch):
    """torch.isfinite on a whole weight makes temporaries of 1.75 times its size (24 GB for the flat
    fusion); the check before a checkpoint hands it FINITE_CHECK_ELEMENTS values at a time."""
    from handsynth.training import trainer as machinery

    sizes = []

    class IsfiniteSizes(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.isfinite:
                sizes.append(args[0].numel())
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(machinery, "FINITE_CHECK_ELEMENTS", 8)
    with IsfiniteSizes():
        run_toy(tmp_path, max_steps=2)
    assert (tmp_path / "checkpoints" / "latest").is_file() and sizes and max(sizes) <= 8  # weights are 4x8
    weight = torch.zeros(10, 4)
    assert machinery.all_finite(weight)
    for bad in (float("nan"), float("inf")):
        weight[-1, -1] = bad  # in the last chunk
        assert not machinery.all_finite(weight)
    assert not machinery.all_finite(torch.tensor(float("nan")))
