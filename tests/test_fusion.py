"""Fusion modules, the double fusion, and the hand1000/ part of a model folder."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from handsynth.errors import HandsynthError
from handsynth.hand1000.fusion import (
    FlatFusion,
    TokenFusion,
    build_fusion,
    double_fuse,
    fusion_parameter_count,
    load_hand1000,
    save_hand1000,
)


def test_double_fuse_weight_one_returns_plain_embedding_exactly():
    torch.manual_seed(0)
    e = torch.randn(2, 77, 32)
    fusion = TokenFusion(32)
    fused = fusion(e, torch.randn(63))
    # λ = 1 in training and μ = 1 at inference: the plain CLIP embedding, bit for bit.
    assert torch.equal(double_fuse(e, fused, 1.0), e)
    assert torch.equal(double_fuse(e, fused, 0.0), fused)
    expected = 0.7 * e + 0.3 * fused
    torch.testing.assert_close(double_fuse(e, fused, 0.7), expected, rtol=0, atol=0)
    with pytest.raises(HandsynthError, match="must be in"):
        double_fuse(e, fused, 1.5)


def test_token_fusion_matches_an_independent_computation():
    torch.manual_seed(1)
    fusion = TokenFusion(text_dim=8, seq_len=5)
    e, f = torch.randn(3, 5, 8), torch.randn(63)
    w, b = fusion.fc.weight.detach(), fusion.fc.bias.detach()
    # Each token: W @ [e_i; f] + b, written out with the weight split into its text and feature columns.
    expected = e @ w[:, :8].T + (w[:, 8:] @ f) + b
    torch.testing.assert_close(fusion(e, f), expected, rtol=1e-5, atol=1e-6)
    # a per-sample feature batch gives each sample its own feature
    fb = torch.randn(3, 63)
    out = fusion(e, fb)
    for i in range(3):
        torch.testing.assert_close(out[i], fusion(e[i : i + 1], fb[i])[0])


def test_flat_fusion_matches_an_independent_computation():
    torch.manual_seed(2)
    fusion = FlatFusion(text_dim=4, seq_len=3)
    assert not fusion.is_materialized
    e, f = torch.randn(2, 3, 4), torch.randn(63)
    out = fusion(e, f)  # materialises on first use
    assert fusion.is_materialized
    w, b = fusion.fc.weight.detach(), fusion.fc.bias.detach()
    expected = torch.stack([(w @ torch.cat([x.flatten(), f]) + b).reshape(3, 4) for x in e])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "formula"),
    [
        ("flat", (77 * 768 + 63) * 77 * 768 + 77 * 768),
        ("token", (768 + 63) * 768 + 768),
    ],
)
def test_parameter_counts_at_sd_size_without_allocating(kind, formula):
    assert fusion_parameter_count(kind, 768) == formula
    # Building on the meta device allocates nothing, even for the 3.5 B-parameter flat fusion.
    with torch.device("meta"):
        module = build_fusion(kind, 768)
    params = list(module.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) == formula
    assert module(torch.empty(2, 77, 768, device="meta"), torch.empty(63, device="meta")).shape == (
        2,
        77,
        768,
    )


def test_flat_fusion_is_built_lazily_and_warns_about_memory(caplog):
    fusion = build_fusion("flat", 768)
    assert fusion.fc.weight.is_meta  # 14 GB not allocated by construction
    assert fusion_parameter_count("flat", 768) == 3_500_851_200
    small = build_fusion("flat", 8, seq_len=5)
    with caplog.at_level(logging.WARNING, logger="handsynth.hand1000.fusion"):
        small.materialize()
    # (5*8 + 63) * 40 + 40 parameters
    assert "flat fusion: allocating 4,160 parameters" in caplog.text


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(HandsynthError, match="unknown fusion kind 'wide'.*token, flat"):
        build_fusion("wide", 32)
    with pytest.raises(HandsynthError, match="unknown fusion kind"):
        fusion_parameter_count("wide", 32)


@pytest.mark.parametrize("kind", ["token", "flat"])
def test_save_and_load_hand1000_round_trip(tmp_path, kind):
    torch.manual_seed(3)
    fusion = build_fusion(kind, 8, seq_len=5)
    if kind == "flat":
        fusion.materialize()
    mean = np.random.default_rng(0).standard_normal(63).astype(np.float32)
    part = save_hand1000(
        tmp_path, fusion, mean, {"gesture": "call", "lam": 0.7, "mu": 0.6, "train_fusion": False}
    )
    assert sorted(p.name for p in part.iterdir()) == ["config.json", "fusion.safetensors", "mean_feature.npy"]
    meta = json.loads((part / "config.json").read_text())
    assert meta == {
        "mu": 0.6,
        "train_fusion": False,
        "gesture": "call",
        "lam": 0.7,
        "fusion": kind,
        "text_dim": 8,
        "seq_len": 5,
        "feature_dim": 63,
    }
    loaded, loaded_mean, loaded_meta = load_hand1000(tmp_path)
    assert type(loaded) is type(fusion) and loaded_meta == meta
    assert np.array_equal(loaded_mean.numpy(), mean)
    e = torch.randn(2, 5, 8)
    assert torch.equal(loaded(e, loaded_mean), fusion(e, torch.from_numpy(mean)))


def test_load_hand1000_names_what_is_missing(tmp_path):
    with pytest.raises(HandsynthError, match="not a Hand1000 model folder.*config.json"):
        load_hand1000(tmp_path)


def test_save_hand1000_rejects_a_wrong_feature(tmp_path):
    with pytest.raises(HandsynthError, match=r"shape \(21, 3\).*\(63,\)"):
        save_hand1000(tmp_path, build_fusion("token", 8), np.zeros((21, 3)), {})


def write_bad_feature(path, kind: str) -> None:
    """A mean feature file spoiled in one of the ways a hand edit or another tool spoils it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text(" ".join(["0.5"] * 63) + "\n")
    elif kind == "pickled":
        np.save(path, np.array([{"x": 0.5}] * 63, dtype=object), allow_pickle=True)
    elif kind == "shape":
        np.save(path, np.zeros((21, 3), np.float32))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, mean=np.zeros(63, np.float32))
    elif kind == "strings":
        np.save(path, np.array(["0.5"] * 63))
    elif kind == "empty":
        path.write_bytes(b"")


