"""Stage 1's network (seed 004 §III-B; TWOSTAGE.md §1, §3): the SD UNet with conv_in widened to take
the pose condition c_p, and a mask head that reads the UNet's decoder.

- c_p has 11 channels: the 10 finger heatmaps and the hand mask, resized bilinearly to the latent and
  concatenated after the 4 latent channels (`condition_tensor`).
- `widen_conv_in` copies the pretrained conv_in weights and bias into a 4 + 11 channel conv and fills
  the new channels with small random values; the UNet stays a plain diffusers UNet (in_channels = 15).
- `MaskHead` is n transposed convs (kernel 2, stride 2) with SiLU between and a sigmoid at the end.
  It reads the feature entering the UNet's last upsampler: a forward pre-hook on that upsampler
  (`mask_feature_module`) keeps its input during the UNet's own forward pass, so the UNet is called
  unchanged. That upsampler doubles the feature to the latent size (later up blocks keep the size), so
  the feature is at latent / 2 and n = log2(2 · VAE scale): 4 for SD (640 channels at 32² for 512 px).
- `HandGenerator` runs both: (x_t, t, text, c_p) -> (ε̂_θ, m_θ), m_θ at image resolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from handsynth.errors import HandsynthError
from handsynth.twostage.data.heatmaps import NUM_CHANNELS as HEATMAP_CHANNELS

LATENT_CHANNELS = 4
CONDITION_CHANNELS = HEATMAP_CHANNELS + 1  # the heatmaps, then the mask
# The new conv_in channels start as N(0, σ²), σ this share of the pretrained weights' RMS: random as
# the paper says, yet small enough that the pretrained UNet's behaviour is kept at the first step.
NEW_CHANNEL_SCALE = 0.01


def widen_conv_in(
    unet: Any, extra_channels: int = CONDITION_CHANNELS, generator: torch.Generator | None = None
) -> Any:
    """Give `unet` a conv_in with `extra_channels` more inputs, in place; returns the UNet.

    The first inputs keep the pretrained weights and the bias; `in_channels` is updated in the config
    so that save_pretrained / from_pretrained round-trip. (Loading with `in_channels=15,
    ignore_mismatched_sizes=True` instead would leave conv_in uninitialised in diffusers 0.42.)
    """
    old = unet.conv_in
    if old.in_channels != LATENT_CHANNELS:
        raise HandsynthError(
            f"the base UNet takes {old.in_channels} input channels; the hand generator widens a "
            f"{LATENT_CHANNELS}-channel text-to-image UNet (an SD 1.x base such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5)"
        )
    weight = old.weight
    new = torch.nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight[:, : old.in_channels] = weight
        sigma = NEW_CHANNEL_SCALE * weight.float().pow(2).mean().sqrt()
        shape = (old.out_channels, extra_channels, *old.kernel_size)
        noise = torch.randn(shape, generator=generator).to(weight.device, weight.dtype)
        new.weight[:, old.in_channels :] = noise * sigma.to(weight.dtype)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


def mask_feature_module(unet: Any) -> torch.nn.Module:
    """The UNet's last upsampler, whose input the mask head reads."""
    blocks = [block for block in unet.up_blocks if getattr(block, "upsamplers", None)]
    if not blocks:
        raise HandsynthError("the UNet has no upsampling decoder block for the mask head to read")
    return blocks[-1].upsamplers[0]


def mask_head_layers(vae_scale: int) -> int:
    """n = log2(image / feature) with the feature at latent / 2: log2(2 · vae_scale)."""
    layers = math.log2(2 * vae_scale)
    if not layers.is_integer():
        raise HandsynthError(f"the VAE scale must be a power of 2 for the mask head, got {vae_scale}")
    return int(layers)


class MaskHead(ModelMixin, ConfigMixin):
    """`num_layers` transposed convs (kernel 2, stride 2), SiLU between, sigmoid out: m_θ in [0, 1].

    Each layer halves the channels (640 -> 320 -> 160 -> 80 -> 1 for SD 1.5); the paper leaves the
    widths open.
    """

    @register_to_config
    def __init__(self, in_channels: int = 640, num_layers: int = 4) -> None:
        super().__init__()
        widths = [in_channels] + [max(1, in_channels >> (i + 1)) for i in range(num_layers - 1)] + [1]
        layers: list[torch.nn.Module] = []
        for i in range(num_layers):
            layers.append(torch.nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=2, stride=2))
            if i < num_layers - 1:
                layers.append(torch.nn.SiLU())
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(feature))


def size_multiple(unet: Any, vae_scale: int) -> int:
    """Image sides must be multiples of this (the VAE's scale times the UNet's downsampling), or the
    decoder's feature, and so the mask, would not line up with the image."""
    return vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)


def build_mask_head(unet: Any, vae_scale: int) -> MaskHead:
    """A new mask head that fits `unet`'s decoder and a VAE that downsamples by `vae_scale`."""
    return MaskHead(in_channels=mask_feature_module(unet).channels, num_layers=mask_head_layers(vae_scale))


class HandGenerator(torch.nn.Module):
    """H_θ(x_t, t, c_p) -> (ε̂_θ, m_θ) (seed 004 Eq. 5): one UNet pass, the mask head on its decoder."""

    def __init__(self, unet: Any, mask_head: MaskHead) -> None:
        super().__init__()
        self.unet = unet
        self.mask_head = mask_head
        self._feature: torch.Tensor | None = None
        self._hook = mask_feature_module(unet).register_forward_pre_hook(self._keep_feature)

    def _keep_feature(self, module: torch.nn.Module, args: tuple) -> None:
        self._feature = args[0]

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        condition: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sample = torch.cat([noisy_latents, condition.to(noisy_latents.dtype)], dim=1)
        noise_pred = self.unet(sample, timesteps, encoder_hidden_states=encoder_hidden_states).sample
        feature, self._feature = self._feature, None
        return noise_pred, self.mask_head(feature)


def condition_tensor(
    heatmaps: torch.Tensor, masks: torch.Tensor | None, latent_size: tuple[int, int]
) -> torch.Tensor:
    """c_p, (B, 11, h, w): heatmaps (B, 10, H, W) and masks (B, 1, H, W) in [0, 1] (None: zeros),
    resized bilinearly to the latent.

    With antialiasing, as PIL's bilinear resize: at 512 -> 64 the heatmaps' σ is 10 px and the
    stride 8 px, and plain point sampling would alias the finger ridges.
    """
    if masks is None:
        masks = torch.zeros_like(heatmaps[:, :1])
    both = torch.cat([heatmaps, masks.to(heatmaps.dtype)], dim=1).float()
    return F.interpolate(both, size=latent_size, mode="bilinear", align_corners=False, antialias=True)
