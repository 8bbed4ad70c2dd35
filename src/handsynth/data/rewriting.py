"""Gesture-phrase rewriting: every caption ends up carrying its gesture's exact phrase.

Captioners describe the person and the room well but name the gesture wrongly ("giving the peace
sign" on a `call` image) or not at all (seed 000, Fig. 2). Two modes fix that:

- `deterministic`: a known wrong gesture phrase is replaced by the target phrase, else the phrase
  is appended. Fast, and reproduces the paper's six before/after pairs.
- `llm`: the paper's own prompt (seed 003) sent to a text-generation model. Its answer is only used
  when it passes `validate_rewrite`; anything else falls back to deterministic mode and is counted.

The phrase's his/her/their agrees with the person the caption names.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

from handsynth.data.gestures import gesture_phrase
from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

# Exact wording from seed 003 (the official README); {phrase} and {caption} are filled in.
PROMPT_TEMPLATE = (
    "The following sentence contains incorrect hand gesture information or lacks hand gesture "
    "information. If it contains incorrect hand gesture information, modify it to '{phrase}.' If it "
    "lacks hand gesture information, append '{phrase}' to the end of the sentence. The original "
    "sentence is: '{caption}.' The final sentence must include '{phrase}' exactly as it is. Provide "
    "the modified sentence directly and independently."
)
DEFAULT_LLM = "meta-llama/Meta-Llama-3-8B-Instruct"

_FEMALE = {
    "woman", "girl", "lady", "she", "her", "hers", "herself", "female", "mother", "mom", "daughter",
    "wife", "sister", "grandmother", "aunt", "bride", "actress", "queen", "businesswoman",
}  # fmt: skip
_MALE = {
    "man", "boy", "guy", "gentleman", "he", "him", "his", "himself", "male", "father", "dad", "son",
    "husband", "brother", "grandfather", "uncle", "groom", "actor", "king", "businessman",
}  # fmt: skip
_PLURAL = {"women", "men", "girls", "boys", "people", "persons", "couple", "group", "children", "kids"}

# Known wrong or vague gesture phrases that captioners write, as regexes (extend freely). Each one
# starts at its verb, so "is making a hand gesture" keeps its "is" (paper pair 4).
_POSS = r"(?:his|her|their|a|an|the)"
_SIGN_WORDS = (
    r"(?:peace|victory|v|ok|okay|o\.k\.|thumbs[- ]?up|thumbs[- ]?down|thumb[- ]?up|thumb[- ]?down|"
    r"stop|rock|rock and roll|heart|hand|hang loose|shaka|call me|phone|number \w+|\w+ finger|l)"
)
WRONG_GESTURE_PATTERNS: list[str] = [
    rf"(?:making|giving|doing|showing|flashing|holding up|throwing up|forming) (?:{_POSS} )?"
    rf"{_SIGN_WORDS} (?:sign|signs|symbol|gesture|gestures)(?: with {_POSS} (?:hand|hands|fingers?))?",
    r"(?:making|giving|doing|showing) the (?:sign|symbol) (?:for|of) (?:an? )?[\w-]+",
    rf"(?:making|giving|doing|showing|performing) (?:{_POSS} )?(?:(?:hand|finger) )?"
    rf"(?:gesture|gestures|sign|signs)(?: with {_POSS} (?:hand|hands|fingers?))?",
    r"giving (?:a |the )?thumbs?[- ]?(?:up|down)(?: sign)?",
    r"giving (?:a |the )?(?:peace|ok|okay|victory) sign",
    r"holding up (?:one|two|three|four|five|\d+) fingers?",
    rf"holding up {_POSS} (?:hand|hands|fingers?|thumbs?)",
    rf"holding {_POSS} (?:hand|hands|fingers?|thumbs?) up",
    rf"raising {_POSS} (?:hand|hands|fingers?|thumbs?)",
    rf"waving(?: {_POSS} (?:hand|hands))?(?: at the camera)?",
    rf"pointing (?:{_POSS} finger )?(?:at|to) (?:the camera|something|{_POSS} \w+)",
    rf"(?:with|putting|holding) {_POSS} (?:finger|fingers|hand|hands) (?:on|to|over) {_POSS} (?:lips|mouth)",
]
_WRONG = re.compile("|".join(f"(?:\\b{p}\\b)" for p in WRONG_GESTURE_PATTERNS), re.IGNORECASE)


def pronoun_for(caption: str) -> str:
    """'his', 'her' or 'their', for the person `caption` names (their when unsure or several)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    female, male = bool(words & _FEMALE), bool(words & _MALE)
    if words & _PLURAL or female == male:
        return "their"
    return "her" if female else "his"


def target_phrase(gesture: str, caption: str) -> str:
    return gesture_phrase(gesture, pronoun_for(caption))


def clean_caption(text: str) -> str:
    """One line, single spaces, no trailing period: the form every caption is stored in."""
    text = " ".join(text.split())
    return text.rstrip(" .")


def rewrite_deterministic(caption: str, gesture: str) -> str:
    """Replace the first known wrong gesture phrase by the target phrase (drop any others), else append."""
    caption = clean_caption(caption)
    phrase = target_phrase(gesture, caption)
    if phrase in caption:
        return caption
    match = _WRONG.search(caption)
    if match is None:
        return f"{caption} {phrase}" if caption else phrase
    head, tail = caption[: match.start()], caption[match.end() :]
    # Later wrong phrases would contradict the target; drop them with their joining "and"/comma.
    tail = re.sub(rf"(?:\s*,|\s+and)?\s+(?:{_WRONG.pattern})", "", tail, flags=re.IGNORECASE)
    return clean_caption(f"{head}{phrase}{tail}")