BAD_FEATURES = ["text", "pickled", "shape", "npz", "strings", "empty"]


@pytest.mark.parametrize("kind", BAD_FEATURES)
def test_a_corrupt_model_feature_names_the_file_and_how_to_rebuild_it(tmp_path, kind):
    save_hand1000(tmp_path, build_fusion("token", 8), np.zeros(63, np.float32), {"gesture": "ok"})
    path = tmp_path / "hand1000" / "mean_feature.npy"
    write_bad_feature(path, kind)
    with pytest.raises(HandsynthError) as caught:
        load_hand1000(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a gesture feature: ")
    assert "63 finite numbers" in message and "Stage I mean.npy of gesture 'ok'" in message


@pytest.mark.parametrize("kind", BAD_FEATURES)
def test_a_corrupt_stage1_feature_names_the_file_and_how_to_rebuild_it(tmp_path, kind):
    from handsynth.hand1000.trainer import read_mean_feature

    path = tmp_path / "features" / "ok" / "mean.npy"
    write_bad_feature(path, kind)
    with pytest.raises(HandsynthError) as caught:
        read_mean_feature(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a gesture feature: ")
    assert message.endswith("Rebuild it with `handsynth features --gesture ok` (Stage I)")


class LargestCast(torch.overrides.TorchFunctionMode):
    """Records the most elements of any fp32 tensor that `Tensor.to` converts."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to and args[0].dtype == torch.float32 and not args[0].is_meta:
            self.most = max(self.most, args[0].numel())
        return func(*args, **(kwargs or {}))


def test_loading_casts_a_block_of_rows_at_a_time_before_moving_it(tmp_path, monkeypatch):
    """A flat fusion's fp32 weights (14 GB at SD size) never sit whole anywhere on their way to the
    device in fp16: each block of rows is read, cast on the host, then copied into place."""
    from handsynth.hand1000 import fusion as fusion_module

    torch.manual_seed(0)
    fusion = FlatFusion(8, seq_len=5).materialize()  # Linear(40 + 63 -> 40)
    save_hand1000(tmp_path, fusion, np.zeros(63, np.float32), {"gesture": "call"})
    block_rows = 7
    monkeypatch.setattr(fusion_module, "LOAD_BLOCK_BYTES", block_rows * 103 * 4)
    with LargestCast() as seen:
        loaded, mean, _ = load_hand1000(tmp_path, dtype=torch.float16)
    assert 0 < seen.most <= block_rows * 103  # one block of the (40, 103) weight at a time
    assert loaded.fc.weight.dtype == mean.dtype == torch.float16
    assert torch.equal(loaded.fc.weight, fusion.fc.weight.detach().half())
    assert torch.equal(loaded.fc.bias, fusion.fc.bias.detach().half())
