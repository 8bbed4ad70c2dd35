"""Hand1000 fusion of the text embedding `e` with the gesture feature `f`, and the `hand1000/` folder.

Double fusion (SPEC §A Stage II and Inference): `d = w·e + (1−w)·fc(e, f)`, with w = λ in training and
w = μ at inference. Two kinds of `fc`:

- `token` (the default): one Linear(D + 63 -> D) shared by the L tokens; 0.64 M parameters at SD size.
- `flat` (the reference): one Linear(L·D + 63 -> L·D) over the flattened embedding; 3.5 B parameters
  (14 GB in fp32) at SD size, so it is built on the meta device and allocated only when first used.

`model.train_fusion` (default true): in the reference the fused tensor is detached before Stage II,
so `fc` never trains and inference fuses with a fixed random projection. Training it is the default
here because the token fusion is small, and a learned `fc` lets the mean feature `f` steer the
embedding at inference rather than add a random offset. Set it to false for the reference behaviour.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from handsynth import files
from handsynth.errors import HandsynthError

log = logging.getLogger(__name__)

FEATURE_DIM = 63  # 21 MediaPipe landmarks x (x, y, z)
SEQ_LEN = 77  # CLIP's context length
FUSION_KINDS = ("token", "flat")
HAND1000_DIR = "hand1000"
NPY_MAGIC = b"\x93NUMPY"
LOAD_BLOCK_BYTES = 16 * 2**20  # what a load reads and casts at a time


def _feature_batch(f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """`f` as (B, feature_dim), on `e`'s device and dtype: a single (feature_dim,) is shared by the batch."""
    f = f.to(device=e.device, dtype=e.dtype)
    if f.dim() == 1:
        f = f.unsqueeze(0)
    if f.dim() != 2 or f.shape[0] not in (1, e.shape[0]):
        raise HandsynthError(
            f"gesture feature has shape {tuple(f.shape)}; "
            f"expected (feature_dim,) or ({e.shape[0]}, feature_dim)"
        )
    return f.expand(e.shape[0], -1)


