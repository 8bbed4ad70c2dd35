"""Which latent pixels each denoising step takes from the canvas (seed 004 §III-D, TWOSTAGE.md §6).

After each DDIM step the sampler blends (Eq. 8): x ← m_i ⊙ x_c + (1 − m_i) ⊙ x, with x_c the canvas
latent, clean (`blend_noise = "clean"`, the literal Eq. 8) or noised to the step's time ("noised", as
Blended Latent Diffusion and diffusers' inpainting do). The modes choose m_i:

- `sequential` (the paper's): the image-resolution hand mask m_c dilated with a 3×3 kernel, one
  dilation less per step, so the first step keeps the largest region and the last masked step the hand
  mask itself;
- `naive`: the hand mask at every step;
- `bbox`: each hand crop's square at every step;
- `none`: no blend.

Every m_i is made at image resolution and reduced to the latent by `canvas.latent_mask`, as the UNet's
mask input is. The expansion grows the hand by one image pixel per step (47 px, about 6 latent pixels,
at T = 50): it widens the hand's border and stays local. Dilating the latent mask instead would grow it
8 times as fast and, for a small hand, blend the whole latent over the first steps.

The last `unmasked_steps` steps (2 in the paper) blend nothing in every mode. The expansion is laid
over the masked steps: with T steps and U unmasked, masked step i uses T − U − 1 − i dilations. (Counted
over all T steps, as "(T − 1 − i)" reads on its own, the original mask would fall on an unmasked step
and never be used, against the paper's "arriving at the original".)
"""

from __future__ import annotations

import numpy as np
import torch

from handsynth.errors import HandsynthError
from handsynth.perception.sam import dilate_mask
from handsynth.twostage.outpaint.canvas import latent_mask

BLENDINGS = ("sequential", "naive", "bbox", "none")
BLEND_NOISE = ("noised", "clean")


def check_blend_settings(blending: str, blend_noise: str, unmasked_steps: int) -> None:
    if blending not in BLENDINGS:
        raise HandsynthError(f"outpaint.blending must be one of {', '.join(BLENDINGS)}, got '{blending}'")
    if blend_noise not in BLEND_NOISE:
        raise HandsynthError(
            f"outpaint.blend_noise must be one of {', '.join(BLEND_NOISE)}, got '{blend_noise}'"
        )
    if unmasked_steps < 0:
        raise HandsynthError(f"outpaint.unmasked_steps must be >= 0, got {unmasked_steps}")


def blend_masks(
    mask: np.ndarray,
    steps: int,
    blending: str = "sequential",
    unmasked_steps: int = 2,
    box: np.ndarray | None = None,
    factor: int = 8,
) -> list[np.ndarray]:
    """m_i for each of `steps` steps: (H/f, W/f) bool latent masks, from the (H, W) image-resolution
    hand mask m_c; all False on a step that blends nothing. `box` (the crops' squares, (H, W)) is
    needed for `bbox`; `factor` is the VAE's downsampling."""
    check_blend_settings(blending, "noised", unmasked_steps)
    mask = np.asarray(mask, dtype=bool)
    masked = max(steps - unmasked_steps, 0)
    empty = np.zeros((mask.shape[0] // factor, mask.shape[1] // factor), dtype=bool)
    if blending == "none" or masked == 0:
        return [empty] * steps
    if blending == "bbox":
        if box is None:
            raise HandsynthError("blending = 'bbox' needs the hand crops' squares (the canvas's box mask)")
        kept = [latent_mask(box, factor)] * masked
    elif blending == "naive":
        kept = [latent_mask(mask, factor)] * masked
    else:
        grown = [mask]
        for _ in range(masked - 1):
            grown.append(dilate_mask(grown[-1], 3))
        kept = [latent_mask(m, factor) for m in reversed(grown)]  # largest first
    return kept + [empty] * (steps - masked)


def blend(latents: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (8): `known` where the mask is 1, `latents` elsewhere."""
    return mask * known + (1 - mask) * latents
