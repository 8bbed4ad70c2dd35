"""Two-stage pose-conditioned generation (Pelykh, Sincan, Bowden; seed 004), in the paper's Fig. 2 order:

- `data`: the dataset (§III-A, §IV-A): whole-body poses, hand masks, hand crops, finger heatmaps;
- `handgen`: stage 1, the multi-task hand generator (§III-B);
- `outpaint`: stage 2, the ControlNet + LoRA body outpainter and sequential blending (§III-C, §III-D);
- here: the whole pose -> image pipeline (`pipeline`), resumable generation (`generate`), the
  evaluation with DAP, MPJPE, FID/KID fg and CLIPSIM (`evaluate`, §IV-B) and the blending ablation
  (`ablation`, §IV-E); the commands are in `cli`.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline
    from handsynth.twostage.pipeline import TwoStagePipeline

__all__ = ["HandGeneratorPipeline", "TwoStagePipeline"]


def __getattr__(name: str):
    # imported on first use, so that `import handsynth.twostage.data.crops` does not load diffusers
    if name == "HandGeneratorPipeline":
        from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline

        return HandGeneratorPipeline
    if name == "TwoStagePipeline":
        from handsynth.twostage.pipeline import TwoStagePipeline

        return TwoStagePipeline
    raise AttributeError(f"module 'handsynth.twostage' has no attribute {name!r}")
