"""An offline CLIP tokenizer: byte-level BPE learned from a small built-in caption corpus.

It has the legacy `vocab.json` + `merges.txt` layout of `openai/clip-vit-large-patch14`, so
`CLIPTokenizer.from_pretrained(folder)` loads it like the real one; only the vocabulary is smaller.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from handsynth import files
from handsynth.data.gestures import PHRASE_TEMPLATES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's own pre-tokenisation (transformers' CLIPTokenizer), so merges match how text is split.
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

_CAPTION_CORPUS = """
a man a woman a girl a boy a person a young woman an old man a child people
in a green shirt and glasses in a white sweater in a pink shirt in a blue dress in a red jacket
wearing a black t - shirt wearing a face mask with a beard with glasses with long hair
standing in a room standing in front of a wall sitting on a couch in a living room in a kitchen
in front of a tv in front of a bookshelf in front of a mirror in front of a white wall
with a wall paper near a window next to a door on a bed with a curtain holding a cell phone
his her their hand hands finger fingers thumb palm lips face arm up down open closed
giving the peace sign making the sign for three making a hand gesture is making a hand gesture
a photo of a hand gesture, high quality, realistic photo, detailed hands
"""


def caption_corpus() -> list[str]:
    phrases = [template.format(his=p) for template in PHRASE_TEMPLATES.values() for p in ("his", "her")]
    return [line.strip() for line in _CAPTION_CORPUS.splitlines() if line.strip()] + phrases


def _clip_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def _clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def write_clip_tokenizer(folder: str | Path, vocab_size: int = 1000) -> CLIPTokenizer:
    """Learn BPE merges on the built-in corpus and write a loadable CLIP tokenizer folder."""
    folder = Path(folder)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    bpe.normalizer = _clip_normalizer()
    bpe.pre_tokenizer = _clip_pre_tokenizer()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_ends = [c + "</w>" for c in alphabet]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,  # all but BOS and EOS
        initial_alphabet=alphabet,
        # fixed ids for the word-final symbols: the trainer breaks ties between equally frequent
        # merges by id, and would otherwise number these in a different order in every process
        special_tokens=word_ends,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(caption_corpus(), trainer)
    merges = [" ".join(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]

    # CLIP's vocab order: bytes, bytes+</w>, merged pieces in merge order, then the specials.
    tokens = alphabet + word_ends + ["".join(m.split(" ")) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    files.write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}))
    files.write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer
