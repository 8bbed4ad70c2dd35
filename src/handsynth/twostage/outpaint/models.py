"""The body outpainter's models and the forward pass that training and sampling share (seed 004
§III-C, TWOSTAGE.md §4).

An OpenPose ControlNet (`lllyasviel/control_v11p_sd15_openpose`) on the SD 1.5 inpainting UNet, whose
9 input channels are the latent, the mask of the region to paint (1 − m, diffusers' convention) and the
latent of the masked canvas. A plain 4-channel SD UNet is accepted too: the mask then acts only through
the blend. The ControlNet carries a LoRA (rank 8, alpha 8, on to_k, to_q, to_v, to_out.0), saved on its
own with `save_lora_adapter` beside `outpaint.json`, which names the ControlNet and base it was trained
on: what a LoRA folder is loaded with when `outpaint.base` and `outpaint.controlnet` are left empty.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handsynth import files, hub
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.training.diffusion import ddim_scheduler, load_base_models, vae_scale

log = logging.getLogger(__name__)

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-inpainting"
DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_openpose"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_META = "outpaint.json"
UNET_CHANNELS = (4, 9)


def default_lora_dir(config: Config) -> Path:
    """outpaint.lora_dir, else <run>/models/outpaint-lora."""
    return Path(config.outpaint.lora_dir or Path(config.run.output_dir) / "models" / "outpaint-lora")


@dataclass
class OutpaintModels:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    controlnet: Any
    scheduler: Any  # DDIM on the base's noise schedule, clip_sample off

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel: 8 for SD, 2 for the tiny models."""
        return vae_scale(self.vae.config)

    @property
    def inpainting(self) -> bool:
        """True for a 9-channel inpainting UNet, False for a plain 4-channel one."""
        return self.unet.config.in_channels == 9

    @property
    def device(self) -> torch.device:
        return hub.execution_device(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device: torch.device | str, dtype: torch.dtype) -> OutpaintModels:
        for model in (self.text_encoder, self.vae, self.unet, self.controlnet):
            model.to(device=device, dtype=dtype)
        return self


def check_unet(unet: Any, name: str) -> None:
    channels = unet.config.in_channels
    if channels not in UNET_CHANNELS:
        raise HandsynthError(
            f"the UNet of '{name}' reads {channels} channels; the outpainter takes SD inpainting's 9 "
            "(latent, mask, masked image) or a plain SD UNet's 4"
        )


def outpaint_sources(
    base: str | None = None, controlnet: str | None = None, lora: str | Path | None = None
) -> tuple[str, str]:
    """The base and ControlNet to load: each as given, else what the LoRA folder's outpaint.json records
    (what the LoRA was trained on), else the paper's (DEFAULT_BASE, DEFAULT_CONTROLNET)."""
    meta = read_lora_meta(lora) if lora is not None else {}
    return (
        str(base or meta.get("base") or DEFAULT_BASE),
        str(controlnet or meta.get("controlnet") or DEFAULT_CONTROLNET),
    )


def load_controlnet(name: str) -> Any:
    from diffusers import ControlNetModel

    controlnet = hub.from_pretrained(ControlNetModel, name, config_key="outpaint.controlnet")
    if controlnet.config.in_channels != 4:
        raise HandsynthError(
            f"the ControlNet '{name}' reads {controlnet.config.in_channels} latent channels; an SD 1.5 "
            "ControlNet (4) is needed"
        )
    return controlnet


def load_outpaint_models(base: str = DEFAULT_BASE, controlnet: str = DEFAULT_CONTROLNET) -> OutpaintModels:
    """The base's tokenizer, text encoder, VAE and UNet, the ControlNet, and DDIM (fp32, on the CPU)."""
    parts = load_base_models(base, config_key="outpaint.base")
    check_unet(parts.unet, base)
    scheduler = ddim_scheduler(parts.noise_scheduler.config)
    return OutpaintModels(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        unet=parts.unet,
        controlnet=load_controlnet(controlnet),
        scheduler=scheduler,
    )


# ------------------------------------------------------------------------------------------- LoRA


def add_lora(controlnet: Any, rank: int, alpha: int) -> dict[str, torch.nn.Parameter]:
    """Freeze the ControlNet, attach the LoRA and return its (trainable) parameters by name.

    The B matrices start at zero (peft's default), so the ControlNet starts as it was.
    """
    from peft import LoraConfig

    if rank < 1:
        raise HandsynthError(f"outpaint.lora_rank must be >= 1, got {rank}")
    controlnet.requires_grad_(False)
    controlnet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS))
    return lora_parameters(controlnet)


def lora_parameters(controlnet: Any) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in controlnet.named_parameters() if ".lora_" in name}


def save_lora(controlnet: Any, folder: str | Path, meta: dict[str, Any]) -> Path:
    """The LoRA alone (`pytorch_lora_weights.safetensors`) and `outpaint.json`, written atomically."""
    with files.atomic_dir(folder) as tmp:
        controlnet.save_lora_adapter(tmp, weight_name=LORA_WEIGHTS)
        files.write_json(tmp / LORA_META, meta)
    return Path(folder)


