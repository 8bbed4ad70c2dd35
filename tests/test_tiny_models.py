"""The tiny captioners, CLIP, chat LLM and SAM load with the real checkpoints' classes and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from handsynth.tiny.captioners import (
    write_tiny_blip2,
    write_tiny_llava,
    write_tiny_paligemma,
    write_tiny_vitgpt2,
)
from handsynth.tiny.clip import write_tiny_clip
from handsynth.tiny.llm import write_tiny_llm
from handsynth.tiny.sam import write_tiny_sam

WRITERS = {
    "blip2": write_tiny_blip2,
    "paligemma": write_tiny_paligemma,
    "vitgpt2": write_tiny_vitgpt2,
    "clip": write_tiny_clip,
    "llm": write_tiny_llm,
    "llava": write_tiny_llava,
    "sam": write_tiny_sam,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: write(root / name, seed=0) for name, write in WRITERS.items()}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]


def _weights(folder) -> torch.Tensor:
    tensors = load_file(folder / "model.safetensors")
    return torch.cat([tensors[name].flatten().float() for name in sorted(tensors)])


def test_blip2_loads_with_real_classes_and_generates(folders):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(folders["blip2"])
    model = Blip2ForConditionalGeneration.from_pretrained(folders["blip2"])
    assert processor.num_query_tokens == model.config.num_query_tokens == 4
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)
    inputs = processor(images=_images(), return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    ids = model.generate(**inputs, generation_config=model.generation_config, max_new_tokens=6)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert len(texts) == 2 and all(t.strip() for t in texts)
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_paligemma_loads_with_real_classes_and_generates(folders):
    from transformers import GemmaTokenizer, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    processor = PaliGemmaProcessor.from_pretrained(folders["paligemma"])
    model = PaliGemmaForConditionalGeneration.from_pretrained(folders["paligemma"])
    assert isinstance(processor.tokenizer, GemmaTokenizer)
    assert processor.image_seq_length == 16
    # the processor adds <image> and the 1024 <loc> + 128 <seg> tokens; the vocab covers them all
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert processor.tokenizer.convert_tokens_to_ids("<loc1023>") < len(processor.tokenizer)
    inputs = processor(text=["<image>caption en"] * 2, images=_images(), return_tensors="pt")
    prompt = inputs["input_ids"].shape[1]
    assert prompt == 16 + len(processor.tokenizer("caption en\n", add_special_tokens=False).input_ids) + 1
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert ids.shape == (2, prompt + 6)
    assert all(t.strip() for t in processor.batch_decode(ids[:, prompt:], skip_special_tokens=True))


def test_vitgpt2_loads_with_real_classes_and_generates(folders):
    from transformers import AutoTokenizer, GPT2Tokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    image_processor = ViTImageProcessor.from_pretrained(folders["vitgpt2"])
    tokenizer = AutoTokenizer.from_pretrained(folders["vitgpt2"])
    model = VisionEncoderDecoderModel.from_pretrained(folders["vitgpt2"])
    assert isinstance(tokenizer, GPT2Tokenizer)
    assert (
        model.config.decoder_start_token_id == tokenizer.eos_token_id == model.generation_config.pad_token_id
    )
    pixels = image_processor(images=_images(), return_tensors="pt").pixel_values
    ids = model.generate(pixels, num_beams=4, max_length=16)
    assert ids.shape[0] == 2 and ids.shape[1] <= 16
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    # raw byte tokens are suppressed, so the noise is made of learned word pieces: printable text
    assert all(t.strip() and t.isprintable() for t in texts)


def test_clip_loads_with_real_classes(folders):
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(folders["clip"])
    processor = CLIPProcessor.from_pretrained(folders["clip"])
    assert isinstance(processor.tokenizer, CLIPTokenizer) and processor.tokenizer.model_max_length == 77
    inputs = processor(
        text=["a man giving the thumbs up", "a woman"], images=_images(), return_tensors="pt", padding=True
    )
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    with torch.inference_mode():
        out = model(**inputs)
    assert out.image_embeds.shape == out.text_embeds.shape == (2, 32)
    assert torch.isfinite(out.logits_per_image).all()


def test_llm_chat_template_and_text_generation_pipeline(folders):
    from transformers import AutoTokenizer, LlamaForCausalLM, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folders["llm"])
    assert isinstance(LlamaForCausalLM.from_pretrained(folders["llm"]), LlamaForCausalLM)
    messages = [{"role": "user", "content": "Rewrite: 'a man in a red jacket.'"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nRewrite: 'a man in a red jacket.'"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    generator = pipeline("text-generation", model=str(folders["llm"]), device="cpu")
    out = generator(messages, max_new_tokens=8, do_sample=False)
    reply = out[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)


def test_llava_loads_with_real_classes_and_generates(folders):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    processor = AutoProcessor.from_pretrained(folders["llava"])
    model = LlavaForConditionalGeneration.from_pretrained(folders["llava"])
    assert isinstance(processor, LlavaProcessor)
    tokenizer = processor.tokenizer
    # Llama's ids for the specials; <image> then <pad> after the vocabulary, as in llava-hf
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert model.config.image_token_index == processor.image_token_id == len(tokenizer) - 2
    assert tokenizer.pad_token_id == len(tokenizer) - 1 == model.generation_config.pad_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.vision_feature_layer == -2 and model.config.vision_config.num_hidden_layers == 2
    prompt = "USER: <image>\nDescribe the person. ASSISTANT:"
    inputs = processor(images=_images(), text=[prompt] * 2, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    ids = inputs["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id
    assert int((ids[0] == processor.image_token_id).sum()) == model.config.image_seq_length == 16
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 6)
    texts = processor.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    # raw byte tokens are suppressed, so the noise is made of learned word pieces: printable text
    assert all(t.strip() and t.isprintable() for t in texts)
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_sam_loads_with_real_classes_and_segments(folders):
    from transformers import SamImageProcessorPil, SamModel, SamProcessor

    processor = SamProcessor(SamImageProcessorPil.from_pretrained(folders["sam"]))
    model = SamModel.from_pretrained(folders["sam"])
    image = np.asarray(_images()[0])  # 48 × 40
    inputs = processor(
        images=image,
        input_points=[[[[10, 20], [30, 12]]]],
        input_boxes=[[[5, 5, 35, 40]]],
        return_tensors="pt",
    )
    assert inputs["pixel_values"].shape == (1, 3, 64, 64) and inputs["reshaped_input_sizes"].tolist() == [
        [64, 53]
    ]
    with torch.inference_mode():
        prompts = {k: inputs[k].float() for k in ("input_points", "input_boxes")}
        out = model(pixel_values=inputs["pixel_values"], **prompts, multimask_output=False)
    masks = processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    assert masks[0].shape == (1, 1, 48, 40) and 0 < masks[0].sum() < 48 * 40
    # the encoder is not blind to the image (SAM's default init of 1e-10 would make it so)
    other = processor(images=255 - image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        assert not torch.allclose(
            model.get_image_embeddings(inputs["pixel_values"]), model.get_image_embeddings(other)
        )
    assert sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.parametrize("name", list(WRITERS))
def test_writers_are_seeded_and_skip_complete_folders(folders, tmp_path, name):
    again = WRITERS[name](tmp_path / "same", seed=0)
    other = WRITERS[name](tmp_path / "other", seed=1)
    assert torch.equal(_weights(folders[name]), _weights(again))
    assert not torch.equal(_weights(folders[name]), _weights(other))
    # a complete folder is left as it is
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert WRITERS[name](again, seed=1) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left over
