"""Where the two-stage method's trained models are when the config names no folder for them."""

from __future__ import annotations

from pathlib import Path

from handsynth.config import Config


def default_handgen_dir(config: Config) -> Path:
    """handgen.model_dir, else <run>/models/handgen."""
    return Path(config.handgen.model_dir or Path(config.run.output_dir) / "models" / "handgen")


def default_lora_dir(config: Config) -> Path:
    """outpaint.lora_dir, else <run>/models/outpaint-lora."""
    return Path(config.outpaint.lora_dir or Path(config.run.output_dir) / "models" / "outpaint-lora")
