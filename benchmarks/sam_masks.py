"""SAM hand masks: time per image of the tiny SAM one image at a time vs batched, and what SAM ViT-H costs.

Measured: `SamSegmenter.segment_hands` in a loop vs `segment_hands_batch` on the 33 real photos of
../shared/data/hagrid-mini with their annotated hands (best of `--repeats` runs each; the masks must
agree), and this CPU's fp32 matmul throughput.
Computed: SAM ViT-H's parameters and FLOPs (torch's FlopCounterMode over the real SamModel built on
the meta device: the image encoder at 1024², the prompt encoder + mask decoder for one hand), and from
them the time per image at a given throughput: this CPU's measured matmul rate and an H200's
fp16 dense peak (989 TFLOP/s, NVIDIA's spec sheet). Real runs reach a fraction of peak, so the GPU
figure is a lower bound.

    python benchmarks/sam_masks.py [--repeats 3] [--batch-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from handsynth import files
from handsynth.perception.sam import SamSegmenter
from handsynth.tiny.sam import write_tiny_sam

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PHOTOS = ROOT.parent / "shared" / "data" / "hagrid-mini"
H200_FP16_DENSE = 989e12  # FLOP/s
PAPER_HAGRID_IMAGES = 80_000  # seed 004 §IV-A: HaGRID share of the hand generator's data


def real_photos() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    photos = []
    for path in sorted((PHOTOS / "annotations" / "test").glob("*.json")):
        for key, entry in json.loads(path.read_text()).items():
            image = files.load_rgb(PHOTOS / "images" / path.stem / f"{key}.jpg")
            height, width = image.shape[:2]
            hands = [
                np.c_[np.asarray(h) * [width, height], np.full(21, 2.0)] for h in entry["hand_landmarks"]
            ]
            photos.append((image, hands))
    return photos


def best_of(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def vit_h_costs() -> dict:
    """Parameters and FLOPs of facebook/sam-vit-huge's architecture, counted on the meta device."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]
    )
    with torch.device("meta"):
        model = SamModel(SamConfig(vision_config=vision.to_dict())).eval()
        pixels = torch.empty(1, 3, 1024, 1024)
        with FlopCounterMode(display=False) as encoder:
            embedding = model.get_image_embeddings(pixels)
        points, boxes = torch.empty(1, 1, 21, 2), torch.empty(1, 1, 4)
        labels = torch.ones(1, 1, 21, dtype=torch.long)
        with FlopCounterMode(display=False) as decoder:
            model(image_embeddings=embedding, input_points=points, input_labels=labels, input_boxes=boxes)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.vision_encoder.parameters()),
        "encoder_flops_per_image": encoder.get_total_flops(),
        "decoder_flops_per_hand": decoder.get_total_flops(),
    }


def cpu_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds, _ = best_of(repeats, lambda: a @ b)
    return 2 * size**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tests use 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sam_masks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    segmenter = SamSegmenter.from_pretrained(str(write_tiny_sam(RESULTS / "tiny-sam")), device="cpu")
    photos = real_photos()
    n, hands = len(photos), sum(len(h) for _, h in photos)
    segmenter.segment_hands(*photos[0])  # warm-up
    single_s, single = best_of(args.repeats, lambda: [segmenter.segment_hands(i, h) for i, h in photos])
    batched_s, batched = best_of(
        args.repeats,
        lambda: list(
            segmenter.segment_hands_batch(
                (i for i, _ in photos), (h for _, h in photos), batch_size=args.batch_size, total=n
            )
        ),
    )
    same = all(
        np.array_equal(a, b) for s, m in zip(single, batched, strict=True) for a, b in zip(s, m, strict=True)
    )

    costs = vit_h_costs()
    cpu_rate = cpu_matmul_flops()
    per_image = costs["encoder_flops_per_image"] + 2 * costs["decoder_flops_per_hand"]  # ~2 hands
    results = {
        "measured": {
            "photos": n,
            "hands": hands,
            "threads": args.threads,
            "tiny_one_at_a_time_ms_per_image": 1000 * single_s / n,
            "tiny_batched_ms_per_image": 1000 * batched_s / n,
            "batch_size": args.batch_size,
            "speedup_batched": single_s / batched_s,
            "batched_masks_equal_single": same,
            "cpu_fp32_matmul_gflops": cpu_rate / 1e9,
        },
        "computed": {
            **costs,
            "vit_h_cpu_s_per_image_at_matmul_rate": per_image / cpu_rate,
            "vit_h_h200_ms_per_image_at_fp16_peak": 1000 * per_image / H200_FP16_DENSE,
            "vit_h_h200_min_for_paper_hagrid_at_peak": PAPER_HAGRID_IMAGES * per_image / H200_FP16_DENSE / 60,
        },
    }
    m, c = results["measured"], results["computed"]
    print(f"tiny SAM, {n} real photos ({hands} hands), {args.threads} thread(s) [measured]")
    print(f"  one at a time   {m['tiny_one_at_a_time_ms_per_image']:.1f} ms/image")
    print(
        f"  batched ({args.batch_size})     {m['tiny_batched_ms_per_image']:.1f} ms/image"
        f"  -> {m['speedup_batched']:.2f}x; masks equal: {same}"
    )
    print(f"SAM ViT-H [computed on the meta device]: {c['params'] / 1e6:.1f} M parameters")
    print(
        f"  image encoder {c['encoder_flops_per_image'] / 1e12:.2f} TFLOP/image at 1024²;"
        f" decoder {c['decoder_flops_per_hand'] / 1e9:.2f} GFLOP/hand"
    )
    print(
        f"  this CPU ({m['cpu_fp32_matmul_gflops']:.0f} GFLOP/s fp32 matmul, measured):"
        f" >= {c['vit_h_cpu_s_per_image_at_matmul_rate']:.0f} s/image"
    )
    print(
        f"  H200 at fp16 dense peak: >= {c['vit_h_h200_ms_per_image_at_fp16_peak']:.1f} ms/image;"
        f" {PAPER_HAGRID_IMAGES} images >= {c['vit_h_h200_min_for_paper_hagrid_at_peak']:.1f} min"
    )
    files.write_json(args.out, results)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
