"""The FID Inception-v3 network (pt_inception-2015-12-05), image preprocessing and cached features.

The network is the one TF-FID, pytorch-fid and clean-fid score with: Inception-v3 as published
(Szegedy et al. 2016) with the 2015-12-05 TensorFlow graph's quirks, namely average pools that ignore
the zero padding in the A/C/E blocks and a max pool in the last E block, and a 1008-way classifier.
The torchvision ImageNet network (the official Hand1000 scripts) loads too: `variant="torchvision"`
is picked from the weights file's keys.

Features are the spatial means of four taps: 64 (first max pool), 192 (second max pool),
768 (after Mixed_6e) and 2048 (the final average pool). Seed 004 scores with 192.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from handsynth import files
from handsynth.errors import HandsynthError
from handsynth.evaluation.metrics import feature_statistics
from handsynth.files import load_rgb
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_ENV = "HANDSYNTH_INCEPTION"
TAPS = (64, 192, 768, 2048)
PREPROCESS_MODES = ("clean", "reference")
IMAGE_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = {"fid": "fid", "torchvision": "imagenet"}  # variant -> the input it was trained on


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TF's epsilon 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor, tf_padding: bool) -> torch.Tensor:
    # TF's average pool divides by the number of real pixels under the window, not by 9.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=not tf_padding)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int, tf_padding: bool) -> None:
        super().__init__()
        self.tf_padding = tf_padding
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3(x, self.tf_padding)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int, tf_padding: bool) -> None:
        super().__init__()
        c7 = channels_7x7
        self.tf_padding = tf_padding
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool_3x3(x, self.tf_padding)),
            ],
            1,
        )


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return torch.cat(
            [
                self.branch3x3_2(self.branch3x3_1(x)),
                self.branch7x7x3_4(self.branch7x7x3_3(b7)),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 outputs. `pool`: 'tf-avg', 'avg' or 'max' (FID's Mixed_7c)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x, tf_padding=self.pool == "tf-avg")
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


class InceptionAux(nn.Module):
    """torchvision's auxiliary classifier: only there so its weights file loads strictly; never run."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)


