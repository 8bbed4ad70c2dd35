"""Training memory at SD v1.4 size: bytes of parameters, gradients and optimiser state, nothing trained.

The models are built on the meta device from the real SD v1.4 configs (UNet 859.5 M, VAE 83.7 M,
CLIP ViT-L/14 text encoder 123.1 M parameters), so nothing is allocated; bytes come from the
parameter counts and each setting's dtypes. Activations are left out (they depend on batch, latent
size and gradient checkpointing). Rows:

- reference: the official code. Flat fusion (3.5 B parameters, fp32, never trained but resident),
  fp32 Adam over the whole UNet, fp32 frozen VAE and text encoder, d (77x768) with its Adam.
- default: this project's defaults on a CUDA GPU with bitsandbytes installed (`model.fusion =
  "token"`, trained; `mixed_precision = "auto"` -> bf16: frozen parts in bf16, fp32 master
  weights; `optimizer = "auto"` -> bitsandbytes blockwise 8-bit Adam, 1 byte per state + one fp32
  absmax per 256 values, tensors under 4096 values stay 32-bit). When bitsandbytes is installed,
  that byte count is checked against a real 8-bit Adam step on a small UNet (it runs on CPU).
- default-fp32-adam: the same defaults where "auto" resolves to fp32 and torch Adam: on CPU, or on
  a GPU without bitsandbytes.
- lora-r4 / lora-r8: `train.lora_rank`, UNet frozen in fp32, Adam over the LoRA and the token fusion.

    python benchmarks/train_memory.py
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from handsynth import files
from handsynth.hand1000.fusion import fusion_parameter_count
from handsynth.hand1000.trainer import LORA_TARGETS

RESULTS = Path(__file__).resolve().parent / "results" / "train_memory.json"
SEQ_LEN, TEXT_DIM = 77, 768

# CompVis/stable-diffusion-v1-4: unet/config.json, vae/config.json, text_encoder/config.json.
SD14_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD14_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=512,
)
SD14_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)

FP32, BF16 = 4, 2
ADAM_FP32 = 8  # exp_avg + exp_avg_sq


def adam8bit_bytes(numel: int) -> int:
    """bitsandbytes' blockwise 8-bit Adam state of one tensor: 2 uint8 states, 2 fp32 absmax per
    256 values and two 256-entry fp32 quantisation maps; under 4096 values, 2 fp32 states."""
    if numel < 4096:
        return numel * ADAM_FP32
    return 2 * numel + 2 * 4 * math.ceil(numel / 256) + 2 * 256 * 4


def measured_adam8bit_bytes() -> dict | None:
    """`adam8bit_bytes` against a real bitsandbytes step (it runs on CPU) on a small SD-shaped UNet."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    import bitsandbytes as bnb

    unet = UNet2DConditionModel(
        **{**SD14_UNET, "block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 64}
    )
    optimizer = bnb.optim.Adam8bit(unet.parameters(), lr=1e-4)
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the state
    measured = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    formula = sum(adam8bit_bytes(p.numel()) for p in unet.parameters())
    return {"bitsandbytes": bnb.__version__, "measured_bytes": measured, "formula_bytes": formula}


def lora_parameter_count(unet: torch.nn.Module, rank: int) -> int:
    """r·(in + out) for every Linear that peft wraps (names ending in to_q, to_k, to_v, to_out.0)."""
    count = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in LORA_TARGETS):
            count += rank * (module.in_features + module.out_features)
    return count


def row(params: dict[str, float], grads: dict[str, float], optimizer: dict[str, float]) -> dict:
    total = sum(params.values()) + sum(grads.values()) + sum(optimizer.values())
    return {
        "params_bytes": params,
        "grads_bytes": grads,
        "optimizer_bytes": optimizer,
        "total_bytes": total,
        "total_gib": round(total / 2**30, 3),
    }


def main() -> None:
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(**SD14_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    n_text = sum(p.numel() for p in text.parameters())
    n_flat = fusion_parameter_count("flat", TEXT_DIM, SEQ_LEN)
    n_token = fusion_parameter_count("token", TEXT_DIM, SEQ_LEN)
    n_d = SEQ_LEN * TEXT_DIM
    unet_adam8 = sum(adam8bit_bytes(p.numel()) for p in unet.parameters())

    rows = {
        "reference": row(
            {
                "unet": n_unet * FP32,
                "fusion_flat": n_flat * FP32,
                "vae+text": (n_vae + n_text) * FP32,
                "d": n_d * FP32,
            },
            {"unet": n_unet * FP32, "d": n_d * FP32},
            {"unet_adam": n_unet * ADAM_FP32, "d_adam": n_d * ADAM_FP32},
        ),
        "default": row(
            {"unet": n_unet * FP32, "fusion_token": n_token * FP32, "vae+text": (n_vae + n_text) * BF16},
            {"unet": n_unet * FP32, "fusion_token": n_token * FP32},
            {"unet_adam8bit": unet_adam8, "fusion_adam": n_token * ADAM_FP32},
        ),
        "default-fp32-adam": row(
            {"unet": n_unet * FP32, "fusion_token": n_token * FP32, "vae+text": (n_vae + n_text) * FP32},
            {"unet": n_unet * FP32, "fusion_token": n_token * FP32},
            {"unet_adam": n_unet * ADAM_FP32, "fusion_adam": n_token * ADAM_FP32},
        ),
    }
    for rank in (4, 8):
        n_lora = lora_parameter_count(unet, rank)
        rows[f"lora-r{rank}"] = row(
            {
                "unet": n_unet * FP32,
                "lora": n_lora * FP32,
                "fusion_token": n_token * FP32,
                "vae+text": (n_vae + n_text) * FP32,
            },
            {"lora": n_lora * FP32, "fusion_token": n_token * FP32},
            {"lora_adam": n_lora * ADAM_FP32, "fusion_adam": n_token * ADAM_FP32},
        )
        rows[f"lora-r{rank}"]["lora_parameters"] = n_lora
    reference = rows["reference"]["total_bytes"]
    for r in rows.values():
        r["ratio_to_reference"] = round(r["total_bytes"] / reference, 4)

    counts = {
        "unet": n_unet,
        "vae": n_vae,
        "text_encoder": n_text,
        "fusion_flat": n_flat,
        "fusion_token": n_token,
    }
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    print(f"{'setting':<18}{'params GiB':>12}{'grads GiB':>11}{'optim GiB':>11}{'total GiB':>11}{'ratio':>8}")
    for name, r in rows.items():
        p, g, o = (sum(r[k].values()) / 2**30 for k in ("params_bytes", "grads_bytes", "optimizer_bytes"))
        print(
            f"{name:<18}{p:>12.2f}{g:>11.2f}{o:>11.2f}{r['total_gib']:>11.2f}{r['ratio_to_reference']:>8.3f}"
        )
    goal = rows["default"]["ratio_to_reference"] <= 1 / 3
    print(f"goal (default <= 1/3 of the reference): {goal}")
    check = measured_adam8bit_bytes()
    if check:
        print(
            f"8-bit Adam bytes, small UNet: bitsandbytes {check['bitsandbytes']} measured "
            f"{check['measured_bytes']:,}, formula {check['formula_bytes']:,}"
        )
    files.write_json(
        RESULTS, {"parameters": counts, "settings": rows, "goal_one_third": goal, "adam8bit_check": check}
    )
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
