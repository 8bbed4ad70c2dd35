"""Dataset quality as in Hand1000's dataset_evaluate.py: CLIP image-caption and caption-caption similarity.

- image-caption: mean cosine similarity between each image's and its caption's CLIP embedding
  (higher: captions describe their images);
- caption-caption: mean cosine similarity over all caption pairs i < j (lower: more diverse captions).
  The reference script averages the full N x N matrix, diagonal (1.0) included; that figure is
  reported too, as `caption_caption_with_self`, so numbers compare with the paper's.
Embeddings are CLIP's projected features (`encode_image` / `encode_text` in OpenAI's package).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handsynth import files, hub
from handsynth.errors import HandsynthError
from handsynth.hub import resolve_device
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # ViT-B/32, as dataset_evaluate.py


def load_clip(name_or_path: str = DEFAULT_CLIP, device: str = "auto") -> tuple[Any, Any]:
    """(CLIPModel on `device`, in eval mode; CLIPProcessor) from a hub id or a local folder."""
    from transformers import CLIPModel, CLIPProcessor

    model = hub.from_pretrained(CLIPModel, name_or_path).to(resolve_device(device)).eval()
    return model, hub.from_pretrained(CLIPProcessor, name_or_path)


def _projected(output: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def image_features(
    model: Any, processor: Any, image_paths: Sequence[str | Path], batch_size: int = 32
) -> tuple[np.ndarray, dict[int, str]]:
    """CLIP image embeddings (N_ok, D) float32 of the readable images, and {index: reason} of the rest."""
    device = next(model.parameters()).device
    chunks, skipped = [], {}
    for start in progress_bar(range(0, len(image_paths), batch_size), desc="CLIP images", unit="batch"):
        images = []
        for i, path in enumerate(image_paths[start : start + batch_size], start):
            try:
                images.append(files.load_image(path))
            except HandsynthError as exc:
                skipped[i] = str(exc)
        if images:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            with torch.inference_mode():
                chunks.append(_projected(model.get_image_features(pixel_values=pixels)).float().cpu())
    dim = model.config.projection_dim
    return (torch.cat(chunks).numpy() if chunks else np.zeros((0, dim), np.float32)), skipped


def text_features(model: Any, processor: Any, captions: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """CLIP text embeddings (N, D) float32; captions longer than CLIP's 77 tokens are truncated."""
    device = next(model.parameters()).device
    chunks = []
    for start in progress_bar(range(0, len(captions), batch_size), desc="CLIP captions", unit="batch"):
        tokens = processor.tokenizer(
            list(captions[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            chunks.append(_projected(model.get_text_features(**tokens)).float().cpu())
    dim = model.config.projection_dim
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, dim), np.float32)


def similarities(image_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, float | None]:
    """The three means from paired (N, D) embeddings; caption pairs need N >= 2 (else None)."""
    img = image_emb.astype(np.float64)
    txt = text_emb.astype(np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    n = len(txt)
    gram = txt @ txt.T
    return {
        "image_caption": float(np.mean(np.sum(img * txt, axis=1))) if n else None,
        "caption_caption": float((gram.sum() - np.trace(gram)) / (n * (n - 1))) if n > 1 else None,
        "caption_caption_with_self": float(gram.mean()) if n else None,
    }


def evaluate_dataset_quality(
    image_paths: Sequence[str | Path],
    captions: Sequence[str],
    clip_model: str = DEFAULT_CLIP,
    out_json: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
) -> dict[str, Any]:
    """CLIP similarities of (image, caption) pairs; unreadable images drop their pair and are counted.

    Returns (and writes to `out_json` if given) clip_model, n_pairs, n_skipped, skipped
    {path: reason}, image_caption, caption_caption, caption_caption_with_self.
    """
    if len(image_paths) != len(captions):
        raise HandsynthError(
            f"dataset quality needs one caption per image: got {len(image_paths)} images "
            f"and {len(captions)} captions"
        )
    if not image_paths:
        raise HandsynthError("dataset quality: no images to evaluate; check the dataset folder and split")
    model, processor = load_clip(clip_model, device)
    image_emb, skipped = image_features(model, processor, image_paths, batch_size)
    kept = [caption for i, caption in enumerate(captions) if i not in skipped]
    text_emb = text_features(model, processor, kept)
    if skipped:
        log.warning("dataset quality: skipped %d unreadable image(s)", len(skipped))
    result = {
        "clip_model": clip_model,
        "n_pairs": len(kept),
        "n_skipped": len(skipped),
        "skipped": {str(image_paths[i]): reason for i, reason in skipped.items()},
        **similarities(image_emb, text_emb),
    }
    if out_json is not None:
        files.write_json(out_json, result)
    return result


def quality_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table, one row per named result (e.g. per gesture or per captioner)."""
    header = ("set", "pairs", "skipped", "image-caption", "caption-caption", "with self")
    rows = [header]
    for name, r in results.items():
        cells = [r["image_caption"], r["caption_caption"], r["caption_caption_with_self"]]
        shown = ["-" if v is None or math.isnan(v) else f"{v:.4f}" for v in cells]
        rows.append((name, str(r["n_pairs"]), str(r["n_skipped"]), *shown))
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]

    def line(row: Sequence[str]) -> str:
        # names left-aligned, numbers right-aligned
        numbers = [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([row[0].ljust(widths[0]), *numbers])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def print_quality_table(results: Mapping[str, Mapping[str, Any]]) -> None:
    print(quality_table(results))
