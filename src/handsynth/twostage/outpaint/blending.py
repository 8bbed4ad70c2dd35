"""Which latent pixels each denoising step takes from the canvas (seed 004 §III-D, TWOSTAGE.md §6).

After each DDIM step the sampler blends (Eq. 8): x ← m_i ⊙ x_c + (1 − m_i) ⊙ x, with x_c the canvas
latent, clean (`blend_noise = "clean"`, the literal Eq. 8) or noised to the step's time ("noised", as
Blended Latent Diffusion and diffusers' inpainting do). The modes choose m_i:

- `sequential` (the paper's): the hand mask dilated with a 3×3 kernel, one dilation less per step, so
  the first step keeps the largest region and the last masked step the hand mask itself;
- `naive`: the hand mask at every step;
- `bbox`: each hand crop's square at every step;
- `none`: no blend.

The last `unmasked_steps` steps (2 in the paper) blend nothing in every mode. The expansion is laid
over the masked steps: with T steps and U unmasked, masked step i uses T − U − 1 − i dilations. (Counted
over all T steps, as "(T − 1 − i)" reads on its own, the original mask would fall on an unmasked step
and never be used, against the paper's "arriving at the original".)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from handsynth.errors import HandsynthError

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


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """One dilation of a 0/1 mask of shape (..., H, W) with a 3×3 square kernel."""
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:])
    return F.max_pool2d(flat, kernel_size=3, stride=1, padding=1).reshape(shape)


def blend_masks(
    mask: torch.Tensor,
    steps: int,
    blending: str = "sequential",
    unmasked_steps: int = 2,
    box: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """m_i for each of `steps` steps: 0/1 tensors shaped like `mask` (the latent hand mask); all zeros
    on a step that blends nothing. `box` (the crops' squares at latent size) is needed for `bbox`."""
    check_blend_settings(blending, "noised", unmasked_steps)
    masked = max(steps - unmasked_steps, 0)
    empty = torch.zeros_like(mask)
    if blending == "none" or masked == 0:
        return [empty] * steps
    if blending == "bbox":
        if box is None:
            raise HandsynthError("blending = 'bbox' needs the hand crops' squares (the canvas's box mask)")
        kept = [box.to(mask)] * masked
    elif blending == "naive":
        kept = [mask] * masked
    else:
        kept = [mask]
        for _ in range(masked - 1):
            kept.append(dilate(kept[-1]))
        kept.reverse()  # largest first
    return kept + [empty] * (steps - masked)


def blend(latents: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (8): `known` where the mask is 1, `latents` elsewhere."""
    return mask * known + (1 - mask) * latents
