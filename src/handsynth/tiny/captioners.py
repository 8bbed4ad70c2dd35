"""Tiny captioning models (BLIP-2, PaliGemma, ViT-GPT2, LLaVA-1.5) with random weights, built offline.

Each folder is what `save_pretrained` writes for the real checkpoint's classes, so the captioning code
that loads `Salesforce/blip2-opt-2.7b` loads these the same way. Their captions are noise; they are
here so the captioning path runs end to end without a download. Tokenizers are byte-level or
sentencepiece-style BPEs learned with the `tokenizers` library on the built-in caption corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GemmaConfig,
    GemmaTokenizer,
    GPT2Config,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)

from handsynth.files import save_pretrained_atomically
from handsynth.tiny.tokenizer import caption_corpus

IMAGE_SIZE = 32
PATCH = 8
HIDDEN = 32
# Model files every complete folder has; a folder holding them all is not rebuilt.
_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")


def _complete(folder: Path, *extra: str) -> bool:
    return all((folder / name).is_file() for name in _MODEL_FILES + extra)


def train_byte_bpe(
    specials: list[str], vocab_size: int = 600
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2-style byte-level BPE (vocab, merges) learned on the built-in caption corpus.

    The special tokens take the first ids, in the order given, then the 256 byte symbols.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(caption_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def gpt2_tokenizer(specials: list[str], **special_roles: str) -> GPT2Tokenizer:
    """A GPT2Tokenizer over `train_byte_bpe(specials)`; `special_roles` names bos/eos/unk/pad."""
    vocab, merges = train_byte_bpe(specials)
    return GPT2Tokenizer(vocab=vocab, merges=merges, **special_roles)


def gemma_tokenizer(vocab_size: int = 600) -> GemmaTokenizer:
    """A Gemma-style tokenizer: sentencepiece-like BPE on '▁'-joined text with byte fallback."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    corpus = caption_corpus()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(byte_tokens),
        special_tokens=specials + byte_tokens,
        initial_alphabet=sorted(set("".join(corpus).replace(" ", "▁"))),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    return GemmaTokenizer(vocab=model["vocab"], merges=[tuple(pair) for pair in model["merges"]])


def llama_tokenizer(vocab_size: int = 600) -> LlamaTokenizer:
    """A Llama-style tokenizer: sentencepiece-like BPE over '▁'-marked words with byte fallback,
    <unk>, <s>, </s> at ids 0-2 as in Llama's vocabulary."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = caption_corpus()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(byte_tokens),
        special_tokens=specials + byte_tokens,
        initial_alphabet=sorted(set("".join(corpus).replace(" ", "▁"))),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(pair) for pair in model["merges"]]
    return LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True)


def _byte_ids(tokenizer: GPT2Tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids(pre_tokenizers.ByteLevel.alphabet())


def _readable_noise(model, banned_ids: list[int]) -> None:
    """Make random-weight captions read as words: ban raw byte (and location) tokens, repeats and
    an immediate end of text. Only the tiny folders carry this in generation_config.json.
    """
    model.generation_config.suppress_tokens = sorted(banned_ids)
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.min_new_tokens = 4


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def write_tiny_blip2(folder: str | Path, seed: int = 0) -> Path:
    """BLIP-2 with an OPT decoder at toy size (32 px, hidden 32, 4 query tokens); skipped if complete."""
    folder = Path(folder)
    if _complete(folder, "processor_config.json", "tokenizer.json"):
        return folder
    # OPT's special tokens and ids (blip2-opt uses the GPT-2 BPE with these).
    tokenizer = gpt2_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"],
        bos_token="</s>",
        eos_token="</s>",
        unk_token="</s>",
        pad_token="<pad>",
    )
    num_query = 4
    image_processor = BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            encoder_hidden_size=HIDDEN,
            max_position_embeddings=64,
        ).to_dict(),
        text_config=OPTConfig(
            vocab_size=len(processor.tokenizer),
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict(),
        num_query_tokens=num_query,
        image_token_index=image_token_id,
    )
    model = _seeded(seed, lambda: Blip2ForConditionalGeneration(config)).eval()
    model.generation_config.max_new_tokens = 20
    _readable_noise(model, _byte_ids(tokenizer) + [image_token_id])
    return save_pretrained_atomically(folder, model, processor)


def write_tiny_paligemma(folder: str | Path, seed: int = 0) -> Path:
    """PaliGemma (SigLIP + Gemma) at toy size (32 px, 16 image tokens, hidden 32); skipped if complete."""
    folder = Path(folder)
    if _complete(folder, "processor_config.json", "tokenizer.json"):
        return folder
    image_processor = SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # PaliGemmaProcessor reads this attribute; the real checkpoint stores it in preprocessor_config.json.
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH) ** 2
    tokenizer = gemma_tokenizer()
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            projection_dim=HIDDEN,
        ).to_dict(),
        text_config=GemmaConfig(
            vocab_size=len(processor.tokenizer),  # includes <image>, <loc....> and <seg...>
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict(),
        projection_dim=HIDDEN,
        image_token_id=processor.image_token_id,
    )
    model = _seeded(seed, lambda: PaliGemmaForConditionalGeneration(config)).eval()
    model.generation_config.max_new_tokens = 20
    vocab = processor.tokenizer.get_vocab()
    _readable_noise(model, [i for t, i in vocab.items() if t.startswith(("<0x", "<loc", "<seg", "<image>"))])
    return save_pretrained_atomically(folder, model, processor)


def write_tiny_vitgpt2(folder: str | Path, seed: int = 0) -> Path:
    """ViT encoder + GPT-2 decoder (nlpconnect/vit-gpt2 layout) at toy size; skipped if complete."""
    folder = Path(folder)
    if _complete(folder, "preprocessor_config.json", "tokenizer.json"):
        return folder
    eot = "<|endoftext|>"
    tokenizer = gpt2_tokenizer([eot], bos_token=eot, eos_token=eot, unk_token=eot)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    encoder = ViTConfig(
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=HIDDEN,
        n_layer=1,
        n_head=4,
        n_positions=64,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    # generate() needs these on both the config and the generation config (nlpconnect sets them too).
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eot_id
    model = _seeded(seed, lambda: VisionEncoderDecoderModel(config)).eval()
    generation = model.generation_config
    generation.decoder_start_token_id = generation.pad_token_id = generation.eos_token_id = eot_id
    generation.bos_token_id = eot_id
    _readable_noise(model, _byte_ids(tokenizer))
    image_processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return save_pretrained_atomically(folder, model, image_processor, tokenizer)


def write_tiny_llava(folder: str | Path, seed: int = 0) -> Path:
    """LLaVA-1.5 (CLIP vision tower + Llama) at toy size (32 px, 16 image tokens, hidden 32); skipped if
    complete. The llava-hf layout: <image> and <pad> added after the Llama vocabulary, the image tokens
    the patches of the second-to-last vision layer without CLS ("default" selection)."""
    folder = Path(folder)
    if _complete(folder, "processor_config.json", "tokenizer.json"):
        return folder
    tokenizer = llama_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    # (32 / 8)² patches + CLS, minus CLS for the "default" selection: 16 image tokens
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,  # LLaVA reads the second-to-last layer
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            projection_dim=HIDDEN,
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).to_dict(),
        image_token_index=processor.image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = _seeded(seed, lambda: LlavaForConditionalGeneration(config)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    vocab = tokenizer.get_vocab()
    _readable_noise(
        model, [i for t, i in vocab.items() if t.startswith(("<0x", "<image>", "<unk>", "<s>", "<pad>"))]
    )
    return save_pretrained_atomically(folder, model, processor)
