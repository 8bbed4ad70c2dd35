"""The hand generator's train step at SD 1.5 size: time, and parameters + gradients + optimiser state
(and activations) against the paper's setting (seed 004 §IV-B: fp32 Adam, batch 32, 512 px).

Two settings:
- paper: fp32, torch Adam, no gradient checkpointing;
- default: what `handsynth handgen train` does on a CUDA GPU with bitsandbytes installed
  (`train.mixed_precision` and `train.optimizer` "auto", gradient checkpointing on): fp32 master
  weights and gradients under bf16 autocast, bitsandbytes' 8-bit Adam, frozen VAE and text encoder in
  bf16, activations recomputed in the backward pass.

Rows, each saying how it was obtained:
- computed: bytes from parameter counts of SD 1.5's UNet (conv_in widened to 15 channels), the mask
  head (640 -> 320 -> 160 -> 80 -> 1), the VAE and CLIP ViT-L/14, built on the meta device. 8-bit Adam
  bytes per tensor as `train_memory.adam8bit_bytes` (checked there against a real bitsandbytes step).
- measured: one `HandgenTrainer.train_step` (the code `handgen train` runs) on random weights of SD
  1.5's UNet and VAE configs with a one-layer 768-wide text encoder (the real one is frozen and only
  encodes the caption), at small latents on the CPU. Parameter and optimiser bytes are summed over the
  live tensors, gradients just before the optimiser step; torch's MemTracker splits the step's peak
  into parameters, gradients, optimiser state and activations. Each (setting, latent) runs in a fresh
  process. On the CPU, weights of frozen parts stay fp32 (`Trainer.weight_dtype`), so the measured
  frozen bytes are fp32 in both settings.
- extrapolated: the paper's batch 32 at 512 px. The tracker also keeps the most activation and
  temporary memory alive at any moment of the step (recomputed activations included). It is fitted
  as c + batch·b·L² on the two measured latent sides L: SD's activations, attention included with
  SDPA, are linear in the latent pixels, and c is what does not grow with the image (under bf16
  autocast mostly autocast's cache of bf16 weight copies, 2 bytes per trained parameter), counted
  once. Taken at L = 64 and batch 32, added to the computed static bytes. An upper estimate of the
  peak: the gradients are not all alive when the activations are. A sample's activations that do not
  grow with the image (the 77 text tokens' share of cross-attention) are counted in c, once.

    python benchmarks/handgen_train_step.py [--device cpu|cuda] [--latents 16 32] [--batch 1] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_memory import ADAM_FP32, BF16, FP32, SD14_TEXT, SD14_UNET, SD14_VAE, adam8bit_bytes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "handgen_train_step.json"
PAPER_BATCH, PAPER_LATENT = 32, 64  # seed 004 §IV-B: batch 32 at 512 px
# SD 1.5's UNet, VAE and text encoder have SD 1.4's architecture (train_memory's configs).
SETTINGS = {
    "paper": {"mixed_precision": "no", "optimizer": "adam", "gradient_checkpointing": False},
    "default": {"mixed_precision": "bf16", "optimizer": "adam8bit", "gradient_checkpointing": True},
}
GIB = 2**30


def computed() -> dict:
    """Static bytes of both settings from parameter counts (nothing allocated)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from handsynth.twostage.handgen.model import build_mask_head, widen_conv_in

    with init_empty_weights():
        unet = widen_conv_in(UNet2DConditionModel(**SD14_UNET))
        head = build_mask_head(unet, vae_scale=8)
        vae = AutoencoderKL(**SD14_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
    trained = [p.numel() for p in [*unet.parameters(), *head.parameters()]]
    n_trained = sum(trained)
    n_frozen = sum(p.numel() for p in [*vae.parameters(), *text.parameters()])
    rows = {
        "paper": {
            "params": n_trained * FP32 + n_frozen * FP32,
            "grads": n_trained * FP32,
            "optimizer": n_trained * ADAM_FP32,
        },
        "default": {
            "params": n_trained * FP32 + n_frozen * BF16,
            "grads": n_trained * FP32,
            "optimizer": sum(adam8bit_bytes(n) for n in trained),
        },
    }
    for row in rows.values():
        row["static"] = row["params"] + row["grads"] + row["optimizer"]
    counts = {
        "unet": sum(p.numel() for p in unet.parameters()),
        "mask_head": sum(p.numel() for p in head.parameters()),
        "frozen_vae_text": n_frozen,
    }
    return {"parameters": counts, "rows": rows}


def sd_models(latent: int):
    """BaseModels at SD 1.5 size with random weights: the UNet and VAE configs, a small text encoder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from handsynth.tiny.tokenizer import write_clip_tokenizer
    from handsynth.training.diffusion import BaseModels

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(Path(tmp) / "tokenizer")
    torch.manual_seed(0)
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    text = CLIPTextModel(
        CLIPTextConfig(**{**SD14_TEXT, "vocab_size": len(tokenizer), "num_hidden_layers": 1, **ids})
    )
    unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": latent})
    vae = AutoencoderKL(**{**SD14_VAE, "sample_size": 8 * latent})
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return BaseModels(tokenizer, text, vae, unet, scheduler)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


class ActivationTracker(MemTracker):
    """torch's MemTracker, also keeping the most activation and temporary memory alive after any op
    (recomputed activations count as activations). Uses its private per-op hook and snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.activation_peak = 0

    def _update_peak_stats(self, peak_state) -> None:
        super()._update_peak_stats(peak_state)
        for snap in self._curr_mem_snap.values():
            self.activation_peak = max(self.activation_peak, snap[_MemRefType.ACT] + snap[_MemRefType.TEMP])


def measure(setting: str, latent: int, batch: int, steps: int, device: str) -> dict:
    """One setting at one latent size, in this process: seconds per step and bytes."""
    from accelerate import Accelerator

    from handsynth.config import Config
    from handsynth.twostage.handgen.data import HandBatch
    from handsynth.twostage.handgen.trainer import HandgenTrainer

    options = SETTINGS[setting]
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=options["mixed_precision"])
    config = Config()
    config.run.device = device
    config.train.checkpoint_every = 0
    for key, value in options.items():
        config.set(f"train.{key}", value)
    g = torch.Generator().manual_seed(0)
    size = 8 * latent
    data = HandBatch(
        keys=[f"hand{i}" for i in range(batch)],
        captions=["a hand with a silver ring"] * batch,
        pixels=torch.rand(batch, 3, size, size, generator=g),
        masks=(torch.rand(batch, 1, size, size, generator=g) > 0.5).float(),
        conditions=torch.rand(batch, 11, latent, latent, generator=g),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = HandgenTrainer(config, accelerator, sd_models(latent), [], Path(tmp), {}, steps + 2)
        trainer.bar.disable = True
        optimizer = trainer.optimizer.optimizer
        grads = []
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: grads.append(
                tensor_bytes(p.grad for p in trainer.model_plain.parameters())
            )
        )

        def step() -> float:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(data)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        warm_up = step()  # allocates the optimiser state
        # MemTracker hooks the gradient of every parameter of each module that runs, and fails on a
        # frozen one; the VAE and text encoder run under no_grad, so flagging them changes nothing.
        frozen = [*trainer.vae.parameters(), *trainer.text_encoder.parameters()]
        for p in frozen:
            p.requires_grad_(True)
        tracker = ActivationTracker()
        tracker.track_external(trainer.model_plain, optimizer, trainer.vae, trainer.text_encoder)
        with tracker:
            step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device(device)]
        for p in frozen:
            p.requires_grad_(False)
        times = [step() for _ in range(steps)]
        result = {
            "setting": setting,
            "latent": latent,
            "batch": batch,
            "warm_up_s": warm_up,
            "step_s": times,
            "median_step_s": statistics.median(times) if times else None,
            "trained_params": tensor_bytes(trainer.model_plain.parameters()),
            "frozen_params": tensor_bytes(frozen),
            "grads": grads[-1],
            "optimizer": tensor_bytes(v for state in optimizer.state.values() for v in state.values()),
            "peak": {str(k).rpartition(".")[2].lower(): v for k, v in peak.items()},
            "activation_peak": tracker.activation_peak,
        }
    return result


