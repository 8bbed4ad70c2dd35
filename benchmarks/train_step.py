"""Training speed: samples per second for the `reference` schedule against `batched`, in one run.

Both schedules run through `handsynth.hand1000.trainer.Hand1000Trainer` (the code `handsynth train`
runs) on random latents and embeddings, on two models: the tiny test model (32x32 latents) and a UNet
with SD v1.4's config (859.5 M parameters, random weights) at a small latent size.

- reference: batch 1; fresh Adam states per image, so the image's first UNet step re-allocates the
  UNet's Adam state (timed on its own).
- batched: `--batch` samples per step; Stage II on a batch of embeddings, Stage III with one
  persistent Adam.

Per-step times are measured (after one warm-up step of each kind) and composed into the paper's
per-sample budget of 10 embedding + 20 UNet steps:
reference samples/s = 1 / (10·t_emb + t_first_unet + 19·t_unet); batched = B / (10·t_emb + 20·t_unet).
`--steps E U` sets how many steps of each kind are timed (default 10 20; fewer for an SD-size UNet on
CPU, where one step takes seconds). The SD-size UNet trains a rank-4 LoRA by default, to fit a small
machine (`--sd-lora-rank 0`: the full UNet, ~14 GiB of weights, gradients and Adam state).

    python benchmarks/train_step.py [--device cpu|cuda] [--batch 4] [--sd-latent 16] [--sd-steps 2 3]
                                    [--sd-lora-rank 4] [--mixed-precision no|bf16|fp16] [--skip-sd]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from handsynth import files
from handsynth.config import Config
from handsynth.hand1000.trainer import Hand1000Trainer
from handsynth.tiny.sd import write_tiny_sd
from handsynth.training.diffusion import BaseModels, load_base_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_memory import SD14_UNET  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
BUDGET = (10, 20)  # embedding steps, UNet steps per sample (SPEC §A)


def sd_size_models(tiny: BaseModels, latent: int) -> BaseModels:
    """SD v1.4's UNet (random weights) with a 768-wide one-layer text encoder; the tiny VAE is unused."""
    torch.manual_seed(0)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tiny.tokenizer),
            hidden_size=768,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tiny.tokenizer.bos_token_id,
            eos_token_id=tiny.tokenizer.eos_token_id,
            pad_token_id=tiny.tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": latent})
    return BaseModels(tiny.tokenizer, text, tiny.vae, unet, scheduler)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory(accelerator: Accelerator) -> None:
    """Drop the prepared models and optimisers (the accelerator keeps references) and their memory."""
    accelerator.free_memory()
    gc.collect()


