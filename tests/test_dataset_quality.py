"""Dataset quality (dataset_evaluate.py): CLIP similarities against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from handsynth.data.gestures import gesture_phrase
from handsynth.data.quality import (
    evaluate_dataset_quality,
    image_features,
    load_clip,
    quality_table,
    similarities,
)
from handsynth.errors import HandsynthError
from handsynth.tiny.clip import write_tiny_clip

METRICS = ("image_caption", "caption_caption", "caption_caption_with_self")
# Tiny CLIP (seed 0) image embeddings of the sorted real photos: the first photo's and the mean's
# first six components; and the two similarities on the 33 captions.
PINNED_FIRST = [-2.5266, -0.8398, 0.0934, 1.7144, -0.7377, -1.2643]
PINNED_MEAN = [-2.5509, -0.9884, -0.1141, 1.5838, -0.6554, -1.3197]
PINNED_SIMILARITIES = (0.102823, 0.671738)  # image-caption, caption-caption


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def pairs(hagrid_mini):
    paths = sorted((hagrid_mini / "images").glob("*/*.jpg"))
    return paths, [f"a person {gesture_phrase(path.parent.name, 'their')}" for path in paths]


@pytest.fixture(scope="module")
def result(tiny_clip, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    r = evaluate_dataset_quality(*pairs, clip_model=str(tiny_clip), out_json=out, batch_size=8, device="cpu")
    return r, out


def _independent(tiny_clip, paths, captions):
    """One image / caption at a time through the towers and projections, cosines pair by pair."""
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    image_emb, text_emb = [], []
    with torch.no_grad():
        for path, caption in zip(paths, captions, strict=True):
            pixels = processor.image_processor(
                Image.open(path).convert("RGB"), return_tensors="pt"
            ).pixel_values
            image_emb.append(
                model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)[0]
            )
            ids = processor.tokenizer(caption, return_tensors="pt").input_ids
            text_emb.append(model.text_projection(model.text_model(input_ids=ids).pooler_output)[0])
    img = [e.numpy().astype(np.float64) for e in image_emb]
    txt = [e.numpy().astype(np.float64) for e in text_emb]

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    n = len(txt)
    pair = [cos(txt[i], txt[j]) for i in range(n) for j in range(i + 1, n)]
    return {
        "image_caption": sum(cos(i, t) for i, t in zip(img, txt, strict=True)) / n,
        "caption_caption": sum(pair) / len(pair),
        "caption_caption_with_self": (2 * sum(pair) + n) / n**2,
    }


def test_quality_equals_independent_computation(result, tiny_clip, pairs):
    r, _ = result
    expected = _independent(tiny_clip, *pairs)
    for name, value in expected.items():
        assert r[name] == pytest.approx(value, abs=1e-5), name
    assert r["n_pairs"] == 33 and r["n_skipped"] == 0


def test_pinned_tiny_clip_image_embeddings(tiny_clip, pairs):
    model, processor = load_clip(str(tiny_clip), device="cpu")
    emb, skipped = image_features(model, processor, pairs[0], batch_size=8)
    assert emb.shape == (33, 32) and emb.dtype == np.float32 and not skipped
    np.testing.assert_allclose(emb[0, :6], PINNED_FIRST, atol=1e-4)
    np.testing.assert_allclose(emb.mean(axis=0)[:6], PINNED_MEAN, atol=1e-4)


def test_similarities_on_known_embeddings():
    # image i pairs with caption i; captions (1,0), (1,1), (0,-2): pair cosines 1/sqrt2, 0, -1/sqrt2
    image = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    text = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    r = similarities(image, text)
    assert r["image_caption"] == pytest.approx((1 + 2**-0.5 - 1) / 3)
    assert r["caption_caption"] == pytest.approx(0.0)
    assert r["caption_caption_with_self"] == pytest.approx(3 / 9)
    assert similarities(image[:1], text[:1])["caption_caption"] is None


def test_json_written_matches_result(result):
    r, out = result
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert r["clip_model"].endswith("tiny-clip") and set(METRICS) <= set(r)


def test_unreadable_image_drops_its_pair_and_is_counted(tiny_clip, pairs, tmp_path):
    paths, captions = pairs
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    mixed_paths = [*paths[:3], corrupt, tmp_path / "missing.jpg"]
    mixed_captions = [*captions[:3], "a corrupt one", "a missing one"]
    r = evaluate_dataset_quality(mixed_paths, mixed_captions, str(tiny_clip), batch_size=2, device="cpu")
    clean = evaluate_dataset_quality(paths[:3], captions[:3], str(tiny_clip), device="cpu")
    assert r["n_pairs"] == 3 and r["n_skipped"] == 2
    assert set(r["skipped"]) == {str(corrupt), str(tmp_path / "missing.jpg")}
    for name in METRICS:
        assert r[name] == pytest.approx(clean[name], abs=1e-6)


def test_table_and_errors(result, tiny_clip):
    r, _ = result
    table = quality_table({"call": r, "single": {**r, "caption_caption": None}})
    lines = table.splitlines()
    assert lines[0].split() == ["set", "pairs", "skipped", "image-caption", "caption-caption", "with", "self"]
    assert lines[2].split()[:4] == ["call", "33", "0", f"{r['image_caption']:.4f}"]
    assert lines[3].split()[4] == "-"
    with pytest.raises(HandsynthError, match="one caption per image"):
        evaluate_dataset_quality(["a.jpg"], [], str(tiny_clip))
    one = evaluate_dataset_quality(["x.jpg"], ["a man"], str(tiny_clip), device="cpu")
    assert one["n_pairs"] == 0 and one["n_skipped"] == 1
    assert one["image_caption"] is None or math.isnan(one["image_caption"])


def test_pinned_tiny_clip_similarities(result):
    """The tokenizer trains identically in every process, so the text side can be pinned too."""
    r, _ = result
    assert r["image_caption"] == pytest.approx(PINNED_SIMILARITIES[0], abs=1e-5)
    assert r["caption_caption"] == pytest.approx(PINNED_SIMILARITIES[1], abs=1e-5)
