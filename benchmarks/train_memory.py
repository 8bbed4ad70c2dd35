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

Then the host memory of checkpointing and loading the flat fusion (`model.fusion = "flat"`), before
and after the fixes of issue 16, measured: each case runs in a fresh process on a scaled-down flat
fusion (text width 64 and 128 instead of 768: 24 M and 97 M parameters instead of 3.5 B), and its
figure is the peak resident set above the process's size just before (VmHWM after resetting it
through /proc/self/clear_refs, so exact, file pages mapped by safetensors included). Its growth per
fusion byte between the two sizes is carried on to the 3.5 B one (a peak that does not grow with the
fusion stays at its measured value). "before"
runs the old code's lines (kept here as the baseline); "after" runs the toolkit's code. The peaks
with the fusion on a GPU (trained there, or loaded there in fp16) are computed from byte counts (no
GPU here):

- checkpoint: the old `save_checkpoint` ran torch.isfinite on each whole weight (temporaries of 1.75
  times its size) and copied every weight (`.cpu().clone()`) before torch.save: one host copy on CPU,
  two transient ones from a GPU. Now the NaN check runs a chunk at a time, torch.save gets the live
  tensors and moves device ones to the host one storage at a time, and an untrained fusion is not
  saved at all (it is the seeded random projection, rebuilt from run.seed on resume).
- load: the old `load_hand1000` loaded the fp32 file onto the device (safetensors' mmap) and cast it
  there (fp32 + fp16 on the GPU at once); now `load_cast` reads, casts on the host and moves one block
  of rows at a time.

    python benchmarks/train_memory.py
"""

from __future__ import annotations

import gc
import importlib.util
import math
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import torch

from handsynth import files
from handsynth.config import Config
from handsynth.hand1000.fusion import (
    LOAD_BLOCK_BYTES,
    FlatFusion,
    fusion_parameter_count,
    load_hand1000,
    save_hand1000,
)
from handsynth.hand1000.trainer import LORA_TARGETS
from handsynth.training.trainer import FINITE_CHECK_ELEMENTS, Trainer, make_accelerator

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
    from diffusers import UNet2DConditionModel

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


# ------------------------------------------------------------------ flat fusion: host memory, measured

SCALED_TEXT_DIMS = (64, 128)
FLAT_CASES = {
    "checkpoint, fusion trained": ("before", "after"),
    "checkpoint, fusion untrained": ("before", "after"),
    "load in fp16": ("before", "after"),
}


def status_bytes(field: str) -> int:
    """A /proc/self/status field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class _FusionTrainer(Trainer):
    """The machinery's checkpointing with the flat fusion as its weights; an untrained fusion is left
    out, as Hand1000Trainer.checkpoint_weights does."""

    def __init__(self, work: Path, fusion: FlatFusion, trained: bool) -> None:
        config = Config()
        config.run.device = "cpu"
        config.train.checkpoint_every = 0
        super().__init__(config, make_accelerator(config, work), work, {}, total_steps=1, name="flat")
        self.fusion, self.trained = fusion, trained

    def checkpoint_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"fusion": self.fusion.state_dict()} if self.trained else {}


def _measure_case(case: str, side: str, text_dim: int, work: str) -> int:
    """In a fresh process: the peak resident bytes above the size just before `case` runs."""
    work_dir = Path(work)
    torch.manual_seed(0)
    fusion = FlatFusion(text_dim).materialize() if case.startswith("checkpoint") else None
    trainer = _FusionTrainer(work_dir / "train", fusion, "untrained" not in case) if fusion else None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = status_bytes("VmRSS")
    if case.startswith("checkpoint") and side == "after":
        trainer.save_checkpoint()
    elif case.startswith("checkpoint"):  # the old save_checkpoint: NaN check, a copy of each weight, save
        state = fusion.state_dict()
        assert all(bool(torch.isfinite(t).all()) for t in state.values())
        shared = {"weights": {"fusion": {n: t.detach().cpu().clone() for n, t in state.items()}}}
        torch.save(shared, work_dir / "shared.pt")
    elif side == "after":
        load_hand1000(work_dir / "model", "cpu", torch.float16)
    else:  # the old load_hand1000: the fp32 file onto the device, then the cast there
        from safetensors.torch import load_file

        loaded = FlatFusion(text_dim)
        loaded.load_state_dict(
            load_file(str(work_dir / "model" / "hand1000" / "fusion.safetensors")), assign=True
        )
        loaded.to(dtype=torch.float16)
    return status_bytes("VmHWM") - before