def build_prompt(caption: str, gesture: str) -> str:
    caption = clean_caption(caption)
    return PROMPT_TEMPLATE.format(phrase=target_phrase(gesture, caption), caption=caption)


def validate_rewrite(output: str, caption: str, gesture: str) -> tuple[str | None, str]:
    """(the cleaned sentence, "ok") when an LLM answer is usable, else (None, the reason)."""
    caption = clean_caption(caption)
    phrase = target_phrase(gesture, caption)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        return None, "empty" if not lines else "several lines"
    text = clean_caption(lines[0])
    if not text:
        return None, "empty"
    if any(q in text for q in '"“”‘’`') or text[0] == "'" or text[-1] == "'":
        return None, "quotes"
    if ":" in text:
        return None, "preamble"  # "Here is the modified sentence: ..."
    if re.search(r"[.!?;]\s+\S", text) or text[-1] in "!?":
        return None, "several sentences"
    if phrase not in text:
        return None, "phrase missing"
    # The rest of the caption must survive: most of its words outside any wrong gesture phrase.
    kept = set(re.findall(r"[a-z]+", _WRONG.sub(" ", caption.lower())))
    found = set(re.findall(r"[a-z]+", text.lower()))
    if kept and len(kept & found) < 0.6 * len(kept):
        return None, "caption content lost"
    if len(text) > len(caption) + len(phrase) + 40:
        return None, "too long"
    return text, "ok"


Generator = Callable[[list[str]], list[str]]  # prompts -> raw model answers, one per prompt


def make_llm_generator(
    model: str = DEFAULT_LLM, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 80
) -> Generator:
    """A greedy transformers text-generation pipeline; chat models get the prompt as a user turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from handsynth.hub import from_pretrained

    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    torch_dtype = {"auto": torch.float16 if cuda else torch.float32, "fp16": torch.float16,
                   "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]  # fmt: skip
    tokenizer = from_pretrained(AutoTokenizer, model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
    lm = from_pretrained(AutoModelForCausalLM, model, dtype=torch_dtype)
    lm.to("cuda" if cuda and device == "auto" else ("cpu" if device == "auto" else device))
    pipe = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    chat = bool(getattr(tokenizer, "chat_template", None))

    def generate(prompts: list[str]) -> list[str]:
        inputs = [[{"role": "user", "content": p}] for p in prompts] if chat else prompts
        results = pipe(
            inputs,
            batch_size=len(prompts),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_full_text=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return [r[0]["generated_text"] for r in results]

    return generate


class Rewrite(NamedTuple):
    caption: str
    method: str  # llm_ok | llm_fallback | deterministic
    reason: str  # "ok", or why the LLM answer was rejected


def rewrite_captions(
    items: Sequence[tuple[str, str]],
    mode: str = "deterministic",
    generator: Generator | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, list[Rewrite]], None] | None = None,
) -> list[Rewrite]:
    """Rewrite (caption, gesture) pairs, in batches with a progress bar.

    `mode` is "deterministic" or "llm" (then `generator` answers each batch of prompts).
    `on_batch(start, rewrites)` is called after every batch, so a caller can save work as it goes.
    """
    if mode not in ("deterministic", "llm"):
        raise HandsynthError(f"data.rewrite must be 'deterministic' or 'llm', got '{mode}'")
    if mode == "llm" and generator is None:
        raise ValueError("llm rewriting needs a generator")
    rewrites: list[Rewrite] = []
    step = batch_size if mode == "llm" else max(len(items), 1)
    with progress_bar(total=len(items), desc=f"rewriting ({mode})", unit="caption") as bar:
        for start in range(0, len(items), step):
            batch = items[start : start + step]
            answers = [None] * len(batch)
            if mode == "llm":
                answers = generator([build_prompt(c, g) for c, g in batch])
                if len(answers) != len(batch):
                    raise ValueError(f"the generator gave {len(answers)} answers for {len(batch)} prompts")
            done = [_rewrite_one(c, g, a) for (c, g), a in zip(batch, answers, strict=True)]
            rewrites.extend(done)
            if on_batch is not None:
                on_batch(start, done)
            bar.update(len(batch))
    fallbacks = Counter(r.reason for r in rewrites if r.method == "llm_fallback")
    if fallbacks:
        log.warning(
            "%d LLM rewrite(s) failed validation and fell back to deterministic mode: %s",
            sum(fallbacks.values()),
            dict(fallbacks),
        )
    return rewrites


def _rewrite_one(caption: str, gesture: str, answer: str | None) -> Rewrite:
    if answer is None:
        return Rewrite(rewrite_deterministic(caption, gesture), "deterministic", "ok")
    text, reason = validate_rewrite(answer, caption, gesture)
    if text is not None:
        return Rewrite(text, "llm_ok", reason)
    return Rewrite(rewrite_deterministic(caption, gesture), "llm_fallback", reason)


def summarize(rewrites: Sequence[Rewrite]) -> dict:
    """Counts per method and per fallback reason, for the dataset report."""
    return {
        "llm_ok": sum(r.method == "llm_ok" for r in rewrites),
        "llm_fallback": sum(r.method == "llm_fallback" for r in rewrites),
        "deterministic": sum(r.method == "deterministic" for r in rewrites),
        "fallback_reasons": dict(Counter(r.reason for r in rewrites if r.method == "llm_fallback")),
    }
