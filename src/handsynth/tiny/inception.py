"""A random-weight weights file in the standard pt_inception-2015-12-05 layout, for offline runs.

It loads through the same path as the real file (`handsynth.evaluation.inception.load_inception`), so the demo
and tests exercise the real code; its FID values mean nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from handsynth import files
from handsynth.evaluation.inception import InceptionV3


def random_inception(
    seed: int = 0, variant: str = "fid", feature_dim: int = 2048, resize_input: bool = True
) -> InceptionV3:
    """He-normal convolutions and batch-norm statistics near identity, so activations stay O(1)
    through all 94 layers instead of vanishing as with PyTorch's default init."""
    generator = torch.Generator().manual_seed(seed)
    model = InceptionV3(feature_dim, variant=variant, resize_input=resize_input)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            weight = torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in)
            module.weight.copy_(weight)
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=generator))
            module.bias.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(1.0 + 0.5 * torch.rand(n, generator=generator))
        elif isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.01)
            module.bias.zero_()
    return model


def write_random_inception(path: str | Path, seed: int = 0, variant: str = "fid") -> Path:
    """Write the state_dict of `random_inception(seed, variant)` to `path` (a .pth), atomically."""
    path = Path(path)
    if path.is_file():
        return path
    state = random_inception(seed, variant).state_dict()
    with files.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
