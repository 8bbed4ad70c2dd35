"""`handsynth demo`: both methods' chains and their comparison with the baselines, offline, on tiny
models and synthetic gesture data.

It is `handsynth run` with a small config whose model ids point at tiny models: the same code paths and
config format as a real run, in minutes on a CPU. Stable Diffusion, SD inpainting and the OpenPose
ControlNet are the shipped pretrained ones (`handsynth.tiny.pretrained`, checked against their
manifest), so the images show figures; CLIP, the LLM and Inception are tiny random-weight models the
demo writes first. The synthetic renderer writes each figure's whole-body pose, exact hand masks and a
caption, so the two-stage chain needs neither SAM, nor a Holistic detection, nor LLaVA for its data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from handsynth.config import Config

log = logging.getLogger(__name__)

# Small enough for 2 CPU cores in minutes; synthetic images at 256 px so MediaPipe can find hands,
# prepared at 128 px and trained at the tiny model's 64 px. The two-stage chain makes 128 px images
# around hands drawn at the tiny hand generator's 64 px.
DEMO_DEFAULTS = {
    "run.output_dir": "runs/demo",
    "run.methods": ["hand1000", "twostage"],
    "data.gestures": ["call", "palm"],
    "data.synthetic_per_gesture": 24,
    "data.synthetic_size": 256,
    "data.n_train": 12,
    "data.n_test": 12,
    "data.image_size": 128,
    "data.captioner": "metadata",
    "data.rewrite": "llm",
    "features.workers": 2,
    "train.schedule": "batched",
    "train.batch_size": 4,
    "train.checkpoint_every": 20,
    "generate.steps": 20,
    "generate.height": 64,
    "generate.width": 64,
    "generate.batch_size": 6,
    "evaluate.kid_subset_size": 12,
    "pose.gestures": ["call", "palm"],
    "pose.n_train": 8,
    "pose.n_test": 4,
    "pose.image_size": 128,
    "pose.crop_size": 64,
    "pose.sam_model": "",
    "pose.captioner": "metadata",
    "pose.caption_batch_size": 8,
    "handgen.batch_size": 4,
    "handgen.epochs": 2,
    "handgen.lr": 1e-4,
    "handgen.steps": 10,
    "handgen.guidance": 3.0,
    "outpaint.batch_size": 4,
    "outpaint.lr": 1e-3,
    "outpaint.steps": 10,
    "outpaint.guidance": 3.0,
    "outpaint.previews": 2,
    "twostage.size": 128,
}


def with_tiny_models(config: Config, pretrained: bool = True) -> Config:
    """Point the config's model ids at the tiny models: the shipped pretrained SD, SD inpainting and
    ControlNet when `pretrained` (random-weight ones if this installation lacks them), and random-weight
    CLIP, LLM and Inception written under the run folder."""
    from handsynth.tiny.adapter import write_tiny_t2i_adapter
    from handsynth.tiny.clip import write_tiny_clip
    from handsynth.tiny.controlnet import write_tiny_controlnet
    from handsynth.tiny.inception import write_random_inception
    from handsynth.tiny.llm import write_tiny_llm
    from handsynth.tiny.pretrained import check_pretrained, shipped
    from handsynth.tiny.sd import write_tiny_sd, write_tiny_sd_inpainting

    folder = Path(config.run.output_dir) / "tiny-models"
    seed = config.run.seed
    if pretrained and not shipped():
        log.warning("this installation has no pretrained tiny models; the demo uses random-weight ones")
    weights = check_pretrained() if pretrained and shipped() else None
    sd = weights / "sd" if weights else write_tiny_sd(folder / "sd", seed=seed)
    config.model.base = config.handgen.base = str(sd)
    config.data.rewrite_model = str(write_tiny_llm(folder / "llm", seed=seed))
    clip = str(write_tiny_clip(folder / "clip", seed=seed))
    config.data.clip_model = config.evaluate.clip_model = clip
    config.evaluate.inception_weights = str(write_random_inception(folder / "inception.pth", seed=seed))
    if "twostage" in config.run.methods:
        inpainting = (
            weights / "sd-inpainting"
            if weights
            else write_tiny_sd_inpainting(folder / "sd-inpainting", seed=seed)
        )
        controlnet = (
            weights / "controlnet" if weights else write_tiny_controlnet(folder / "controlnet", seed=seed)
        )
        config.outpaint.base, config.outpaint.controlnet = str(inpainting), str(controlnet)
        # the baselines: the tiny SD stands in for SD 1.5, the outpainter's ControlNet without its LoRA
        # for the plain one, and a random-weight tiny T2I-Adapter for TencentARC's OpenPose adapter
        config.compare.sd_base = config.handgen.base
        config.compare.t2i_adapter = str(write_tiny_t2i_adapter(folder / "t2i-adapter", seed=seed))
    return config
