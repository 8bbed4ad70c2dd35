"""Hand1000 inference: Stable Diffusion with the prompt embedding fused with the mean gesture feature.

`d = (1−μ)·fc(e, f_mean) + μ·e` with `e` the CLIP text encoder's last hidden state (as SD), DDIM with
eta 0, and classifier-free guidance whose unconditional branch is the plain empty-prompt embedding
(SPEC §A Inference). The pipeline composes a diffusers StableDiffusionPipeline, which does the
sampling from `prompt_embeds` / `negative_prompt_embeds`, with the `hand1000/` fusion and feature.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from handsynth import hub
from handsynth.errors import HandsynthError
from handsynth.hand1000.fusion import double_fuse, load_hand1000
from handsynth.hub import resolve_device
from handsynth.training.diffusion import ddim_scheduler

log = logging.getLogger(__name__)


def warn_long_prompts(tokenizer: Any, prompts: list[str]) -> list[str]:
    """Log a warning naming each prompt longer than the tokenizer's context; return those prompts."""
    limit = tokenizer.model_max_length
    long = []
    for prompt, ids in zip(prompts, tokenizer(prompts, truncation=False).input_ids, strict=True):
        if len(ids) > limit:
            long.append(prompt)
            log.warning(
                "prompt is %d tokens, longer than CLIP's %d: the tokenizer truncates it, so its end is "
                "ignored. Shorten it: %r",
                len(ids),
                limit,
                prompt,
            )
    return long


class Hand1000Pipeline:
    """A StableDiffusionPipeline (`.sd`) plus the fusion (`.fusion`), mean feature and hand1000 config.

    `Hand1000Pipeline.from_pretrained(folder)(prompt, mu=0.7)` returns diffusers'
    StableDiffusionPipelineOutput; `mu=1` is plain Stable Diffusion on the same weights.
    """

    def __init__(
        self,
        sd: StableDiffusionPipeline,
        fusion: torch.nn.Module,
        mean_feature: torch.Tensor,
        meta: dict[str, Any],
        name: str = "",
    ) -> None:
        # SD v1.4 ships a PNDM scheduler; Hand1000 samples with DDIM on the same noise schedule.
        sd.scheduler = ddim_scheduler(sd.scheduler.config)
        self.sd, self.fusion, self.mean_feature, self.meta, self.name = sd, fusion, mean_feature, meta, name

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None
    ) -> Hand1000Pipeline:
        """Load a Hand1000 model folder: the diffusers parts and `hand1000/`, on `device` in `dtype`."""
        device = resolve_device(device)
        dtype = hub.resolve_dtype(dtype, device)  # None: fp16 on a GPU, the reference's inference precision
        if not (Path(folder) / "model_index.json").is_file():
            raise HandsynthError(
                f"{folder} is not a model folder (no model_index.json); train one with `handsynth train`"
            )
        fusion, mean_feature, meta = load_hand1000(folder, device, dtype)
        sd = hub.from_pretrained(StableDiffusionPipeline, str(folder), dtype=dtype).to(device)
        return cls(sd, fusion, mean_feature, meta, name=str(folder))

    @property
    def device(self) -> torch.device:
        return self.sd.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sd.unet.dtype

    @property
    def tokenizer(self) -> Any:
        return self.sd.tokenizer

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Hand1000Pipeline:
        self.sd.to(device=device, dtype=dtype)
        self.fusion.to(device=device, dtype=dtype)
        self.mean_feature = self.mean_feature.to(device=device, dtype=dtype)
        return self

    @property
    def default_mu(self) -> float:
        return float(self.meta.get("mu", 0.7))

    @property
    def default_size(self) -> int:
        """The resolution the model was trained at (`hand1000/config.json`); without that record, the
        UNet's sample_size times the VAE's scale factor, as diffusers defaults."""
        if self.meta.get("resolution"):
            return int(self.meta["resolution"])
        return self.sd.unet.config.sample_size * self.sd.vae_scale_factor

    @torch.no_grad()
    def encode(
        self, prompt: str | list[str], mu: float | None = None, guidance: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(d, plain empty-prompt embedding or None): the embeddings the UNet is conditioned on."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise HandsynthError("no prompt given")
        mu = self.default_mu if mu is None else float(mu)
        warn_long_prompts(self.tokenizer, prompts)
        e, uncond = self.sd.encode_prompt(prompts, self.device, 1, guidance)
        d = double_fuse(e, self.fusion(e, self.mean_feature), mu)
        return d, uncond

    def __call__(
        self,
        prompt: str | list[str],
        mu: float | None = None,
        num_inference_steps: int = 45,
        guidance_scale: float = 3.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        **kwargs: Any,
    ) -> StableDiffusionPipelineOutput:
        """Images for `prompt` (one or a list); extra keyword arguments go to StableDiffusionPipeline.

        `height` and `width` default to `default_size`, the resolution the model was trained at.
        """
        d, uncond = self.encode(prompt, mu, guidance=guidance_scale > 1.0)
        return self.sd(
            prompt_embeds=d,
            negative_prompt_embeds=uncond,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=self.default_size if height is None else height,
            width=self.default_size if width is None else width,
            num_images_per_prompt=num_images_per_prompt,
            eta=0.0,
            generator=generator,
            output_type=output_type,
            **kwargs,
        )
