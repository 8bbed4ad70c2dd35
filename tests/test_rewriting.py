"""Gesture-phrase rewriting: the paper's before/after pairs, agreement, LLM validation and fallback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from handsynth.data.gestures import PHRASE_TEMPLATES, gesture_phrase
from handsynth.data.rewriting import (
    PROMPT_TEMPLATE,
    build_prompt,
    pronoun_for,
    rewrite_captions,
    rewrite_deterministic,
    summarize,
    validate_rewrite,
)
from handsynth.errors import HandsynthError

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"

# Seed 000, Fig. 2: BLIP2 caption -> the post-processed caption, for call, four, like, mute, ok, palm.
PAPER_PAIRS = [
    ("a girl in a green shirt and glasses giving the peace sign", "call",
     "a girl in a green shirt and glasses making phone call hand gesture"),
    ("a woman in a white sweater making the sign for three", "four",
     "a woman in a white sweater making four fingers up hand gesture"),
    ("a woman standing in a room with a wall paper", "like",
     "a woman standing in a room with a wall paper giving the thumbs up"),
    ("a man in a t - shirt and shorts is making a hand gesture", "mute",
     "a man in a t - shirt and shorts is putting his finger on his lips"),
    ("a man making a hand gesture in a room", "ok", "a man making an ok sign with his hands in a room"),
    ("a woman in a pink shirt making a hand gesture", "palm",
     "a woman in a pink shirt giving an open palm with five fingers isolated"),
]  # fmt: skip


@pytest.mark.parametrize(("before", "gesture", "after"), PAPER_PAIRS)
def test_deterministic_rewrite_reproduces_the_paper_pairs(before, gesture, after):
    assert rewrite_deterministic(before, gesture) == after


def test_call_example_keeps_the_description():
    out = rewrite_deterministic("a girl in a green shirt and glasses giving the peace sign", "call")
    assert "making phone call hand gesture" in out
    assert "green shirt and glasses" in out
    assert "peace" not in out


@pytest.mark.parametrize(
    ("caption", "pronoun"),
    [
        ("a woman in a red dress", "her"),
        ("a girl with long hair", "her"),
        ("a man standing in a kitchen", "his"),
        ("a boy in a blue shirt", "his"),
        ("a person standing in a room", "their"),
        ("a man and a woman in a park", "their"),
        ("two women in an office", "their"),
        ("a Lady in a hat", "her"),
        ("a woman in a manger scene", "her"),  # "manger" is not "man"
    ],
)
def test_pronoun_agreement(caption, pronoun):
    assert pronoun_for(caption) == pronoun


def test_agreement_in_the_phrase():
    assert rewrite_deterministic("a woman in a pink shirt making a hand gesture", "ok") == (
        "a woman in a pink shirt making an ok sign with her hands"
    )
    assert rewrite_deterministic("a person in a room", "mute") == (
        "a person in a room putting their finger on their lips"
    )


CAPTIONS = [
    "a girl in a green shirt and glasses giving the peace sign",
    "a man giving the thumbs up and making a peace sign in a kitchen",
    "a woman waving at the camera",
    "a girl is smiling and holding a piece of food",
    "In this image we can see a woman standing and in the background we can see the wall.",
    "a man showing the ok sign with his hand.",
    "a woman holding up two fingers in front of a door",
    "",
    "a  man   with  a beard .",
]


@pytest.mark.parametrize("gesture", sorted(PHRASE_TEMPLATES))
def test_every_output_carries_the_exact_phrase(gesture):
    for caption in CAPTIONS:
        out = rewrite_deterministic(caption, gesture)
        phrase = gesture_phrase(gesture, pronoun_for(caption))
        assert out.count(phrase) == 1, (caption, out)
        assert not out.endswith(".") and "  " not in out and out == out.strip()


def test_later_wrong_phrases_are_dropped_and_present_phrase_is_kept():
    out = rewrite_deterministic("a man giving the thumbs up and making a peace sign in a kitchen", "ok")
    assert out == "a man making an ok sign with his hands in a kitchen"
    # the caption already says the right thing: unchanged (bar the trailing period)
    assert rewrite_deterministic("a man giving the thumbs up.", "like") == "a man giving the thumbs up"
    # but the same words are wrong for another gesture
    assert rewrite_deterministic("a man giving the thumbs up", "dislike") == "a man giving the thumbs down"


def test_prompt_is_the_seed_wording():
    seed = next(SEEDS.glob("003_*.txt"), None)
    if seed is None:
        pytest.skip("seed 003 not found beside the repo")
    # The seed's example prompt, for call on the first Fig. 2 caption, must be ours word for word.
    example = re.search(r"```bash\n(The following sentence.*?)\n```", seed.read_text(), re.S).group(1)
    assert build_prompt("a girl in a green shirt and glasses giving the peace sign", "call") == example
    assert PROMPT_TEMPLATE.count("{phrase}") == 3 and PROMPT_TEMPLATE.count("{caption}") == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("a girl in a green shirt and glasses making phone call hand gesture.", "ok"),
        ("  a girl in a green shirt and glasses making phone call hand gesture  \n", "ok"),
        ("Here is the modified sentence: a girl in a green shirt and glasses making phone call hand gesture",
         "preamble"),
        ("Here is the modified sentence:\n\na girl in a green shirt making phone call hand gesture",
         "several lines"),
        ('"a girl in a green shirt and glasses making phone call hand gesture"', "quotes"),
        ("'a girl in a green shirt and glasses making phone call hand gesture'", "quotes"),
        ("a girl in a green shirt and glasses making phone call hand gesture. She looks happy.",
         "several sentences"),
        ("a girl in a green shirt and glasses making a phone call gesture", "phrase missing"),
        ("a girl in a green shirt and glasses Making Phone Call Hand Gesture", "phrase missing"),
        ("making phone call hand gesture", "caption content lost"),
        ("", "empty"),
        ("a girl in a green shirt and glasses making phone call hand gesture while standing next to a big "
         "wooden table in a sunny kitchen full of plants", "too long"),
    ],
)  # fmt: skip
def test_validate_llm_answers(answer, reason):
    caption = "a girl in a green shirt and glasses giving the peace sign"
    text, got = validate_rewrite(answer, caption, "call")
    assert got == reason
    if reason == "ok":
        assert text == "a girl in a green shirt and glasses making phone call hand gesture"
    else:
        assert text is None


def test_llm_mode_uses_valid_answers_and_counts_fallbacks():
    items = [(c, g) for c, g, _ in PAPER_PAIRS]
    seen_prompts = []

    def generator(prompts):
        seen_prompts.extend(prompts)
        out = []
        for prompt in prompts:
            caption = re.search(r"The original sentence is: '(.*)\.' The final", prompt).group(1)
            phrase = re.search(r"append '(.*?)' to the end", prompt).group(1)
            # a good answer for the captions with "man", garbage for the rest
            out.append(f"{caption} {phrase}." if " man " in f" {caption} " else "Sure! Here you go: ###")
        return out

    batches = []
    rewrites = rewrite_captions(
        items,
        mode="llm",
        generator=generator,
        batch_size=4,
        on_batch=lambda s, b: batches.append((s, len(b))),
    )
    assert batches == [(0, 4), (4, 2)]
    assert seen_prompts == [build_prompt(c, g) for c, g in items]
    methods = [r.method for r in rewrites]
    assert methods == ["llm_fallback", "llm_fallback", "llm_fallback", "llm_ok", "llm_ok", "llm_fallback"]
    # the fallbacks are the deterministic rewrites, which reproduce the paper
    for (_, _, after), r in zip(PAPER_PAIRS, rewrites, strict=True):
        if r.method == "llm_fallback":
            assert r.caption == after
    assert rewrites[4].caption == "a man making a hand gesture in a room making an ok sign with his hands"
    assert summarize(rewrites) == {
        "llm_ok": 2, "llm_fallback": 4, "deterministic": 0, "fallback_reasons": {"preamble": 4},
    }  # fmt: skip


def test_llm_mode_garbage_generator_falls_back_everywhere():
    items = [(c, g) for c, g, _ in PAPER_PAIRS]
    rewrites = rewrite_captions(items, mode="llm", generator=lambda ps: ["lorem ipsum"] * len(ps))
    assert [r.caption for r in rewrites] == [after for _, _, after in PAPER_PAIRS]
    assert summarize(rewrites)["llm_fallback"] == 6
    assert summarize(rewrites)["fallback_reasons"] == {"phrase missing": 6}


def test_deterministic_mode_and_bad_mode():
    rewrites = rewrite_captions([(c, g) for c, g, _ in PAPER_PAIRS])
    assert [r.caption for r in rewrites] == [after for _, _, after in PAPER_PAIRS]
    assert summarize(rewrites)["deterministic"] == 6
    with pytest.raises(HandsynthError, match="deterministic"):
        rewrite_captions([("a man", "ok")], mode="regex")