def fmt(times: list[float]) -> str:
    return " ".join(f"{t:.3f}" for t in times)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def run_schedule(
    accelerator: Accelerator,
    models: BaseModels,
    config: Config,
    batch: int,
    steps: tuple[int, int],
    work: Path,
) -> dict:
    """Time `steps` embedding and UNet steps of one schedule on random data; returns per-step seconds."""
    device = accelerator.device
    schedule = "reference" if batch == 1 else "batched"
    config.train.schedule, config.train.batch_size = schedule, batch
    trainer = Hand1000Trainer(
        config,
        accelerator,
        models,
        np.zeros(63, np.float32),
        work,
        {"gesture": "bench", "schedule": schedule},
        0,
        [],
    )
    trainer.bar.disable = True
    g = torch.Generator().manual_seed(0)
    latent = models.unet.config.sample_size
    trainer.latents = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    trainer.e = torch.randn(batch, 77, models.text_encoder.config.hidden_size, generator=g).to(device)
    trainer.keys = [f"sample{i}" for i in range(batch)]
    with torch.no_grad():
        trainer.leaf.copy_(trainer.e)

    def embedding_step() -> None:
        trainer.embedding_step(*trainer.draw(trainer.latents))

    def unet_step() -> None:
        trainer.unet_step(trainer.latents, d, *trainer.draw(trainer.latents), trainer.keys)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    d = trainer.frozen_embeddings()
    timed(embedding_step, device)  # warm-up, allocates the Adam states
    timed(unet_step, device)
    if schedule == "reference":  # a new image: fresh optimisers, as the official loop
        trainer.embedding_optimizer.state.clear()
        trainer.unet_optimizer.state.clear()
    emb = [timed(embedding_step, device) for _ in range(steps[0])]
    d = trainer.frozen_embeddings()
    unet = [timed(unet_step, device) for _ in range(steps[1])]
    print(f"  {schedule} B={batch}: embedding steps {fmt(emb)} s, UNet steps {fmt(unet)} s", flush=True)
    result = {"batch": batch, "embedding_step_s": emb, "unet_step_s": unet}
    t_emb = statistics.mean(emb)
    if schedule == "reference":
        t_first, t_unet = unet[0], statistics.mean(unet[1:]) if len(unet) > 1 else unet[0]
        per_sample = BUDGET[0] * t_emb + t_first + (BUDGET[1] - 1) * t_unet
        result["first_unet_step_s"] = t_first
    else:
        t_unet = statistics.mean(unet)
        per_sample = (BUDGET[0] * t_emb + BUDGET[1] * t_unet) / batch
    result["samples_per_s"] = 1.0 / per_sample
    if device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def compare(name: str, accelerator, make_models, config, batch, steps, work) -> dict:
    """Each schedule gets freshly built models (the same seeded weights)."""
    reference = run_schedule(accelerator, make_models(), config, 1, steps, work / f"{name}-ref")
    free_memory(accelerator)  # the reference trainer's Adam state, before the batched one allocates
    batched = run_schedule(accelerator, make_models(), config, batch, steps, work / f"{name}-batched")
    free_memory(accelerator)
    speedup = batched["samples_per_s"] / reference["samples_per_s"]
    print(
        f"{name:<28} reference {reference['samples_per_s']:9.4f} samples/s   "
        f"batched (B={batch}) {batched['samples_per_s']:9.4f} samples/s   x{speedup:.2f}"
    )
    return {"reference": reference, "batched": batched, "speedup": speedup, "timed_steps": list(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="batched schedule batch size")
    parser.add_argument(
        "--steps", type=int, nargs=2, default=list(BUDGET), help="timed steps on the tiny model"
    )
    parser.add_argument("--sd-latent", type=int, default=16, help="latent size for the SD-size UNet")
    parser.add_argument(
        "--sd-steps", type=int, nargs=2, default=[2, 3], help="timed steps on the SD-size UNet"
    )
    parser.add_argument(
        "--sd-lora-rank",
        type=int,
        default=4,
        help="LoRA rank for the SD-size UNet (0: the full UNet, ~14 GiB of weights, grads and Adam)",
    )
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--skip-sd", action="store_true", help="only the tiny model")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    config = Config()
    config.run.device = args.device
    config.model.train_fusion = False  # the reference's Stage II: a free d
    config.train.mixed_precision = args.mixed_precision
    config.train.gradient_checkpointing = args.gradient_checkpointing
    results = {
        "device": str(accelerator.device),
        "device_name": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "budget": list(BUDGET),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_path = str(write_tiny_sd(work / "tiny-sd"))

        def tiny() -> BaseModels:
            return load_base_models(tiny_path)

        results["tiny"] = compare(
            "tiny (32x32 latents)", accelerator, tiny, config, args.batch, tuple(args.steps), work
        )
        if not args.skip_sd:

            def models() -> BaseModels:
                return sd_size_models(tiny(), args.sd_latent)

            config.train.lora_rank = args.sd_lora_rank
            name = f"SD-size UNet ({args.sd_latent}x{args.sd_latent}, LoRA r={args.sd_lora_rank})"
            results["sd_unet"] = compare(
                name, accelerator, models, config, args.batch, tuple(args.sd_steps), work
            )
            results["sd_unet"].update(latent=args.sd_latent, lora_rank=args.sd_lora_rank)
    files.write_json(RESULTS, results)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
