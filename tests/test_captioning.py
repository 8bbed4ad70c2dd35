"""Captioning: each tiny captioner on the real photos, resume without extra work, skip-and-count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from handsynth import files
from handsynth.data.captioning import (
    DEFAULT_MODELS,
    LLAVA_CHAT,
    LLAVA_PROMPT,
    caption_images,
    clean_caption,
    make_captioner,
    resolve_dtype,
)
from handsynth.errors import HandsynthError
from handsynth.tiny.captioners import (
    write_tiny_blip2,
    write_tiny_llava,
    write_tiny_paligemma,
    write_tiny_vitgpt2,
)

WRITERS = {
    "blip2": write_tiny_blip2,
    "paligemma": write_tiny_paligemma,
    "vitgpt2": write_tiny_vitgpt2,
    "llava": write_tiny_llava,
}
# First caption of the sorted real photos with 4 new tokens: pins tokenizer training, seeded
# weights, preprocessing and decoding of each tiny captioner.
EXPECTED_FIRST = {
    "blip2": "closon L finger",
    "paligemma": "ssing in a kit fingerks",
    "vitgpt2": "pu isola upwo",
    "llava": "bla standing ro qualit",
}


@pytest.fixture(scope="module")
def tiny_captioners(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captioners")
    return {kind: write(root / kind, seed=0) for kind, write in WRITERS.items()}


@pytest.fixture(scope="module")
def photos(hagrid_mini) -> list[tuple[str, Path]]:
    return [(path.stem, path) for path in sorted((hagrid_mini / "images").glob("*/*.jpg"))]


def _count_generate(captioner) -> list[int]:
    """Wrap the model's generate() to count the images it is asked to caption."""
    seen: list[int] = []
    generate = captioner.model.generate

    def counting(*args, **kwargs):
        batch = kwargs.get("pixel_values", args[0] if args else None)
        seen.append(len(batch))
        return generate(*args, **kwargs)

    captioner.model.generate = counting
    return seen


@pytest.mark.parametrize("kind", list(WRITERS))
def test_tiny_captioner_captions_every_real_photo_and_resume_does_no_work(
    kind, tiny_captioners, photos, tmp_path
):
    assert len(photos) == 33
    captioner = make_captioner(kind, str(tiny_captioners[kind]), device="cpu", max_new_tokens=4)
    assert captioner.name == f"{kind}:{tiny_captioners[kind]}"
    assert captioner.model.dtype == torch.float32  # dtype auto on CPU
    seen = _count_generate(captioner)
    out = tmp_path / "captions.jsonl"

    first = caption_images(captioner, photos, out, batch_size=16)
    assert seen == [16, 16, 1]
    assert set(first) == {key for key, _ in photos} and first.new == 33 and not first.skipped
    assert all(isinstance(c, str) and c == clean_caption(c) and c for c in first.values())
    assert first[photos[0][0]] == EXPECTED_FIRST[kind]
    rows = files.read_jsonl(out)
    assert [row["key"] for row in rows] == [key for key, _ in photos]
    assert {row["captioner"] for row in rows} == {captioner.name}

    again = caption_images(captioner, photos, out, batch_size=16)
    assert seen == [16, 16, 1]  # no model call on the resumed run
    assert dict(again) == dict(first) and again.resumed == 33 and again.new == 0
    assert len(files.read_jsonl(out)) == 33


def test_interrupted_run_resumes_with_only_the_missing_images(tiny_captioners, photos, tmp_path):
    captioner = make_captioner("vitgpt2", str(tiny_captioners["vitgpt2"]), device="cpu", max_new_tokens=4)
    seen = _count_generate(captioner)
    out = tmp_path / "captions.jsonl"
    caption_images(captioner, photos[:5], out, batch_size=4)
    # a run killed mid-write leaves a torn last line
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"key": "torn", "capt')
    run = caption_images(captioner, photos[:9], out, batch_size=4)
    assert seen == [4, 1, 4]
    assert run.resumed == 5 and run.new == 4 and len(run) == 9
    assert [row["key"] for row in files.read_jsonl(out)] == [key for key, _ in photos[:9]]


@pytest.mark.parametrize("kind", ["blip2", "llava"])
def test_unreadable_images_are_skipped_counted_and_named(kind, tiny_captioners, photos, tmp_path):
    good = [(key, shutil.copy(path, tmp_path / path.name)) for key, path in photos[:3]]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(good[0][1]).read_bytes()[:2000])
    items = [good[0], ("corrupt", corrupt), good[1], ("missing", tmp_path / "missing.jpg")]
    items += [("truncated", truncated), good[2]]
    captioner = make_captioner(kind, str(tiny_captioners[kind]), device="cpu", max_new_tokens=4)
    seen = _count_generate(captioner)

    run = caption_images(captioner, items, tmp_path / "captions.jsonl", batch_size=3)
    assert set(run.skipped) == {"corrupt", "missing", "truncated"}
    assert "corrupt.jpg" in run.skipped["corrupt"] and "missing.jpg" in run.skipped["missing"]
    assert set(run) == {key for key, _ in good} and run.new == 3
    assert seen == [2, 1]  # the bad ones never reach the model
    assert {row["key"] for row in files.read_jsonl(tmp_path / "captions.jsonl")} == set(run)


