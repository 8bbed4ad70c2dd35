"""Loading pretrained weights by hub id or local folder, with an error that says what to do offline,
and choosing the device and dtype they run in."""

from __future__ import annotations

import os
from typing import Any

import torch

from handsynth.errors import HandsynthError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def from_pretrained(cls: Any, name_or_path: str, config_key: str = "", **kwargs: Any) -> Any:
    """`cls.from_pretrained(name_or_path, **kwargs)`, turning a failed load into a HandsynthError.

    Hugging Face's own settings (HF_HUB_OFFLINE, HF_HOME, HF_TOKEN) are honoured as they are.
    `config_key` names the setting that holds `name_or_path`, for the message.
    """
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        if os.path.exists(name_or_path):
            where = "a local folder"
        elif os.path.isabs(name_or_path) or name_or_path.startswith("."):  # a hub id is never either
            where = "a folder that does not exist,"
        else:
            where = "a hub id"
        hint = (
            "HF_HUB_OFFLINE is set, so only the local cache is searched"
            if offline()
            else "check the id and your network, or log in with `hf auth login` for gated models"
        )
        raise HandsynthError(
            f"could not load {cls.__name__} from {where} '{name_or_path}': {exc}\n"
            f"  {hint}. To use a local copy, set {config_key or 'the config key'} to its folder "
            "(a folder written by save_pretrained)."
        ) from None


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, gpu_default: torch.dtype = torch.float16
) -> torch.dtype:
    """None or "auto": `gpu_default` on CUDA, fp32 elsewhere; a dtype or its name as it is."""
    if dtype is None or dtype == "auto":
        return gpu_default if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HandsynthError(f"unknown dtype '{dtype}'; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is cuda when a GPU is visible, else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise HandsynthError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` runs: the execution device of its accelerate offload hook (its weights wait on
    the CPU until its forward), else the device of its weights."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else next(module.parameters()).device