class InceptionV3(nn.Module):
    """Inception-v3 feature extractor. Input: (N,3,H,W) RGB in [0,255] (uint8 or float).

    `variant`: 'fid' (pt_inception-2015-12-05) or 'torchvision' (ImageNet weights).
    `input_norm`: 'fid' scales to [-1,1] (TF-FID, clean-fid); 'imagenet' applies ImageNet mean/std
    (the Hand1000 scripts), followed by torchvision's `transform_input` in the torchvision variant, as
    `inception_v3(weights=...)` sets it.
    `resize_input`: bilinearly resize inputs that are not 299x299 (off: run at the given size; the
    network is fully convolutional down to 75x75, which keeps CPU tests light).
    `forward` returns the `feature_dim` tap, spatially averaged: (N, feature_dim) float32. It has
    `num_features`, so it plugs into torchmetrics' FrechetInceptionDistance(feature=...).
    """

    def __init__(
        self,
        feature_dim: int = 2048,
        variant: str = "fid",
        input_norm: str = "fid",
        resize_input: bool = True,
    ) -> None:
        super().__init__()
        if feature_dim not in TAPS:
            raise HandsynthError(f"Inception feature_dim must be one of {TAPS}, got {feature_dim}")
        if variant not in ("fid", "torchvision"):
            raise HandsynthError(f"Inception variant must be 'fid' or 'torchvision', got {variant!r}")
        if input_norm not in ("fid", "imagenet"):
            raise HandsynthError(f"Inception input_norm must be 'fid' or 'imagenet', got {input_norm!r}")
        self.feature_dim = feature_dim
        self.num_features = feature_dim
        self.variant = variant
        self.input_norm = input_norm
        self.resize_input = resize_input
        fid = variant == "fid"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32, tf_padding=fid)
        self.Mixed_5c = InceptionA(256, pool_features=64, tf_padding=fid)
        self.Mixed_5d = InceptionA(288, pool_features=64, tf_padding=fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, tf_padding=fid)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, tf_padding=fid)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, tf_padding=fid)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, tf_padding=fid)
        if not fid:
            self.AuxLogits = InceptionAux(768, num_classes=1000)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="tf-avg" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, pool="max" if fid else "avg")
        self.fc = nn.Linear(2048, 1008 if fid else 1000)
        self.eval()
        self.requires_grad_(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.input_norm == "fid":
            return 2.0 * x - 1.0
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.variant == "torchvision":
            x = x * (std / 0.5) + (mean - 0.5) / 0.5  # torchvision's transform_input
        return x

    def taps(self, x: torch.Tensor, upto: int | None = None) -> dict[int, torch.Tensor]:
        """Every tap up to `upto` (default: feature_dim), spatially averaged: {dim: (N, dim)}."""
        upto = upto or self.feature_dim
        if self.resize_input and x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        x = self.normalize(x)
        out: dict[int, torch.Tensor] = {}
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        out[64] = x.mean(dim=(2, 3))
        if upto == 64:
            return out
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        out[192] = x.mean(dim=(2, 3))
        if upto == 192:
            return out
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        out[768] = x.mean(dim=(2, 3))
        if upto == 768:
            return out
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        out[2048] = x.mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.taps(x)[self.feature_dim]


def default_weights_path() -> Path:
    return Path.home() / ".cache" / "handsynth" / WEIGHTS_NAME


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: `path`, else $HANDSYNTH_INCEPTION, else the cache file. Absent: a HandsynthError."""
    tried = []
    for candidate, origin in ((path, "given path"), (os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}")):
        if candidate:
            candidate = Path(candidate).expanduser()
            if candidate.is_file():
                return candidate
            tried.append(f"{origin} {candidate}")
    cached = default_weights_path()
    if cached.is_file():
        return cached
    tried.append(f"cache {cached}")
    raise HandsynthError(
        "the FID Inception weights were not found (tried: " + "; ".join(tried) + ").\n"
        f"  Download {WEIGHTS_URL}\n"
        f"  and put it at {cached}, or pass its path with --inception-weights "
        f"(config evaluate.inception_weights) or the {WEIGHTS_ENV} environment variable."
    )


def weights_tag(path: Path) -> str:
    """Names a weights file in cache keys: its name, size and modification time."""
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def load_inception(
    weights: str | os.PathLike | None = None, feature_dim: int = 2048, device: str | torch.device = "cpu"
) -> InceptionV3:
    """The network with the weights file's weights; the variant (fid/torchvision) comes from its keys.

    The input normalisation follows the variant, whatever the preprocessing: the TF-FID network was
    trained on 2x−1, torchvision's on ImageNet normalisation (which its transform_input turns into 2x−1).
    """
    path = resolve_weights(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise HandsynthError(f"could not read the Inception weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise HandsynthError(f"{path} is not an Inception-v3 state_dict (no 'fc.weight' key)")
    variant = "torchvision" if state["fc.weight"].shape[0] == 1000 else "fid"
    model = InceptionV3(feature_dim, variant=variant, input_norm=INPUT_NORMS[variant])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HandsynthError(
            f"{path} does not match the {variant} Inception-v3 layout: {exc}\n"
            f"  Use the standard weights file ({WEIGHTS_URL})."
        ) from None
    log.info("Inception-v3 (%s weights) from %s, %d-d features", variant, path, feature_dim)
    return model.to(device)


def check_preprocess(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise HandsynthError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")


def preprocess_image(image: Image.Image | np.ndarray, mode: str = "clean") -> np.ndarray:
    """A (299,299,3) float32 array in [0,255].

    'clean' (clean-fid): PIL bicubic on each channel as float, so no uint8 rounding or aliasing.
    'reference' (the Hand1000 scripts, torchvision Resize(299)+CenterCrop(299)): bilinear resize of
    the shorter side to 299, then the centre 299x299.
    """
    check_preprocess(mode)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = files.to_rgb(image)
    if mode == "clean":
        rgb = np.asarray(image, dtype=np.float32)
        channels = [
            np.asarray(
                Image.fromarray(rgb[:, :, c], mode="F").resize(
                    (IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BICUBIC
                )
            )
            for c in range(3)
        ]
        return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)
    w, h = image.size  # torchvision Resize(299): shorter side 299, longer side truncated
    size = (IMAGE_SIZE, int(IMAGE_SIZE * h / w)) if w <= h else (int(IMAGE_SIZE * w / h), IMAGE_SIZE)
    image = image.resize(size, resample=Image.Resampling.BILINEAR)
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return np.asarray(image, dtype=np.float32)


@torch.no_grad()
def extract_tap_features(
    model: InceptionV3,
    images: Sequence[str | os.PathLike | Image.Image | np.ndarray | Callable[[], np.ndarray]],
    dims: Sequence[int],
    preprocess: str = "clean",
    batch_size: int = 32,
    desc: str = "inception",
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Features at several taps from one forward pass per batch, which stops at the deepest tap asked
    for: {dim: (N_ok, dim) float32} and the indices of the images used.

    An item is a file, read with `handsynth.files.load_rgb` (EXIF rotation, grayscale and alpha
    normalised), an image, or a function that makes the image when it is needed (so a large set of
    derived images, e.g. with the background removed, is never held in memory). An image that cannot be
    read or made (a HandsynthError) is skipped and logged, so one bad file does not stop a long run.
    """
    check_preprocess(preprocess)
    dims = sorted(set(dims))
    if not dims or any(dim not in TAPS for dim in dims):
        raise HandsynthError(f"Inception taps must be among {TAPS}, got {list(dims)}")
    device = next(model.parameters()).device
    feats: dict[int, list[np.ndarray]] = {dim: [] for dim in dims}
    used: list[int] = []
    batch: list[np.ndarray] = []
    batch_idx: list[int] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
        taps = model.taps(x, upto=dims[-1])
        for dim in dims:
            feats[dim].append(taps[dim].float().cpu().numpy())
        used.extend(batch_idx)
        batch.clear()
        batch_idx.clear()

    for i, item in enumerate(progress_bar(images, desc=desc, unit="img")):
        try:
            if callable(item):
                image = item()
            else:
                image = load_rgb(item) if isinstance(item, str | os.PathLike) else item
            batch.append(preprocess_image(image, preprocess))
        except HandsynthError as exc:
            log.warning("skipped: %s", exc)
            continue
        batch_idx.append(i)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    out = {
        dim: np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        for dim, parts in feats.items()
    }
    return out, used


def extract_features(
    model: InceptionV3,
    images: Sequence[str | os.PathLike | Image.Image | np.ndarray],
    preprocess: str = "clean",
    batch_size: int = 32,
    desc: str = "inception",
) -> tuple[np.ndarray, list[int]]:
    """Features (N_ok, feature_dim) float32 (the network's precision) and the indices of the images used;
    see `extract_tap_features`."""
    feats, used = extract_tap_features(model, images, (model.feature_dim,), preprocess, batch_size, desc)
    return feats[model.feature_dim], used


def fingerprint(paths: Sequence[str | os.PathLike], settings: dict) -> str:
    """A key for a set of image files and the feature settings: paths, sizes, mtimes and settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a missing file is skipped when read; it still shapes the key
            h.update(f"{os.path.abspath(p)}\0missing\n".encode())
    return h.hexdigest()[:20]


def cached_features(
    model: InceptionV3,
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    preprocess: str = "clean",
    batch_size: int = 32,
    weights_tag: str = "",
    desc: str = "inception",
) -> dict[str, np.ndarray]:
    """Features and their statistics for `paths`, read from / written to an .npz in `cache_dir`.

    The cache key covers the file list, each file's size and mtime, the preprocessing, the input
    normalisation, the tap and `weights_tag` (name the weights file), so a changed set or setting is
    never served stale.
    Returns {'features', 'mu', 'sigma', 'used' (indices into paths)}.
    """
    settings = {
        "preprocess": preprocess,
        "input_norm": model.input_norm,
        "feature_dim": model.feature_dim,
        "variant": model.variant,
        "weights": weights_tag,
    }
    key = fingerprint(paths, settings)
    cache = Path(cache_dir) / f"inception-{model.feature_dim}-{preprocess}-{key}.npz"

    def compute() -> dict[str, np.ndarray]:
        feats, used = extract_features(model, paths, preprocess, batch_size, desc)
        if len(feats) >= 2:
            mu, sigma = feature_statistics(feats)
        else:  # too few images for statistics: the caller reports the metric as skipped
            mu, sigma = np.zeros(0), np.zeros((0, 0))
        return {"features": feats, "mu": mu, "sigma": sigma, "used": np.asarray(used, dtype=np.int64)}

    return cached_npz(cache, compute)


def cached_tap_features(
    model: InceptionV3,
    paths: Sequence[str | os.PathLike],
    dims: Sequence[int],
    cache_dir: str | os.PathLike,
    preprocess: str = "clean",
    batch_size: int = 32,
    weights_tag: str = "",
    desc: str = "inception",
    images: Sequence[np.ndarray | Callable[[], np.ndarray]] | None = None,
    images_tag: str = "",
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """`extract_tap_features` of `paths` (or of `images`, made from `paths` as `images_tag` names, e.g.
    with the background removed), read from / written to an .npz in `cache_dir`.

    The key covers the files, the taps, the preprocessing, the input normalisation, `weights_tag` and
    `images_tag`, as in `cached_features`. Returns ({dim: features}, indices of the images used).
    """
    dims = sorted(set(dims))
    settings = {
        "preprocess": preprocess,
        "input_norm": model.input_norm,
        "taps": dims,
        "variant": model.variant,
        "weights": weights_tag,
        "images": images_tag,
    }
    key = fingerprint(paths, settings)
    cache = Path(cache_dir) / f"inception-taps-{'-'.join(map(str, dims))}-{preprocess}-{key}.npz"

    def compute() -> dict[str, np.ndarray]:
        feats, used = extract_tap_features(
            model, paths if images is None else images, dims, preprocess, batch_size, desc
        )
        return {**{f"features_{dim}": f for dim, f in feats.items()}, "used": np.asarray(used, np.int64)}

    data = cached_npz(cache, compute)
    return {dim: data[f"features_{dim}"] for dim in dims}, data["used"]


def cached_npz(
    path: str | os.PathLike, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays in `path` if it exists, else `compute()`, saved there atomically first."""
    path = Path(path)
    if path.is_file():
        log.info("from cache: %s", path)
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    result = compute()
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **result)
    return result
