"""`handgen train`'s input pipeline: hand crops loaded per second with 0, 1 and 2 loader workers, beside
the step rate a GPU would ask of it for SD 1.5 at the paper's batch 32 (seed 004 §IV-B, 512 px).

Rows, each saying how it was obtained:
- measured: `twostage.handgen.data.batch_loader` (what `handgen train` iterates) over batches of 32
  synthetic hand crops at 512 px (tests/hands_fixture.py: renders, landmark masks, finger heatmaps),
  read, resized and turned into c_p; crops per second from the first batch out to the last, so the
  workers' start is left out (it is given on its own). The ratio is each worker count's rate over the
  in-process rate (0 workers) measured in the same run.
- computed: the GPU's step rate. The FLOPs of one training step of SD 1.5's UNet (conv_in widened to
  15 channels) and the mask head, forward and backward, plus the frozen VAE encoder and CLIP text
  encoder forward, are counted by torch's FlopCounterMode on the meta device at batch 32 and 512 px
  (nothing is allocated or run). Steps per second = an A100's dense bf16 peak (312 TFLOPS) x an assumed
  model FLOPs utilisation of 40 % / FLOPs per step; crops per second the GPU takes = 32 x that.

    python benchmarks/handgen_loader.py [--crops 96] [--batches 3] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
from train_memory import SD14_TEXT, SD14_UNET, SD14_VAE  # noqa: E402

RESULTS = ROOT / "results" / "handgen_loader.json"
PAPER_BATCH, RESOLUTION, LATENT = 32, 512, 64
A100_BF16_FLOPS = 312e12  # dense bf16 tensor-core peak
ASSUMED_MFU = 0.40


def step_flops(batch: int = PAPER_BATCH) -> dict[str, float]:
    """FLOPs of one hand-generator training step at SD 1.5 size, counted on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    from handsynth.twostage.handgen.model import HandGenerator, build_mask_head, widen_conv_in

    with torch.device("meta"):
        unet = widen_conv_in(UNet2DConditionModel(**SD14_UNET))
        model = HandGenerator(unet, build_mask_head(unet, vae_scale=8))
        vae = AutoencoderKL(**SD14_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD14_TEXT))
    meta = {"device": "meta"}
    with FlopCounterMode(display=False) as frozen, torch.no_grad():
        embeddings = text(torch.zeros(batch, 77, dtype=torch.long, **meta))[0]
        vae.encode(torch.zeros(batch, 3, RESOLUTION, RESOLUTION, **meta))
    with FlopCounterMode(display=False) as trained:
        noise, mask = model(
            torch.zeros(batch, 4, LATENT, LATENT, **meta),
            torch.zeros(batch, dtype=torch.long, **meta),
            embeddings,
            torch.zeros(batch, 11, LATENT, LATENT, **meta),
        )
        (noise.float().square().mean() + mask.float().square().mean()).backward()
    return {"frozen_forward": frozen.get_total_flops(), "trained_forward_backward": trained.get_total_flops()}


def loader_rate(manifest: Path, workers: int, batches: int) -> dict[str, float]:
    from handsynth.twostage.handgen.data import batch_loader, read_hand_items

    items = read_hand_items(manifest)
    plan = [[(b * PAPER_BATCH + i) % len(items) for i in range(PAPER_BATCH)] for b in range(batches + 1)]
    start = time.perf_counter()
    loader = iter(batch_loader(items, plan, RESOLUTION, LATENT, workers))
    next(loader)
    first = time.perf_counter()
    for _ in loader:
        pass
    end = time.perf_counter()
    return {"first_batch_s": first - start, "crops_per_s": batches * PAPER_BATCH / (end - first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=96)
    parser.add_argument("--batches", type=int, default=3, help="timed batches of 32 after the first")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    from hands_fixture import write_hands_manifest

    torch.set_num_threads(1)  # a worker is one process on one core; the training process its own
    flops = step_flops()
    per_step = sum(flops.values())
    gpu_steps = A100_BF16_FLOPS * ASSUMED_MFU / per_step
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_hands_manifest(Path(tmp), n=args.crops, crop=RESOLUTION)
        measured = {w: loader_rate(manifest, w, args.batches) for w in args.workers}
    base = measured[args.workers[0]]["crops_per_s"]
    result = {
        "computed": {
            "flops_per_step": flops,
            "assumed": {"gpu_bf16_flops": A100_BF16_FLOPS, "mfu": ASSUMED_MFU, "batch": PAPER_BATCH},
            "gpu_steps_per_s": gpu_steps,
            "gpu_crops_per_s": gpu_steps * PAPER_BATCH,
        },
        "measured": {
            "crop_px": RESOLUTION,
            "batch": PAPER_BATCH,
            "timed_batches": args.batches,
            "workers": {
                str(w): {**m, "ratio_to_0_workers": m["crops_per_s"] / base} for w, m in measured.items()
            },
        },
    }
    print(f"computed: {per_step / 1e12:.1f} TFLOPs per step (batch 32, 512 px) -> {gpu_steps:.2f} steps/s,")
    print(f"  {gpu_steps * PAPER_BATCH:.0f} crops/s on an A100 at {ASSUMED_MFU:.0%} MFU")
    for w, m in measured.items():
        print(
            f"measured: {w} worker(s): {m['crops_per_s']:.1f} crops/s "
            f"({m['crops_per_s'] / base:.2f}x of 0 workers), first batch after {m['first_batch_s']:.1f} s"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