def run_worker(setting: str, latent: int, batch: int, steps: int, device: str) -> dict:
    """`measure` in a fresh process, so that each setting starts with empty memory."""
    job = json.dumps([setting, latent, batch, steps, device])
    done = subprocess.run(
        [sys.executable, __file__, "--worker", job], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{setting} at {latent}² failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--latents", type=int, nargs=2, default=[16, 32], help="two latent sides to measure")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=1, help="timed steps after the warm-up and the tracked one (1)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*json.loads(args.worker))))
        return

    static = computed()
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in static["parameters"].items()))
    measured = {
        f"{s}@{latent}": run_worker(s, latent, args.batch, args.steps, args.device)
        for latent in args.latents
        for s in SETTINGS
    }
    print(
        f"\n{'setting':<22}{'source':<34}{'params':>9}{'grads':>9}{'optim':>9}{'static GiB':>12}{'ratio':>8}"
    )
    rows = static["rows"]
    for name, row in rows.items():
        ratio = row["static"] / rows["paper"]["static"]
        print(
            f"{name:<22}{'computed (parameter counts)':<34}{row['params'] / GIB:>9.2f}"
            f"{row['grads'] / GIB:>9.2f}{row['optimizer'] / GIB:>9.2f}"
            f"{row['static'] / GIB:>12.2f}{ratio:>8.3f}"
        )
    for key, row in measured.items():
        total = row["trained_params"] + row["frozen_params"] + row["grads"] + row["optimizer"]
        source = f"measured ({args.device}, {row['latent']}², batch {row['batch']})"
        print(
            f"{key:<22}{source:<34}{(row['trained_params'] + row['frozen_params']) / GIB:>9.2f}"
            f"{row['grads'] / GIB:>9.2f}{row['optimizer'] / GIB:>9.2f}{total / GIB:>12.2f}"
        )

    print(
        f"\n{'setting':<22}{'latent':>7}{'step s':>9}{'step peak GiB':>15}{'activations GiB':>17}  (measured)"
    )
    for key, row in measured.items():
        print(
            f"{key:<22}{row['latent']:>7}{row['median_step_s']:>9.2f}{row['peak']['total'] / GIB:>15.2f}"
            f"{row['activation_peak'] / GIB:>17.3f}"
        )

    # Activations as c + batch·b·L², fitted on the two measured latent sides L.
    small, large = args.latents
    extrapolated = {}
    for name in SETTINGS:
        a_small, a_large = (measured[f"{name}@{n}"]["activation_peak"] for n in (small, large))
        per_pixel = (a_large - a_small) / (args.batch * (large**2 - small**2))
        fixed = a_small - args.batch * per_pixel * small**2
        per_sample = per_pixel * PAPER_LATENT**2
        total = rows[name]["static"] + fixed + PAPER_BATCH * per_sample
        extrapolated[name] = {
            "activations_fixed": fixed,
            "activations_per_sample": per_sample,
            "total": total,
        }
    print(
        f"\nextrapolated to batch {PAPER_BATCH} at {8 * PAPER_LATENT} px "
        "(computed static + activations extrapolated from the measured ones):"
    )
    for name, row in extrapolated.items():
        ratio = row["total"] / extrapolated["paper"]["total"]
        print(
            f"{name:<22}activations {row['activations_fixed'] / GIB:5.2f} GiB + "
            f"{row['activations_per_sample'] / GIB:5.2f} GiB/sample, "
            f"total {row['total'] / GIB:8.1f} GiB, ratio {ratio:.3f}"
        )
    static_ratio = rows["default"]["static"] / rows["paper"]["static"]
    total_ratio = extrapolated["default"]["total"] / extrapolated["paper"]["total"]
    time_ratio = {
        n: measured[f"default@{n}"]["median_step_s"] / measured[f"paper@{n}"]["median_step_s"]
        for n in args.latents
    }
    times = ", ".join(f"{v:.2f} at {n}²" for n, v in time_ratio.items())
    print(
        f"\ndefault / paper: static {static_ratio:.3f} (computed), total at the paper's batch and size "
        f"{total_ratio:.3f} (extrapolated), step time {times} (measured, {args.device}); "
        f"goal <= 1/3: static {static_ratio <= 1 / 3}, total {total_ratio <= 1 / 3}"
    )
    from handsynth import files

    files.write_json(
        RESULTS,
        {
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "computed": static,
            "measured": measured,
            "extrapolated": extrapolated,
            "ratios": {"static": static_ratio, "total": total_ratio, "step_time": time_ratio},
        },
    )
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
