"""Image captioning for the datasets: BLIP-2, PaliGemma, ViT-GPT2 or LLaVA-1.5 through transformers, or
captions that come with the data (`metadata`).

BLIP-2, PaliGemma and ViT-GPT2 and their generation settings follow the Hand1000 reference scripts
(BLIP2.py, PaliGemma.py, VitGpt2.py); LLaVA-1.5 captions the two-stage method's data (seed 004 §IV-A).
`caption_images` appends each finished caption to a JSONL file, so a restarted run skips what is done;
unreadable images are skipped and counted by key.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from handsynth import files, hub
from handsynth.errors import HandsynthError
from handsynth.hub import resolve_device
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "blip2": "Salesforce/blip2-opt-2.7b",
    "paligemma": "google/paligemma-3b-mix-224",
    "vitgpt2": "nlpconnect/vit-gpt2-image-captioning",
    "llava": "llava-hf/llava-1.5-7b-hf",
}
KINDS = (*DEFAULT_MODELS, "metadata")
PALIGEMMA_PROMPT = "caption en"
# Seed 004 does not give its LLaVA prompt. Its hand-written captions name gender, skin tone and the
# hands' look; this asks for the whole person and the scene in one sentence, which reads as an SD prompt.
LLAVA_PROMPT = (
    "Describe the person in this photo in one sentence, as a prompt for an image generator: "
    "their gender, age, skin tone, hair and clothes, and the setting."
)
LLAVA_CHAT = f"USER: <image>\n{LLAVA_PROMPT} ASSISTANT:"  # LLaVA-1.5's conversation format
LLAVA_MAX_NEW_TOKENS = 60  # one sentence; SD's text encoder reads 77 tokens at most


def resolve_dtype(dtype: str, device: torch.device, kind: str = "") -> torch.dtype:
    """'auto' is fp16 on CUDA (bf16 for PaliGemma, as its reference script loads it) and fp32 on CPU."""
    return hub.resolve_dtype(dtype, device, torch.bfloat16 if kind == "paligemma" else torch.float16)


def clean_caption(text: str) -> str:
    """One line, single spaces, no surrounding blanks."""
    return re.sub(r"\s+", " ", text).strip()


class Captioner:
    """Turns a batch of images (or just their keys) into captions; None marks an item it cannot caption."""

    kind = ""
    needs_images = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0  # batches captioned, so callers (and tests) can see that resume did no work

    def caption(self, keys: Sequence[str], images: Sequence[Image.Image] | None) -> list[str | None]:
        raise NotImplementedError


class MetadataCaptioner(Captioner):
    """Captions stored with the records (the synthetic dataset's annotation 'caption' field)."""

    kind = "metadata"
    needs_images = False

    def __init__(self, captions: dict[str, str]) -> None:
        super().__init__("metadata")
        self.captions = captions

    def caption(self, keys: Sequence[str], images: Sequence[Image.Image] | None) -> list[str | None]:
        self.calls += 1
        return [None if self.captions.get(key) is None else clean_caption(self.captions[key]) for key in keys]


class ModelCaptioner(Captioner):
    """A transformers image-to-text model with its processor, on one device and dtype."""

    def __init__(
        self,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
        max_new_tokens: int | None,
        config_key: str = "data.captioner_model",
    ) -> None:
        super().__init__(f"{self.kind}:{model_id}")
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.config_key = config_key  # the setting a failed load tells the user to change
        self.model = self._load_model().to(device).eval()

    def _load(self, cls: Any, **kwargs: Any) -> Any:
        return hub.from_pretrained(cls, self.model_id, config_key=self.config_key, **kwargs)

    def _load_model(self) -> Any:
        raise NotImplementedError

    def _generate(self, images: Sequence[Image.Image]) -> list[str]:
        raise NotImplementedError

    def caption(self, keys: Sequence[str], images: Sequence[Image.Image] | None) -> list[str | None]:
        self.calls += 1
        with torch.inference_mode():
            return [clean_caption(text) for text in self._generate(images)]


class Blip2Captioner(ModelCaptioner):
    """BLIP-2 (OPT decoder), no text prompt, as BLIP2.py (which loads it in fp16 on the GPU)."""

    kind = "blip2"

    def _load_model(self) -> Any:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self.processor = self._load(Blip2Processor)
        return self._load(Blip2ForConditionalGeneration, dtype=self.dtype)

    def _generate(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device, self.dtype)
        # BLIP-2 hands generation to its language model, whose own generation config knows nothing
        # of the checkpoint's generation_config.json: pass the checkpoint's on.
        extra = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {}
        ids = self.model.generate(**inputs, generation_config=self.model.generation_config, **extra)
        return self.processor.batch_decode(ids, skip_special_tokens=True)


class PaliGemmaCaptioner(ModelCaptioner):
    """PaliGemma with the 'caption en' task prompt, greedy, up to 100 new tokens (PaliGemma.py)."""

    kind = "paligemma"

    def _load_model(self) -> Any:
        from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

        self.processor = self._load(PaliGemmaProcessor)
        return self._load(PaliGemmaForConditionalGeneration, dtype=self.dtype)

    def _generate(self, images: Sequence[Image.Image]) -> list[str]:
        prompts = [f"<image>{PALIGEMMA_PROMPT}"] * len(images)
        inputs = self.processor(text=prompts, images=list(images), return_tensors="pt", padding="longest")
        inputs = inputs.to(self.device, self.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens or 100, do_sample=False)
        # generate() returns prompt + answer: keep the answer, and drop a prompt the model echoes.
        texts = self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [text.strip().removeprefix(PALIGEMMA_PROMPT) for text in texts]


class VitGpt2Captioner(ModelCaptioner):
    """ViT encoder + GPT-2 decoder, beam search 4, max length 16 (VitGpt2.py)."""

    kind = "vitgpt2"

    def _load_model(self) -> Any:
        from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

        self.image_processor = self._load(ViTImageProcessor)
        self.tokenizer = self._load(AutoTokenizer)
        return self._load(VisionEncoderDecoderModel, dtype=self.dtype)

    def _generate(self, images: Sequence[Image.Image]) -> list[str]:
        pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
        length = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {"max_length": 16}
        ids = self.model.generate(pixels.to(self.device, self.dtype), num_beams=4, **length)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


class LlavaCaptioner(ModelCaptioner):
    """LLaVA-1.5 asked LLAVA_PROMPT in its chat format (LLAVA_CHAT), greedy, up to
    LLAVA_MAX_NEW_TOKENS new tokens; only the answer is kept."""

    kind = "llava"

    def _load_model(self) -> Any:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.processor = self._load(AutoProcessor)
        # a decoder-only model continues the last token: pad prompts on the left
        self.processor.tokenizer.padding_side = "left"
        return self._load(LlavaForConditionalGeneration, dtype=self.dtype)

    def _generate(self, images: Sequence[Image.Image]) -> list[str]:
        prompts = [LLAVA_CHAT] * len(images)
        inputs = self.processor(images=list(images), text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, self.dtype)
        length = self.max_new_tokens or LLAVA_MAX_NEW_TOKENS
        ids = self.model.generate(**inputs, max_new_tokens=length, do_sample=False)
        # generate() returns prompt + answer: decode the answer only
        return self.processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


_MODEL_CAPTIONERS = {
    c.kind: c for c in (Blip2Captioner, PaliGemmaCaptioner, VitGpt2Captioner, LlavaCaptioner)
}


def make_captioner(
    kind: str,
    model_id: str = "",
    device: str = "auto",
    dtype: str = "auto",
    captions: dict[str, str] | None = None,
    max_new_tokens: int | None = None,
    config_key: str = "data.captioner_model",
) -> Captioner:
    """A captioner of `kind` (blip2, paligemma, vitgpt2, llava or metadata).

    `model_id` is a hub id or a local folder (default: the reference checkpoint); `captions` maps
    key -> caption for `metadata`; `max_new_tokens` overrides the reference generation length;
    `config_key` is the setting that holds `model_id`, named when the model cannot be loaded.
    """
    if kind == "metadata":
        if captions is None:
            raise HandsynthError(
                "the metadata captioner needs the captions stored with the records "
                "(the annotations' 'caption' field); this dataset has none, so pick a model captioner"
            )
        return MetadataCaptioner(captions)
    if kind not in _MODEL_CAPTIONERS:
        raise HandsynthError(f"unknown captioner '{kind}'; valid captioners are: {', '.join(KINDS)}")
    torch_device = resolve_device(device)
    return _MODEL_CAPTIONERS[kind](
        model_id or DEFAULT_MODELS[kind],
        torch_device,
        resolve_dtype(dtype, torch_device, kind),
        max_new_tokens,
        config_key,
    )


class CaptionRun(dict):
    """key -> caption for every item captioned (now or by an earlier run), plus what was skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}  # key -> reason
        self.resumed = 0  # captions taken from the file of an earlier run
        self.new = 0  # captions made by this run


def _read_done(out_path: Path, captioner: Captioner) -> dict[str, str]:
    """Captions already in `out_path`; a torn last line from a killed run is cut off first."""
    if not out_path.exists():
        return {}
    records = files.read_jsonl_repairing(out_path)
    others = {r.get("captioner") for r in records} - {captioner.name}
    if others:
        raise HandsynthError(
            f"{out_path} holds captions from {', '.join(sorted(map(str, others)))}, not {captioner.name}; "
            "delete the file to recaption, or write to another path"
        )
    return {r["key"]: r["caption"] for r in records}


def _caption_batch(
    captioner: Captioner, batch: Sequence[tuple[str, str | Path]], out_path: Path, run: CaptionRun
) -> None:
    keys, images = [], []
    for key, path in batch:
        if captioner.needs_images:
            try:
                images.append(files.load_image(path))
            except HandsynthError as exc:
                run.skipped[key] = str(exc)
                continue
        keys.append(key)
    if not keys:
        return
    captions = captioner.caption(keys, images if captioner.needs_images else None)
    for key, caption in zip(keys, captions, strict=True):
        if caption is None:
            run.skipped[key] = f"no caption for '{key}' in the record metadata"
            continue
        files.append_jsonl(out_path, {"key": key, "caption": caption, "captioner": captioner.name})
        run[key] = caption
        run.new += 1


def caption_images(
    captioner: Captioner,
    items: Sequence[tuple[str, str | Path]],
    out_path: str | Path,
    batch_size: int = 8,
) -> CaptionRun:
    """Caption every (key, image_path), appending {key, caption, captioner} lines to `out_path`.

    Keys already in `out_path` are not captioned again. Unreadable images, and keys the captioner
    has no caption for, are skipped and listed in `.skipped` (key -> reason); the run goes on.
    """
    out_path = Path(out_path)
    duplicates = [key for key, count in Counter(key for key, _ in items).items() if count > 1]
    if duplicates:
        raise HandsynthError(
            f"image key '{duplicates[0]}' appears twice in the list to caption; keys must be unique"
        )
    done = _read_done(out_path, captioner)
    run = CaptionRun()
    run.update((key, done[key]) for key, _ in items if key in done)
    run.resumed = len(run)
    todo = [(key, path) for key, path in items if key not in done]
    if run.resumed:
        log.info("captioning: %d of %d images already captioned in %s", run.resumed, len(items), out_path)

    with progress_bar(total=len(todo), desc=f"captioning ({captioner.name})", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            _caption_batch(captioner, batch, out_path, run)
            bar.update(len(batch))
    if run.skipped:
        shown = "; ".join(f"{key}: {reason}" for key, reason in list(run.skipped.items())[:5])
        log.warning("captioning: skipped %d image(s): %s", len(run.skipped), shown)
    return run