def test_metadata_captioner_uses_stored_captions_without_reading_images(tmp_path):
    captions = {"a": "  a man in a red\n jacket ", "b": "a woman in a blue dress"}
    captioner = make_captioner("metadata", captions=captions)
    items = [("a", tmp_path / "no-such-a.jpg"), ("b", tmp_path / "no-such-b.jpg"), ("c", tmp_path / "c.jpg")]
    run = caption_images(captioner, items, tmp_path / "captions.jsonl")
    assert dict(run) == {"a": "a man in a red jacket", "b": "a woman in a blue dress"}
    assert list(run.skipped) == ["c"]
    assert files.read_jsonl(tmp_path / "captions.jsonl")[0] == {
        "key": "a",
        "caption": "a man in a red jacket",
        "captioner": "metadata",
    }


def test_bad_requests_get_clear_errors(tmp_path):
    with pytest.raises(HandsynthError, match="blip2, paligemma, vitgpt2, llava, metadata"):
        make_captioner("gpt4v")
    with pytest.raises(HandsynthError, match="needs the captions"):
        make_captioner("metadata")
    captioner = make_captioner("metadata", captions={"a": "x"})
    with pytest.raises(HandsynthError, match="'a' appears twice"):
        caption_images(captioner, [("a", "1.jpg"), ("a", "2.jpg")], tmp_path / "c.jsonl")
    out = tmp_path / "other.jsonl"
    files.write_jsonl(out, [{"key": "a", "caption": "x", "captioner": "blip2:Salesforce/blip2-opt-2.7b"}])
    with pytest.raises(HandsynthError, match="holds captions from blip2"):
        caption_images(captioner, [("a", "1.jpg")], out)


def test_defaults_device_and_dtype():
    assert DEFAULT_MODELS == {
        "blip2": "Salesforce/blip2-opt-2.7b",
        "paligemma": "google/paligemma-3b-mix-224",
        "vitgpt2": "nlpconnect/vit-gpt2-image-captioning",
        "llava": "llava-hf/llava-1.5-7b-hf",
    }
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, "blip2") == torch.float32
    assert resolve_dtype("auto", cuda, "blip2") == torch.float16
    assert resolve_dtype("auto", cuda, "paligemma") == torch.bfloat16
    assert resolve_dtype("auto", cuda, "llava") == torch.float16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(HandsynthError, match="unknown dtype"):
        resolve_dtype("fp8", cpu)
    assert clean_caption(" a  man\n\twaving  ") == "a man waving"


def test_llava_asks_its_chat_prompt_and_keeps_only_the_answer(tiny_captioners, photos, tmp_path):
    captioner = make_captioner("llava", str(tiny_captioners["llava"]), device="cpu", max_new_tokens=6)
    assert captioner.processor.tokenizer.padding_side == "left"
    calls = []
    generate = captioner.model.generate

    def recording(**kwargs):
        ids = generate(**kwargs)
        calls.append((kwargs["input_ids"], ids))
        return ids

    captioner.model.generate = recording
    run = caption_images(captioner, photos[:2], tmp_path / "captions.jsonl")
    ((prompt_ids, ids),) = calls
    tokenizer = captioner.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for row, (key, _) in zip(range(2), photos, strict=False):
        prompt = prompt_ids[row]
        assert int((prompt == image_id).sum()) == 16  # (32 px / 8)² patches, CLS dropped
        text = tokenizer.decode(prompt[prompt != image_id], skip_special_tokens=True)
        assert text == LLAVA_CHAT.replace("<image>", "")
        assert torch.equal(ids[row, : len(prompt)], prompt) and ids.shape[1] == len(prompt) + 6
        answer = tokenizer.decode(ids[row, len(prompt) :], skip_special_tokens=True)
        assert run[key] == clean_caption(answer) and "ASSISTANT" not in run[key]
    assert LLAVA_CHAT.startswith("USER: <image>\n") and LLAVA_CHAT.endswith(" ASSISTANT:")
    assert "one sentence" in LLAVA_PROMPT


def test_llava_batches_give_the_one_by_one_captions(tiny_captioners, photos, tmp_path):
    captioner = make_captioner("llava", str(tiny_captioners["llava"]), device="cpu", max_new_tokens=8)
    batched = caption_images(captioner, photos[:5], tmp_path / "batched.jsonl", batch_size=5)
    single = caption_images(captioner, photos[:5], tmp_path / "single.jsonl", batch_size=1)
    assert dict(batched) == dict(single) and len(set(batched.values())) > 1


def test_an_unloadable_captioner_names_the_setting():
    with pytest.raises(HandsynthError) as err:
        make_captioner("llava", device="cpu")
    message = str(err.value)
    assert "llava-hf/llava-1.5-7b-hf" in message and "HF_HUB_OFFLINE" in message
    assert "set data.captioner_model to its folder" in message
    with pytest.raises(HandsynthError, match="set pose.captioner_model to its folder"):
        make_captioner("llava", "llava-hf/no-such-model", device="cpu", config_key="pose.captioner_model")