class TokenFusion(nn.Module):
    """fc(e, f)_i = Linear(concat(e_i, f)): one Linear(D + feature_dim -> D) shared by the tokens."""

    def __init__(self, text_dim: int, seq_len: int = SEQ_LEN, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.kind = "token"
        self.text_dim, self.seq_len, self.feature_dim = text_dim, seq_len, feature_dim
        self.fc = nn.Linear(text_dim + feature_dim, text_dim)

    def forward(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        f = _feature_batch(f, e).to(self.fc.weight.dtype)
        x = torch.cat([e.to(self.fc.weight.dtype), f.unsqueeze(1).expand(-1, e.shape[1], -1)], dim=-1)
        return self.fc(x).to(e.dtype)


class FlatFusion(nn.Module):
    """The reference: fc(e, f) = Linear(concat(flatten(e), f)) reshaped to (B, L, D).

    Built on the meta device (no memory); `materialize()`, or the first forward, allocates and
    initialises the weights as nn.Linear does, from the global torch RNG.
    """

    def __init__(self, text_dim: int, seq_len: int = SEQ_LEN, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.kind = "flat"
        self.text_dim, self.seq_len, self.feature_dim = text_dim, seq_len, feature_dim
        size = seq_len * text_dim
        self.fc = nn.Linear(size + feature_dim, size, device="meta")

    @property
    def is_materialized(self) -> bool:
        return not self.fc.weight.is_meta

    def materialize(
        self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> FlatFusion:
        if self.is_materialized:
            return self
        count = fusion_parameter_count("flat", self.text_dim, self.seq_len, self.feature_dim)
        gib = count * torch.tensor([], dtype=dtype).element_size() / 2**30
        log.warning(
            "flat fusion: allocating %s parameters (%.1f GiB in %s) on %s; "
            'use model.fusion = "token" unless you need the reference\'s exact fusion',
            f"{count:,}",
            gib,
            str(dtype).removeprefix("torch."),
            device,
        )
        self.fc.to_empty(device=device)
        self.fc.to(dtype)
        self.fc.reset_parameters()
        return self

    def forward(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if not self.is_materialized and not e.is_meta:
            self.materialize(e.device)
        if e.shape[1:] != (self.seq_len, self.text_dim):
            raise HandsynthError(
                f"flat fusion was built for embeddings of shape ({self.seq_len}, {self.text_dim}), "
                f"got {tuple(e.shape[1:])}"
            )
        f = _feature_batch(f, e).to(self.fc.weight.dtype)
        x = torch.cat([e.flatten(1).to(self.fc.weight.dtype), f], dim=1)
        return self.fc(x).reshape(e.shape).to(e.dtype)


def build_fusion(
    kind: str, text_dim: int, seq_len: int = SEQ_LEN, feature_dim: int = FEATURE_DIM
) -> TokenFusion | FlatFusion:
    """A fresh fusion module; `flat` stays on the meta device until used (see FlatFusion)."""
    if kind == "token":
        return TokenFusion(text_dim, seq_len, feature_dim)
    if kind == "flat":
        return FlatFusion(text_dim, seq_len, feature_dim)
    raise HandsynthError(f"unknown fusion kind '{kind}'; use one of: {', '.join(FUSION_KINDS)}")


def fusion_parameter_count(
    kind: str, text_dim: int, seq_len: int = SEQ_LEN, feature_dim: int = FEATURE_DIM
) -> int:
    """Weights plus biases of the fusion Linear, by formula (nothing is allocated)."""
    if kind == "token":
        return (text_dim + feature_dim) * text_dim + text_dim
    if kind == "flat":
        size = seq_len * text_dim
        return (size + feature_dim) * size + size
    raise HandsynthError(f"unknown fusion kind '{kind}'; use one of: {', '.join(FUSION_KINDS)}")


def double_fuse(e: torch.Tensor, fused: torch.Tensor, weight: float) -> torch.Tensor:
    """`weight·e + (1−weight)·fused`: λ in Stage II, μ at inference. weight 1 returns `e` exactly."""
    if not 0.0 <= weight <= 1.0:
        raise HandsynthError(f"fusion weight (lambda / mu) must be in [0, 1], got {weight}")
    if weight == 1.0:
        return e
    if weight == 0.0:
        return fused
    return weight * e + (1.0 - weight) * fused


def save_hand1000(
    folder: str | Path, fusion: nn.Module, mean_feature: np.ndarray, meta: dict[str, Any]
) -> Path:
    """Write `folder/hand1000/`: fusion.safetensors, mean_feature.npy and config.json, each atomically.

    `meta` carries gesture, phrase, lam, mu, base_model, train settings, train_fusion; the fusion's
    kind and sizes are added from the module.
    """
    mean_feature = np.asarray(mean_feature, dtype=np.float32)
    if mean_feature.shape != (fusion.feature_dim,):
        raise HandsynthError(
            f"mean gesture feature has shape {mean_feature.shape}; expected ({fusion.feature_dim},) "
            "(the Stage I mean.npy)"
        )
    if isinstance(fusion, FlatFusion) and not fusion.is_materialized:
        fusion.materialize()
    out = Path(folder) / HAND1000_DIR
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in fusion.state_dict().items()}
    with files.atomic_path(out / "fusion.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"kind": fusion.kind})
    files.write_npy(out / "mean_feature.npy", mean_feature)
    config = {"mu": 0.7, "train_fusion": True, **meta}
    config.update(
        fusion=fusion.kind, text_dim=fusion.text_dim, seq_len=fusion.seq_len, feature_dim=fusion.feature_dim
    )
    files.write_json(out / "config.json", config)
    return out


def read_hand1000_config(folder: str | Path) -> dict[str, Any]:
    """The `hand1000/config.json` of a model folder (gesture, mu, fusion kind, ...)."""
    part = Path(folder) / HAND1000_DIR
    needed = [part / "config.json", part / "fusion.safetensors", part / "mean_feature.npy"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise HandsynthError(
            f"{folder} is not a Hand1000 model folder: {part} lacks {', '.join(missing)}; "
            "train one with `handsynth train`"
        )
    return json.loads((part / "config.json").read_text(encoding="utf-8"))


def read_feature_file(path: str | Path, rebuild: str, feature_dim: int = FEATURE_DIM) -> np.ndarray:
    """The (feature_dim,) float32 gesture feature in an .npy file; anything else (text, a pickle, an
    .npz, another shape, NaN) is an error naming the file, with `rebuild`: how to make it again."""
    path = Path(path)
    problem = ""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
        # no pickles: a feature file holds numbers only, and unpickling runs code
        value = np.load(path, allow_pickle=False) if head == NPY_MAGIC else None
    except (ValueError, OSError, EOFError) as exc:
        problem = f"numpy cannot read it ({exc})"
    else:
        if value is None:
            problem = "it is an .npz archive" if head.startswith(b"PK") else "it is not an .npy file"
        elif value.dtype.kind not in "fiu":
            problem = f"it holds {value.dtype} values"
        elif value.shape != (feature_dim,):
            problem = f"its shape is {value.shape}"
        elif not np.isfinite(value).all():
            problem = "it holds NaN or inf"
    if problem:
        raise HandsynthError(
            f"{path} is not a gesture feature: {problem}; it must hold {feature_dim} finite numbers. "
            + rebuild
        )
    return value.astype(np.float32)


def load_cast(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on `device` in `dtype`, moved a block of rows at a time.

    Each block is read through its own mapping of the file (closed after it, so the file's pages do not
    pile up in the process), cast on the host, then copied into place: the host holds about one block
    (LOAD_BLOCK_BYTES), and the device never holds the file's fp32 (a flat fusion is 14 GB in fp32,
    7 GB in fp16).
    """
    path = str(path)
    with safe_open(path, framework="pt", device="cpu") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
        row_bytes = {name: f.get_slice(name)[0:1].nbytes if shape else 0 for name, shape in shapes.items()}
    state = {}
    for name, shape in shapes.items():
        if not shape:
            with safe_open(path, framework="pt", device="cpu") as f:
                state[name] = f.get_tensor(name).to(device, dtype)
            continue
        out = torch.empty(shape, dtype=dtype, device=device)
        rows = max(1, LOAD_BLOCK_BYTES // max(1, row_bytes[name]))
        for start in range(0, shape[0], rows):
            stop = min(start + rows, shape[0])  # safetensors slices do not clip at the end
            with safe_open(path, framework="pt", device="cpu") as f:
                out[start:stop] = f.get_slice(name)[start:stop].to(dtype)
        state[name] = out
    return state


def load_hand1000(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[TokenFusion | FlatFusion, torch.Tensor, dict[str, Any]]:
    """(fusion in eval mode, mean feature (feature_dim,), config dict) from `folder/hand1000/`."""
    meta = read_hand1000_config(folder)
    part = Path(folder) / HAND1000_DIR
    fusion = build_fusion(meta["fusion"], meta["text_dim"], meta["seq_len"], meta["feature_dim"])
    state = load_cast(part / "fusion.safetensors", device, dtype)
    try:
        # assign=True swaps the meta tensors of a flat fusion for the loaded ones, with no extra copy.
        fusion.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise HandsynthError(
            f"{part / 'fusion.safetensors'} does not match {part / 'config.json'}: {exc}"
        ) from None
    fusion.eval()
    mean_feature = read_feature_file(
        part / "mean_feature.npy",
        f"Copy the Stage I mean.npy of gesture '{meta.get('gesture')}' (`handsynth features`) over it, "
        "or train the model again with `handsynth train`",
        fusion.feature_dim,
    )
    return fusion, torch.from_numpy(mean_feature).to(device=device, dtype=dtype), meta