def read_lora_meta(folder: str | Path) -> dict[str, Any]:
    """A LoRA folder's `outpaint.json` (the base and ControlNet it was trained on); {} without one."""
    path = Path(folder) / LORA_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HandsynthError(f"{path} is not valid JSON ({exc}); train the LoRA again") from None
    if not isinstance(meta, dict):
        raise HandsynthError(f"{path} is not a JSON object; train the LoRA again")
    return meta


# torch's "size mismatch for <param>: copying a param with shape <A> from checkpoint, the shape in
# current model is <B>"
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, "
                           r"the shape in current model is (.+?)\.?$", re.MULTILINE)  # fmt: skip


def load_lora(controlnet: Any, folder: str | Path, controlnet_name: str = "") -> dict[str, Any]:
    """Attach a saved outpainter LoRA to `controlnet` (loaded from `controlnet_name`); return its
    `outpaint.json`. A file that is not safetensors, or tensors that do not fit, name the folder."""
    from safetensors import SafetensorError

    folder = Path(folder)
    weights = folder / LORA_WEIGHTS
    if not weights.is_file():
        raise HandsynthError(
            f"no outpainter LoRA in {folder} (no {LORA_WEIGHTS}); train one with `handsynth outpaint train`"
        )
    meta = read_lora_meta(folder)
    again = "train it again with `handsynth outpaint train`, or set outpaint.lora_dir to another LoRA folder"
    try:
        # prefix=None: the keys are saved without a prefix, and the default one would filter them all out
        controlnet.load_lora_adapter(str(folder), prefix=None, weight_name=LORA_WEIGHTS)
    except SafetensorError as exc:
        raise HandsynthError(
            f"the outpainter LoRA {weights} is not a readable safetensors file ({exc}); {again}"
        ) from None
    except (RuntimeError, ValueError, KeyError) as exc:
        mismatch = SIZE_MISMATCH.search(str(exc))
        detail = (
            f"{mismatch[1]} is {mismatch[2]} in the file, the ControlNet expects {mismatch[3]}"
            if mismatch
            else str(exc).strip().splitlines()[0]
        )
        trained = (
            f" (outpaint.json says it was trained on '{meta['controlnet']}')"
            if meta.get("controlnet")
            else ""
        )
        raise HandsynthError(
            f"the outpainter LoRA in {folder} does not fit the ControlNet '{controlnet_name or 'given'}'"
            f"{trained}: {detail}. A LoRA of `handsynth outpaint train` for this ControlNet is expected "
            "(set outpaint.controlnet to the one it was trained on)"
        ) from None
    return meta


def warn_if_trained_elsewhere(meta: dict[str, Any], base: str, controlnet: str) -> None:
    for key, used in (("controlnet", controlnet), ("base", base)):
        trained = meta.get(key)
        if trained and str(trained) != str(used):
            log.warning(
                "the outpainter LoRA was trained on %s '%s', and is now used on '%s'", key, trained, used
            )


# ---------------------------------------------------------------------------------- tensors


def pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the VAE's input."""
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0


def condition_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 OpenPose images -> (B, 3, H, W) in [0, 1], as the ControlNet was trained."""
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).contiguous().float() / 255.0


def masked_pixels(canvas: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The canvas with everything outside the hand mask set to 0 (grey): SD inpainting's masked image."""
    keep = torch.from_numpy(np.asarray(mask, dtype=np.float32)).reshape(canvas.shape[0], 1, *canvas.shape[2:])
    return canvas * keep


@torch.no_grad()
def encode_mean(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's mean, scaled: the canvas latents are inputs, fixed rather than sampled."""
    latent = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return latent * vae.config.scaling_factor


def mask_input(latent_masks: np.ndarray) -> torch.Tensor:
    """(B, h, w) bool hand masks at latent size -> the UNet's (B, 1, h, w) mask channel, 1 = paint."""
    return 1.0 - torch.from_numpy(np.asarray(latent_masks, dtype=np.float32))[:, None]


def predict_noise(
    unet: Any,
    controlnet: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    embeddings: torch.Tensor,
    condition: torch.Tensor,
    paint_mask: torch.Tensor | None,
    masked_latents: torch.Tensor | None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """ε (or v) from the UNet, with the ControlNet's residuals for the skeleton `condition`.

    The ControlNet reads the 4-channel latent (as diffusers' ControlNet inpainting pipeline does); a
    9-channel UNet also reads `paint_mask` and `masked_latents` concatenated after it.
    """
    down, mid = controlnet(
        latents,
        timesteps,
        encoder_hidden_states=embeddings,
        controlnet_cond=condition,
        conditioning_scale=conditioning_scale,
        return_dict=False,
    )
    if unet.config.in_channels == 9:
        latents = torch.cat([latents, paint_mask, masked_latents], dim=1)
    return unet(
        latents,
        timesteps,
        encoder_hidden_states=embeddings,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per item: the mean squared error over the latent pixels of `region` (B, 1, h, w), in fp32."""
    squared = (prediction.float() - target.float()) ** 2 * region
    count = region.sum(dim=(1, 2, 3)) * prediction.shape[1]
    return squared.sum(dim=(1, 2, 3)) / count.clamp(min=1.0)