def flat_fusion_host_memory() -> dict:
    """Measured peaks per case and size, the linear fit in the fusion's bytes, the 3.5 B extrapolation."""
    context = multiprocessing.get_context("spawn")
    full_bytes = fusion_parameter_count("flat", TEXT_DIM, SEQ_LEN) * FP32
    out: dict = {"text_dims": SCALED_TEXT_DIMS, "full_fp32_bytes": full_bytes, "cases": {}}
    sizes = [fusion_parameter_count("flat", d, SEQ_LEN) * FP32 for d in SCALED_TEXT_DIMS]
    out["scaled_fp32_bytes"] = sizes
    with tempfile.TemporaryDirectory() as tmp, context.Pool(1, maxtasksperchild=1) as pool:
        for d in SCALED_TEXT_DIMS:
            torch.manual_seed(0)
            model = Path(tmp) / f"d{d}" / "model"
            save_hand1000(model, FlatFusion(d).materialize(), np.zeros(63, np.float32), {"gesture": "call"})
        for case, sides in FLAT_CASES.items():
            for side in sides:
                peaks = [
                    pool.apply(_measure_case, (case, side, d, str(Path(tmp) / f"d{d}")))
                    for d in SCALED_TEXT_DIMS
                ]
                # The growth per fusion byte between the two sizes, carried on from the larger one; a
                # peak that does not grow (within noise: a negative slope) stays at its measured value.
                slope = max(0.0, (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]))
                out["cases"].setdefault(case, {})[side] = {
                    "measured_peak_bytes": peaks,
                    "per_fusion_byte": round(slope, 4),
                    "extrapolated_peak_bytes": int(peaks[1] + slope * (full_bytes - sizes[1])),
                }
    return out


def flat_fusion_gpu_bytes() -> dict:
    """Computed: peaks beyond the weights themselves when the 3.5 B flat fusion lives on a GPU."""
    n = fusion_parameter_count("flat", TEXT_DIM, SEQ_LEN)
    isfinite = FP32 + 3  # torch.isfinite: an fp32 |x| and three bool masks per value
    return {
        "checkpoint, fusion trained": {
            # torch.isfinite on the whole weight; .cpu() then .clone() of it on the host
            "before": {"gpu": n * isfinite, "host": 2 * n * FP32},
            # the check a chunk at a time; torch.save moves the one storage to the host
            "after": {"gpu": FINITE_CHECK_ELEMENTS * isfinite, "host": n * FP32},
        },
        "checkpoint, fusion untrained": {
            "before": {"gpu": n * isfinite, "host": 2 * n * FP32},
            "after": {"gpu": 0, "host": 0},  # not saved: rebuilt from run.seed on resume
        },
        "load in fp16": {
            # the fp32 weights and their fp16 cast on the GPU at once; the fp32 file paged in by the mmap
            "before": {"gpu": n * (FP32 + BF16), "host": n * FP32},
            # the fp16 weights only; on the host one block of rows, read, and its cast
            "after": {"gpu": n * BF16, "host": LOAD_BLOCK_BYTES * (FP32 + BF16) // FP32},
        },
    }


def print_flat_fusion(measured: dict, gpu: dict) -> None:
    mb = [f"{b / 1e6:.0f} MB fusion" for b in measured["scaled_fp32_bytes"]]
    full_gib = measured["full_fp32_bytes"] / 2**30
    print(
        f"\nflat fusion host memory, measured: peak RSS above the start, fresh process per case, on "
        f"{' and '.join(mb)} (fp32); extrapolated at the measured growth per byte to the 3.5 B one "
        f"({full_gib:.1f} GiB)"
    )
    print(f"{'case':<30}{'side':<8}{'measured MB':>22}{'extrapolated GiB':>18}{'after/before':>14}")
    for case, sides in measured["cases"].items():
        for side, r in sides.items():
            peaks = " / ".join(f"{p / 1e6:.0f}" for p in r["measured_peak_bytes"])
            ratio = ""
            if side == "after":
                base = sides["before"]["extrapolated_peak_bytes"]
                ratio = f"{r['extrapolated_peak_bytes'] / base:.3f}" if base else "n/a"
            print(f"{case:<30}{side:<8}{peaks:>22}{r['extrapolated_peak_bytes'] / 2**30:>18.2f}{ratio:>14}")
    print("the 3.5 B flat fusion on a GPU, computed from byte counts (no GPU here): peaks in GiB")
    print(f"{'case':<30}{'side':<8}{'GPU':>10}{'host':>10}{'GPU after/before':>18}{'host after/before':>19}")
    for case, sides in gpu.items():
        for side, r in sides.items():
            ratios = ""
            if side == "after":
                ratios = "".join(
                    f"{r[k] / sides['before'][k]:>{w}.3f}" for k, w in (("gpu", 18), ("host", 19))
                )
            print(f"{case:<30}{side:<8}{r['gpu'] / 2**30:>10.2f}{r['host'] / 2**30:>10.2f}{ratios}")


def main() -> None:
    # imported here, so that the child processes of the flat fusion cases start without them
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
    measured, gpu = flat_fusion_host_memory(), flat_fusion_gpu_bytes()
    print_flat_fusion(measured, gpu)
    files.write_json(
        RESULTS,
        {
            "parameters": counts,
            "settings": rows,
            "goal_one_third": goal,
            "adam8bit_check": check,
            "flat_fusion_host_memory_measured": measured,
            "flat_fusion_gpu_computed": gpu,
        },
    )
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
