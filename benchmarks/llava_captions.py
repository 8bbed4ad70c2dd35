"""LLaVA captions: time per caption of the tiny LLaVA, one image at a time vs batched, and what
LLaVA-1.5-7B costs.

Measured: `caption_images` with the tiny LLaVA on the 33 real photos of ../shared/data/hagrid-mini,
batch 1 vs `--batch-size` (best of `--repeats` runs; each run writes a fresh JSONL, so resume does not
skip work), up to LLAVA_MAX_NEW_TOKENS new tokens as the captioner uses by default.
Computed: LLaVA-1.5-7B's parameters (its architecture built on the meta device), the vision tower's
FLOPs (FlopCounterMode at 336²), the language model's as 2 × parameters per token, and bounds on an
H200: prefill at the fp16 dense peak (989 TFLOP/s), each decoding step at reading the fp16 weights
once from HBM (4.8 TB/s). Both are NVIDIA's spec-sheet figures; real runs are slower.

    python benchmarks/llava_captions.py [--repeats 3] [--batch-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from handsynth import files
from handsynth.data.captioning import LLAVA_MAX_NEW_TOKENS, caption_images, make_captioner
from handsynth.tiny.captioners import write_tiny_llava

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PHOTOS = ROOT.parent / "shared" / "data" / "hagrid-mini" / "images"
H200_FP16_DENSE, H200_HBM = 989e12, 4.8e12  # FLOP/s, bytes/s
IMAGE_TOKENS = 576  # (336 / 14)², CLS dropped
PROMPT_TEXT_TOKENS = 50  # LLAVA_CHAT in Llama's tokenizer, estimated (about 1.3 tokens a word)


def llava_7b_costs() -> dict:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32064,
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(
            LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
        )
        with FlopCounterMode(display=False) as tower:
            model.model.vision_tower(torch.empty(1, 3, 336, 336), output_hidden_states=True)
    text_params = sum(p.numel() for p in model.model.language_model.parameters())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "language_model_params": text_params,
        "vision_tower_flops": tower.get_total_flops(),
    }


def time_captions(captioner, photos, batch_size: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = caption_images(captioner, photos, Path(tmp) / "captions.jsonl", batch_size=batch_size)
            best = min(best, time.perf_counter() - start)
            assert run.new == len(photos)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tests use 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "llava_captions.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    captioner = make_captioner("llava", str(write_tiny_llava(RESULTS / "tiny-llava")), device="cpu")
    photos = [(path.stem, path) for path in sorted(PHOTOS.glob("*/*.jpg"))]
    n = len(photos)
    single_s = time_captions(captioner, photos, 1, args.repeats)
    batched_s = time_captions(captioner, photos, args.batch_size, args.repeats)

    costs = llava_7b_costs()
    tokens = IMAGE_TOKENS + PROMPT_TEXT_TOKENS
    prefill_flops = costs["vision_tower_flops"] + 2 * costs["language_model_params"] * tokens
    step_s = 2 * costs["params"] / H200_HBM  # fp16 weights read once per decoding step
    results = {
        "measured": {
            "photos": n,
            "threads": args.threads,
            "max_new_tokens": LLAVA_MAX_NEW_TOKENS,
            "tiny_batch_1_ms_per_caption": 1000 * single_s / n,
            "tiny_batched_ms_per_caption": 1000 * batched_s / n,
            "batch_size": args.batch_size,
            "speedup_batched": single_s / batched_s,
        },
        "computed": {
            **costs,
            "prompt_tokens": tokens,
            "prefill_flops_per_caption": prefill_flops,
            "h200_prefill_ms_at_peak": 1000 * prefill_flops / H200_FP16_DENSE,
            "h200_decode_ms_per_caption_batch_1": 1000 * step_s * LLAVA_MAX_NEW_TOKENS,
            "h200_decode_ms_per_caption_batched": 1000 * step_s * LLAVA_MAX_NEW_TOKENS / args.batch_size,
        },
    }
    m, c = results["measured"], results["computed"]
    print(
        f"tiny LLaVA, {n} real photos, up to {LLAVA_MAX_NEW_TOKENS} new tokens,"
        f" {args.threads} thread(s) [measured]"
    )
    print(f"  batch 1         {m['tiny_batch_1_ms_per_caption']:.1f} ms/caption")
    print(
        f"  batch {args.batch_size}         {m['tiny_batched_ms_per_caption']:.1f} ms/caption"
        f"  -> {m['speedup_batched']:.2f}x"
    )
    print(
        f"LLaVA-1.5-7B [computed]: {c['params'] / 1e9:.2f} B parameters;"
        f" prefill {c['prefill_flops_per_caption'] / 1e12:.1f} TFLOP for {tokens} prompt tokens"
    )
    print(
        f"  H200 bounds: prefill >= {c['h200_prefill_ms_at_peak']:.0f} ms at fp16 peak; decoding"
        f" >= {c['h200_decode_ms_per_caption_batch_1']:.0f} ms/caption at batch 1,"
        f" >= {c['h200_decode_ms_per_caption_batched']:.0f} ms at batch {args.batch_size} (weight reads)"
    )
    files.write_json(args.out, results)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
