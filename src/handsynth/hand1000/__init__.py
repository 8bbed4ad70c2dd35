"""Hand1000 (Zhang et al., AAAI 2025): Stage I, the mean hand feature (`features`); the fusion of text
and hand feature (`fusion`); Stages II and III, the embedding optimisation and UNet fine-tuning
(`trainer`); the pipeline (`pipeline`), generation (`generate`) and the evaluation with FID, KID, FID-H,
KID-H, HAND-CONF, CLIPSIM and gesture accuracy (`evaluate`); the commands are in `cli`."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handsynth.hand1000.pipeline import Hand1000Pipeline

__all__ = ["Hand1000Pipeline"]


def __getattr__(name: str):
    # imported on first use, so that `import handsynth.hand1000.features` does not load diffusers
    if name == "Hand1000Pipeline":
        from handsynth.hand1000.pipeline import Hand1000Pipeline

        return Hand1000Pipeline
    raise AttributeError(f"module 'handsynth.hand1000' has no attribute {name!r}")
