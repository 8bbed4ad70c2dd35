"""One run is one TOML file, split into sections; CLI flags override it; the resolved copy is saved.

Sections mirror the pipelines. Hand1000: `data`, `features`, `model`, `train`, `generate`, `evaluate`.
The two-stage method: `pose` (its dataset), `handgen` (stage 1), `outpaint` (stage 2), and `evaluate`.
`compare` sets each method against its baselines. `run` is shared, and so are the machinery keys of
`train` (precision, optimiser, checkpoints, resume, validation, max_steps), which every trainer reads.
A flag declared with `dest="section.key"`, or `--set section.key=value`, overrides the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from handsynth import files
from handsynth.errors import HandsynthError

PAPER_GESTURES = ["call", "four", "like", "mute", "ok", "palm"]


@dataclass
class RunSection:
    output_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    methods: list[str] = field(default_factory=lambda: ["hand1000"])  # `handsynth run`: hand1000, twostage


@dataclass
class DataSection:
    source: str = "synthetic"  # "synthetic", or a HaGRID folder (v1 or v2 layout)
    gestures: list[str] = field(default_factory=lambda: list(PAPER_GESTURES))
    n_train: int = 1000
    n_test: int = 1000
    subject_disjoint: bool = False
    image_size: int = 512
    crop: str = "center"  # center (as the reference) | hand (keeps the gesture box in frame)
    synthetic_per_gesture: int = 2000
    synthetic_size: int = 512
    captioner: str = "blip2"  # blip2 | paligemma | vitgpt2 | llava | metadata
    captioner_model: str = ""  # empty: the captioner's default hub id
    caption_batch_size: int = 8
    rewrite: str = "llm"  # llm | deterministic
    rewrite_model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    rewrite_batch_size: int = 8
    clip_model: str = "openai/clip-vit-base-patch32"


@dataclass
class FeaturesSection:
    workers: int = 2
    max_num_hands: int = 1
    min_detection_confidence: float = 0.5
    model_complexity: int = 1
    annotation_fallback: bool = False
    dataset: str = ""  # dataset folder or plain image folder; empty: <run.output_dir>/dataset
    output_dir: str = ""  # empty: <run.output_dir>/features
    split: str = "train"  # manifest split Stage I reads


@dataclass
class ModelSection:
    base: str = "CompVis/stable-diffusion-v1-4"
    fusion: str = "token"  # token | flat
    # The reference never trains fc (a fixed random projection); here Stage II trains it
    # (see hand1000/fusion.py).
    train_fusion: bool = True
    lam: float = 0.7


@dataclass
class TrainSection:
    schedule: str = "batched"  # reference | batched
    init_from: str = "scratch"  # scratch | resume
    embedding_steps: int = 10
    embedding_lr: float = 1e-3
    unet_steps: int = 20
    unet_lr: float = 1e-6
    batch_size: int = 1
    # auto: on a CUDA GPU bf16 (fp16 if it lacks bf16) and bitsandbytes' 8-bit Adam when installed,
    # under a third of the reference's training memory; on CPU fp32 and torch Adam, as the reference
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    optimizer: str = "auto"  # auto | adam | adam8bit
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # 0: fine-tune the full UNet
    checkpoint_every: int = 1000
    validate_every: int = 0
    max_images: int = 0  # 0: every training image
    unet_epochs: int = 0  # batched Stage III passes over the set; 0: unet_steps (the reference budget)
    max_steps: int = 0  # stop (checkpoint, save the model) after this many optimiser steps; 0: run to the end
    num_workers: int = (
        2  # handgen train: processes loading batches ahead of the step; 0: in the training process
    )


@dataclass
class PoseSection:
    """The two-stage dataset (`handsynth pose build`): whole images for the outpainter, hand crops for
    the hand generator (TWOSTAGE.md §2, §8, §9)."""

    source: str = "synthetic"  # "synthetic", or a folder in pose.source_format
    # hagrid (v1/v2) | interhand (InterHand2.6M) | reinterhand | laion_human (HumanSD) | images | youtube_asl
    source_format: str = "hagrid"
    gestures: list[str] = field(default_factory=lambda: list(PAPER_GESTURES))  # hagrid only
    n_train: int = 1000  # images per gesture (other formats: per group, e.g. InterHand2.6M's hand type)
    n_test: int = 1000
    image_size: int = 512  # whole images, square
    crop_size: int = 512  # hand crops, square
    crop_margin: float = 0.25  # a hand crop's square adds this share of the hand's longer side per side
    # images whose hand mask is smaller (counted at 512 px, scaled with the area) get "outpaint": false in
    # images.jsonl: the outpainter leaves them out, as the paper's LAION-Human set; the evaluation keeps them
    min_mask_pixels: int = 2500
    sam_model: str = "facebook/sam-vit-huge"  # empty: masks drawn from the landmarks
    captioner: str = "llava"  # llava | metadata | blip2 | paligemma | vitgpt2
    captioner_model: str = ""  # empty: the captioner's default hub id (llava-hf/llava-1.5-7b-hf)
    caption_batch_size: int = 4
    workers: int = 2  # Holistic worker processes
    output_dir: str = ""  # empty: <run.output_dir>/twostage-data
    captions: str = (
        ""  # interhand/reinterhand: JSON of sequence -> caption; empty: a template naming the hand
    )
    frames_per_video: int = 40  # youtube_asl: frames kept per video, each with both hands (2,000 / 50 videos)


@dataclass
class HandgenSection:
    """Stage 1, the multi-task hand generator (seed 004 §III-B, TWOSTAGE.md §1-3)."""

    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    mask_loss_weight: float = 0.05  # λ; 0 trains the single-task model of the ablation
    mask_dropout: float = 0.5  # probability that the mask input channel is zeroed in training
    caption_dropout: float = 0.1  # P(caption -> empty prompt) in training, for guidance's empty branch (ours)
    lr: float = 1e-5
    batch_size: int = 32
    epochs: int = 5
    resolution: int = 0  # training resolution in px; 0: the base model's (512 for SD 1.5)
    steps: int = 50  # DDIM steps at inference
    guidance: float = 7.5
    size: int = 0  # `handgen generate` image side in px; 0: the model's training resolution
    width: int = 0  # `handgen generate` image width in px; 0: handgen.size
    height: int = 0  # `handgen generate` image height in px; 0: handgen.size
    sample_batch_size: int = 4  # hands per batch in `handgen generate`
    model_dir: str = ""  # the hand generator's folder; empty: <run.output_dir>/models/handgen
    # a mixed training set: [{dataset = "<pose build folder>", count = N}, ...], merged (seeded, each
    # source's gesture distribution kept) into <run.output_dir>/handgen-mix/hands.jsonl; empty: the
    # hands.jsonl of pose.output_dir
    sources: list[dict] = field(default_factory=list)


@dataclass
class OutpaintSection:
    """Stage 2, the ControlNet + LoRA body outpainter and the blend (seed 004 §III-C/D, TWOSTAGE.md §4-7)."""

    # SD inpainting (a 4-channel SD UNet is accepted too) and the OpenPose ControlNet, hub ids or
    # folders; empty: what the LoRA folder's outpaint.json records, else
    # stable-diffusion-v1-5/stable-diffusion-inpainting and lllyasviel/control_v11p_sd15_openpose
    base: str = ""
    controlnet: str = ""
    lora_rank: int = 8
    lora_alpha: int = 8  # the LoRA's scale is alpha / rank
    lr: float = 1e-4
    batch_size: int = 16
    epochs: int = 1
    caption_dropout: float = 0.1  # P(caption -> empty prompt) in training, for guidance's empty branch (ours)
    blending: str = "sequential"  # sequential | naive | bbox | none
    blend_noise: str = "noised"  # noised (as Blended Latent Diffusion) | clean (the literal Eq. 8)
    unmasked_steps: int = 2  # the last steps run on the whole latent
    steps: int = 50
    guidance: float = 7.5
    negative_prompt: str = ""
    conditioning_scale: float = 1.0  # the ControlNet's residuals are scaled by this
    skeleton: str = "full"  # OpenPose condition image: body | body_hands | full (body, hands and face)
    background: int = 127  # the canvas's uniform grey level (127: about 0 in the VAE's [-1, 1])
    small_hand_fraction: float = 0.1  # warn when a hand's box is under this share of the image side
    previews: int = 4  # decoded x0 predictions kept from evenly spaced steps (0: none)
    max_images: int = 0  # train on the first N images (0: all)
    lora_dir: str = ""  # where `outpaint train` writes the LoRA; empty: <run.output_dir>/models/outpaint-lora


@dataclass
class TwostageSection:
    """The pose -> image pipeline (`handsynth twostage generate`) and the blending ablation."""

    size: int = 512  # side of the generated images, px
    width: int = 0  # px; 0: twostage.size
    height: int = 0  # px; 0: twostage.size
    poses: str = ""  # poses.jsonl or images.jsonl; empty: the two-stage dataset's test split
    max_poses: int = 0  # generate for the first N poses; 0: all
    ablation: list[str] = field(default_factory=lambda: ["sequential", "naive", "bbox"])


@dataclass
class GenerateSection:
    mu: float = 0.7
    steps: int = 45
    guidance: float = 3.0
    height: int = 0  # px; 0: the resolution the model was trained at
    width: int = 0
    images_per_prompt: int = 1
    batch_size: int = 4
    prompts: str = ""  # a text file (one prompt per line) or a manifest; empty: the test split
    max_prompts: int = 0  # use the first N prompts; 0: all


@dataclass
class EvaluateSection:
    inception_weights: str = ""  # pt_inception-2015-12-05 .pth; empty: $HANDSYNTH_INCEPTION or cache
    preprocess: str = "clean"  # clean | reference
    feature_dim: int = 2048
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_estimator: str = "unbiased"  # unbiased | reference (biased, as the official scripts)
    hand_crop: str = "reference"  # reference | per-hand
    clip_model: str = "openai/clip-vit-base-patch32"
    hand_crop_margin: float = 0.25  # per-hand crops: box widened by this share of its size per side
    metrics: list[str] = field(
        default_factory=lambda: ["fid", "kid", "fid_h", "kid_h", "hand_conf", "clipsim", "gesture_accuracy"]
    )
    batch_size: int = 32  # Inception / CLIP batch
    cache_dir: str = ""  # real-set feature cache; empty: <run.output_dir>/cache
    grid_images: int = 8  # real and generated samples shown on the report page
    # two-stage method: FID/KID taps, the first reported as fid/kid (seed 004: 192; 768 in its ablation)
    twostage_feature_dims: list[int] = field(default_factory=lambda: [192, 768, 2048])
    # DAP's object scale: pose, the w·h of the whole pose's keypoint box for every part (COCO-WholeBody's
    # one area per person; seed 004's DAP-hands ≈ DAP despite a larger hand MPJPE needs it) | part
    dap_area: str = "pose"
    fg_masks: str = "holistic"  # the two-stage fg metrics' person masks: holistic | sam (pose.sam_model)
    twostage_metrics: list[str] = field(
        default_factory=lambda: [
            "dap",
            "dap_hands",
            "mpjpe",
            "mpjpe_hands",
            "fid",
            "kid",
            "fid_fg",
            "kid_fg",
            "clipsim",
        ]
    )


@dataclass
class CompareSection:
    """`handsynth compare`: each method against its baselines, on the prompts, poses and seeds it used."""

    # two-stage rows: sd, controlnet, t2i_adapter; Hand1000: base (model.base). Empty: no comparison.
    baselines: list[str] = field(default_factory=lambda: ["sd", "controlnet", "t2i_adapter", "base"])
    # the two-stage rows' text-to-image SD: the outpainter's family (outpaint.base is its inpainting model)
    sd_base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    t2i_adapter: str = "TencentARC/t2iadapter_openpose_sd14v1"
    batch_size: int = 4  # images per baseline pipeline call
    sheet_rows: int = 4  # prompts in each side-by-side sheet


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    pose: PoseSection = field(default_factory=PoseSection)
    handgen: HandgenSection = field(default_factory=HandgenSection)
    outpaint: OutpaintSection = field(default_factory=OutpaintSection)
    twostage: TwostageSection = field(default_factory=TwostageSection)
    compare: CompareSection = field(default_factory=CompareSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def set(self, dotted_key: str, value: Any) -> None:
        """Set `section.key`, checking that both exist and that the value has the field's type."""
        section_name, _, key = dotted_key.partition(".")
        section = getattr(self, section_name, None)
        if not dataclasses.is_dataclass(section) or not key:
            raise HandsynthError(
                f"unknown config section in '{dotted_key}'; sections are: {', '.join(_section_names())}"
            )
        names = [f.name for f in dataclasses.fields(section)]
        if key not in names:
            raise HandsynthError(
                f"unknown config key '{dotted_key}'; keys in [{section_name}] are: {', '.join(names)}"
            )
        setattr(section, key, _coerce(dotted_key, getattr(section, key), value))


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(dotted_key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise HandsynthError(f"config key '{dotted_key}' wants a {type(default).__name__}, got {value!r}")
    return value


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: Config | None = None
) -> Config:
    """`base` (or the defaults), then the TOML file at `path`, then `overrides` ({'section.key': v})."""
    config = base or Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise HandsynthError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise HandsynthError(f"config file {path} is not valid TOML: {exc}") from None
        for section_name, section in data.items():
            if not isinstance(section, dict):
                raise HandsynthError(f"{path}: '{section_name}' must be a [section] table")
            for key, value in section.items():
                config.set(f"{section_name}.{key}", value)
    for key, value in (overrides or {}).items():
        config.set(key, value)
    return config


def check_image_side(key: str, value: int, zero: str = "") -> None:
    """A side of an image to generate must be a positive multiple of 8 (the VAE halves it three times);
    with `zero`, 0 is allowed too and means that. Checked before any model loads."""
    if value == 0 and zero or value > 0 and value % 8 == 0:
        return
    allowed = f" (or 0: {zero})" if zero else ""
    raise HandsynthError(f"{key} must be a positive multiple of 8{allowed}, got {value}")


def check_at_least_one(config: Config, *keys: str) -> None:
    """Counts (steps, batch sizes) that must be at least 1, checked before any model loads."""
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value < 1:
            raise HandsynthError(f"{key} must be at least 1, got {value}")


def save_config(config: Config, path: str | Path) -> None:
    files.write_text(path, tomli_w.dumps(config.to_dict()))


def parse_set_option(text: str) -> tuple[str, Any]:
    """`section.key=value`, the value read as a TOML value, or as a bare string when it is not one."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise HandsynthError(f"--set wants section.key=value, got '{text}'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value
