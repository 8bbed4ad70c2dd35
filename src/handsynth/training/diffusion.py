"""The Stable Diffusion parts every trainer uses: loading the base, encoding text and images, drawing
(t, ε) on the CPU, the noise-prediction loss, and readying a UNet for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from handsynth import hub
from handsynth.errors import HandsynthError


def vae_scale(vae_config: Any) -> int:
    """Image pixels per latent pixel of a VAE (8 for SD), from its config (a dict, as diffusers' are)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


@dataclass
class BaseModels:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any  # DDPM, with the base model's training noise schedule

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel: 8 for SD, 2 for the tiny models."""
        return vae_scale(self.vae.config)

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * self.vae_scale


def load_base_models(base: str, config_key: str = "") -> BaseModels:
    """The base's parts; a failed load names `config_key`, the setting that holds `base`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return BaseModels(
        tokenizer=hub.from_pretrained(CLIPTokenizer, base, config_key, subfolder="tokenizer"),
        text_encoder=hub.from_pretrained(CLIPTextModel, base, config_key, subfolder="text_encoder"),
        vae=hub.from_pretrained(AutoencoderKL, base, config_key, subfolder="vae"),
        unet=hub.from_pretrained(UNet2DConditionModel, base, config_key, subfolder="unet"),
        noise_scheduler=hub.from_pretrained(DDPMScheduler, base, config_key, subfolder="scheduler"),
    )


def token_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """(B, 77) ids, padded to the tokenizer's length; longer captions are truncated as in the reference."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_text(tokenizer: Any, text_encoder: Any, captions: list[str]) -> torch.Tensor:
    """CLIP's last hidden state, (B, 77, D) in fp32."""
    return text_encoder(token_ids(tokenizer, captions).to(text_encoder.device))[0].float()


class PromptEncoder:
    """`encode_text` that encodes each distinct token sequence once, all new ones in one batch, and
    keeps them: a pipeline's stages that share a text encoder share one of these, so the prompt and
    the empty prompt are encoded once per image however many stages and hand crops read them."""

    def __init__(self, text_encoder: Any) -> None:
        self.text_encoder = text_encoder
        self._encoded: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, tokenizer: Any, captions: list[str]) -> torch.Tensor:
        """(B, 77, D) in fp32, as `encode_text(tokenizer, self.text_encoder, captions)`."""
        keys = [tuple(row) for row in token_ids(tokenizer, captions).tolist()]
        new = [key for key in dict.fromkeys(keys) if key not in self._encoded]
        if new:
            ids = torch.tensor(new, device=self.text_encoder.device)
            self._encoded.update(zip(new, self.text_encoder(ids)[0].float(), strict=True))
        return torch.stack([self._encoded[key] for key in keys])


@torch.no_grad()
def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by the empty prompt with probability `p`, one draw per caption: the
    unconditional branch that classifier-free guidance samples with is then trained too."""
    dropped = torch.rand(len(captions), generator=generator) < p
    return ["" if drop else caption for caption, drop in zip(captions, dropped.tolist(), strict=True)]


def encode_images(vae: Any, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z0 = a sample of the VAE posterior times the scaling factor (0.18215 for SD v1), in fp32."""
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return (posterior.sample(generator=generator) * vae.config.scaling_factor).float()


def draw_timesteps_and_noise(
    generator: torch.Generator, latents: torch.Tensor, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{0..T-1} and ε ~ N(0, I), drawn on the CPU so that every device gets the same numbers."""
    t = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    return t.to(latents.device), noise.to(latents.device, latents.dtype)


def noise_target(noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """What the UNet learns to predict: ε, or v for a v-prediction base."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, t)
    raise HandsynthError(f"the base model's scheduler predicts '{kind}'; training supports epsilon and v")


def diffusion_loss(
    unet: Any,
    noise_scheduler: Any,
    latents: torch.Tensor,
    embeddings: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample MSE(ε_θ(z_t, t, d), ε), shape (B,), computed in fp32."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=embeddings).sample
    target = noise_target(noise_scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def ready_for_training(model: Any, device: torch.device, gradient_checkpointing: bool) -> Any:
    """A UNet or ControlNet on `device` in train mode, with torch's SDPA attention whatever the base
    set, and activations recomputed in the backward pass when asked."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = model.to(device).train()
    model.set_attn_processor(AttnProcessor2_0())
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def ddim_scheduler(scheduler_config: Any) -> Any:
    """The samplers' scheduler: DDIM on the base model's noise schedule, with the predicted x0 never
    clipped to [−1, 1] (a pixel-space setting: SD latents leave that range), whatever the base says."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config, clip_sample=False)


def record_generators(records: list[dict]) -> list[torch.Generator]:
    """One CPU generator per record, seeded with the record's "seed": each image is drawn from its own
    seed, so it is the same whichever batch or process made it."""
    return [torch.Generator("cpu").manual_seed(int(record["seed"])) for record in records]


def draw_records(pipe: Any, records: list[dict], **kwargs: Any) -> list[Any]:
    """The images of a diffusers Stable Diffusion pipeline for `records`, each from its prompt and its
    own seed, with DDIM's eta 0; the records share steps, guidance, height, width and negative_prompt
    (when they have one). `kwargs` go to the pipeline (a condition image, its scale)."""
    first = records[0]
    negative = first.get("negative_prompt")
    return pipe(
        [r["prompt"] for r in records],
        negative_prompt=[r["negative_prompt"] for r in records] if negative else None,
        num_inference_steps=first["steps"],
        guidance_scale=first["guidance"],
        height=first["height"],
        width=first["width"],
        eta=0.0,
        generator=record_generators(records),
        **kwargs,
    ).images


def load_sampling_pipeline(
    pipeline: Any, base: str, config_key: str, device: str, parts: dict[str, Any] | None = None
) -> Any:
    """A diffusers Stable Diffusion pipeline class loaded from `base` (with `parts` given, a ControlNet
    or an adapter) on `device` in its inference dtype, sampling with DDIM as
    handsynth's own samplers do, without the safety checker (it blanks images, the metrics need them)."""
    torch_device = hub.resolve_device(device)
    pipe = hub.from_pretrained(
        pipeline,
        base,
        config_key,
        dtype=hub.resolve_dtype(None, torch_device),
        safety_checker=None,
        requires_safety_checker=False,
        **(parts or {}),
    ).to(torch_device)
    pipe.scheduler = ddim_scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
