"""Metrics on feature arrays and images: FID, KID, hand crops, HAND-CONF, CLIPSIM, gesture accuracy.

FID needs tr sqrt(S1 S2). The eigenvalues of S1 S2 are those of the symmetric F1 S2 F1^T for any
factor S1 = F1^T F1 (a Cholesky factor), and equally those of C C^T with C = F1 F2^T. With fewer
images than dimensions the centred feature rows are such factors, so only an (n x n) symmetric
eigenvalue problem is left. Both are exact (no iterative matrix square root) and far faster than
scipy.linalg.sqrtm of the non-symmetric 2048x2048 product.

KID uses the cubic polynomial kernel k(x,y) = (x.y/d + 1)^3 on random subsets. When the kernels
over the whole sets cost less than the per-subset ones, they are computed once, a row block at a
time, and every subset's sums come from indicator-vector products, vectorised over subsets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from handsynth.errors import HandsynthError
from handsynth.progress import progress_bar

log = logging.getLogger(__name__)

KID_ESTIMATORS = ("unbiased", "reference")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, as TF-FID and pytorch-fid), returned in float64.

    The covariance is one symmetric rank-k update (syrk: half the work of a general product). It
    runs in the features' own precision: for Inception's float32 features twice as fast as float64,
    and the FID agrees with an all-float64 computation to about 1e-7 relative."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) < 2:
        raise HandsynthError(
            f"FID needs at least 2 feature vectors in an (N, D) array, got shape {features.shape}"
        )
    if features.dtype != np.float32:
        features = features.astype(np.float64)
    mu = features.mean(axis=0, dtype=np.float64)
    centred = features - mu.astype(features.dtype)
    sigma = (centred.T @ centred).astype(np.float64)  # numpy runs a.T @ a as one syrk product
    sigma /= len(features) - 1
    return mu, sigma


def _factor(sigma: np.ndarray) -> tuple[np.ndarray, bool]:
    """(F, upper-triangular?) with F^T F = sigma: Cholesky when positive definite, else from eigh."""
    try:
        return linalg.cholesky(sigma, lower=False, check_finite=False), True
    except linalg.LinAlgError:
        w, v = linalg.eigh(sigma, check_finite=False)
        return np.sqrt(np.clip(w, 0, None))[:, None] * v.T, False


def _sum_sqrt_eigenvalues(m: np.ndarray) -> float:
    """Sum of the square roots of a symmetric PSD matrix's eigenvalues (rounding negatives to 0).

    Eigenvalues only, no vectors: several times faster than an SVD or scipy's sqrtm. Only the lower
    triangle is read, so a product that is symmetric up to rounding needs no symmetrising copy."""
    eigenvalues = linalg.eigvalsh(m, check_finite=False, driver="evd", overwrite_a=True)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric positive semi-definite sigma1, sigma2:
    with sigma1 = F^T F, the eigenvalues of F sigma2 F^T are those of sigma1 sigma2."""
    f, triangular = _factor(sigma1)
    if not triangular:
        return _sum_sqrt_eigenvalues(f @ sigma2 @ f.T)
    # triangular products (trmm) take half the work of general ones: (F S2) F^T, in place
    f_sigma2 = blas.dtrmm(1.0, f, sigma2)
    return _sum_sqrt_eigenvalues(blas.dtrmm(1.0, f, f_sigma2, side=1, trans_a=1, overwrite_b=1))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)); eps*I is added to both if the trace is not finite."""
    mu1, mu2 = (np.atleast_1d(np.asarray(mu, dtype=np.float64)) for mu in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, dtype=np.float64)) for sigma in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise HandsynthError(
            f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
            f"{sigma2.shape} (were both sets extracted at the same Inception tap?)"
        )
    try:
        tr_sqrt = trace_sqrt_product(sigma1, sigma2)
    except (linalg.LinAlgError, ValueError):
        tr_sqrt = np.nan
    if not np.isfinite(tr_sqrt):
        log.warning("FID: product of covariances is not finite; adding %g to the diagonals", eps)
        offset = np.eye(len(mu1)) * eps
        tr_sqrt = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets. With no more images than dimensions, the centred rows factor the
    covariances, so neither d x d covariance is formed and only an (n1 x n2) SVD is needed."""
    f1, f2 = np.asarray(features1), np.asarray(features2)
    if f1.ndim != 2 or f2.ndim != 2 or min(len(f1), len(f2)) < 2 or f1.shape[1] != f2.shape[1]:
        raise HandsynthError(
            f"FID needs two (N, D) feature arrays with N >= 2 and the same D, got {f1.shape} and {f2.shape}"
        )
    if max(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    b1 = (f1 - mu1) / np.sqrt(len(f1) - 1)
    b2 = (f2 - mu2) / np.sqrt(len(f2) - 1)
    diff = mu1 - mu2
    tr1, tr2 = float((b1 * b1).sum()), float((b2 * b2).sum())
    c = b1 @ b2.T  # its singular values are the square roots of the eigenvalues of S1 S2
    gram = c @ c.T if len(c) <= c.shape[1] else c.T @ c
    return float(diff @ diff + tr1 + tr2 - 2.0 * _sum_sqrt_eigenvalues(gram))


def kid_subset_indices(
    n1: int, n2: int, subsets: int, subset_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(subsets, m) index arrays into each set, m = min(n1, n2, subset_size), drawn without
    replacement within a subset: x then y for each subset from one numpy Generator."""
    m = min(n1, n2, subset_size)
    rng = np.random.default_rng(seed)
    idx1 = np.empty((subsets, m), dtype=np.int64)
    idx2 = np.empty((subsets, m), dtype=np.int64)
    for s in range(subsets):
        idx1[s] = rng.choice(n1, m, replace=False)
        idx2[s] = rng.choice(n2, m, replace=False)
    return idx1, idx2


def _indicators(index: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """(S, n) 0/1 rows: row s marks the members of subset s."""
    rows = np.zeros((len(index), n), dtype=dtype)
    np.put_along_axis(rows, index, 1, axis=1)
    return rows


def _cubic_kernel_subset_sums(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, cols: np.ndarray, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """For every subset s: the sum of k(x_i, y_j) over i in rows[s], j in cols[s], and the sum of the
    diagonal k(x_i, x_i) over i in rows[s] (zeros unless `symmetric`, where y is x and cols is rows).

    The kernel is made one row block at a time in reused buffers, never as a whole (n x n) matrix:
    at n = 5000 the whole matrices cost more in fresh memory than in arithmetic. A symmetric kernel
    computes only the blocks on and right of the diagonal and counts those right of it twice.
    """
    n, d = x.shape
    dtype = x.dtype
    # small blocks waste less on the diagonal of a symmetric kernel; large ones make faster products
    block = 512 if symmetric else 2048
    row_sets = _indicators(rows, n, dtype)
    col_sets = row_sets if symmetric else _indicators(cols, len(y), dtype)
    totals, diagonals = np.zeros(len(rows)), np.zeros(len(rows))
    base_buffer, kernel_buffer = np.empty(block * len(y), dtype), np.empty(block * len(y), dtype)
    x_scaled = np.empty((block, d), dtype)
    for start in range(0, n, block):
        stop = min(start + block, n)
        first = start if symmetric else 0
        shape = (stop - start, len(y) - first)
        base = base_buffer[: shape[0] * shape[1]].reshape(shape)
        kernel = kernel_buffer[: shape[0] * shape[1]].reshape(shape)
        np.multiply(x[start:stop], 1.0 / d, out=x_scaled[: stop - start])
        np.matmul(x_scaled[: stop - start], y[first:].T, out=base)
        base += 1.0
        np.multiply(base, base, out=kernel)
        kernel *= base
        # per-subset row sums of the block, then the column indicators pick the subset's columns
        partial = row_sets[:, start:stop].astype(np.float64) @ kernel.astype(np.float64)
        weights = col_sets[:, first:].astype(np.float64)
        if symmetric:
            weights[:, stop - start :] *= 2.0  # block (j, i) of a symmetric kernel equals (i, j)^T
            diagonal = np.diagonal(kernel[:, : stop - start]).astype(np.float64)
            diagonals += row_sets[:, start:stop].astype(np.float64) @ diagonal
        totals += np.einsum("sj,sj->s", partial, weights)
    return totals, diagonals


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    estimator: str = "unbiased",
    seed: int = 0,
) -> dict:
    """Kernel Inception Distance: mean and std of the squared MMD over random subsets.

    `estimator`: 'unbiased' excludes the kernel diagonal (Binkowski et al. 2018); 'reference' keeps
    it, the biased estimator of the official Hand1000 scripts, for comparing with the paper.
    """
    if estimator not in KID_ESTIMATORS:
        raise HandsynthError(f"KID estimator must be one of {KID_ESTIMATORS}, got {estimator!r}")
    x, y = np.asarray(features1), np.asarray(features2)
    if not (x.dtype == y.dtype == np.float32):  # Inception's float32 features are kept: twice as fast
        x, y = x.astype(np.float64), y.astype(np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise HandsynthError(f"KID needs two (N, D) arrays with the same D, got {x.shape} and {y.shape}")
    if min(len(x), len(y)) < 2:
        raise HandsynthError(f"KID needs at least 2 images in each set, got {len(x)} and {len(y)}")
    idx1, idx2 = kid_subset_indices(len(x), len(y), subsets, subset_size, seed)
    m = idx1.shape[1]
    if len(x) ** 2 + len(y) ** 2 + len(x) * len(y) <= 3 * subsets * m * m:
        # the kernels over the whole sets once, summed per subset by indicator products
        sxx, dxx = _cubic_kernel_subset_sums(x, x, idx1, idx1, symmetric=True)
        syy, dyy = _cubic_kernel_subset_sums(y, y, idx2, idx2, symmetric=True)
        sxy, _ = _cubic_kernel_subset_sums(x, y, idx1, idx2, symmetric=False)
    else:  # sets much larger than the subsets: kernels per subset
        sxx, syy, sxy, dxx, dyy = (np.empty(subsets) for _ in range(5))
        whole = np.arange(m)[None]
        for s in range(subsets):
            xs, ys = x[idx1[s]], y[idx2[s]]
            (sxx[s],), (dxx[s],) = _cubic_kernel_subset_sums(xs, xs, whole, whole, symmetric=True)
            (syy[s],), (dyy[s],) = _cubic_kernel_subset_sums(ys, ys, whole, whole, symmetric=True)
            (sxy[s],), _ = _cubic_kernel_subset_sums(xs, ys, whole, whole, symmetric=False)
    if estimator == "unbiased":
        values = (sxx - dxx + syy - dyy) / (m * (m - 1)) - 2.0 * sxy / (m * m)
    else:
        values = (sxx + syy - 2.0 * sxy) / (m * m)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "subsets": subsets,
        "subset_size": m,
        "estimator": estimator,
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------
# Image metrics built on MediaPipe hands (handsynth.perception.hands) and CLIP.

HAND_CROP_MODES = ("reference", "per-hand")


def _read(path: str | os.PathLike, skipped: dict[str, str]) -> np.ndarray | None:
    """The image as RGB, or None after noting why it was skipped."""
    from handsynth.files import load_rgb

    try:
        return load_rgb(path)
    except HandsynthError as exc:
        log.warning("skipped: %s", exc)
        skipped[str(path)] = str(exc)
        return None


def hand_confidence(
    images: Sequence[str | os.PathLike], model_complexity: int = 1, desc: str = "HAND-CONF"
) -> dict:
    """HAND-CONF as the reference hand_confidence.py: the mean MediaPipe handedness score over every
    hand found (up to 2 per image, min_detection_confidence 0.0), and the share of images with a hand.
    """
    from handsynth.perception.hands import HAND_CONF, HandDetector

    scores: list[float] = []
    with_hand = 0
    skipped: dict[str, str] = {}
    with HandDetector(**HAND_CONF, model_complexity=model_complexity) as detector:
        for path in progress_bar(images, desc=desc, unit="img"):
            rgb = _read(path, skipped)
            if rgb is None:
                continue
            hands = detector.detect(rgb).hands
            scores.extend(hand.score for hand in hands)
            with_hand += bool(hands)
    read = len(images) - len(skipped)
    return {
        "hand_conf": float(np.mean(scores)) if scores else None,
        "detection_rate": with_hand / read if read else None,
        "images": read,
        "images_with_hand": with_hand,
        "hands": len(scores),
        "unreadable": skipped,
        "settings": {**HAND_CONF, "model_complexity": model_complexity},
    }


def hand_crops(
    images: Sequence[str | os.PathLike],
    mode: str = "reference",
    margin: float = 0.25,
    model_complexity: int = 1,
    desc: str = "hand crops",
) -> tuple[list[np.ndarray], dict]:
    """RGB crops for FID-H / KID-H, and the counts behind them.

    'reference': one crop per image around the landmarks of up to 2 hands, no margin, confidence 0.5
    (Detection.union_box, as cal_fid-h.py but without its BGR/RGB mix-up). 'per-hand': one crop per
    hand, its landmark box widened by `margin` of its size on every side. Images with no hand (and
    empty boxes) give no crop and are counted.
    """
    from handsynth.perception.hands import FID_H, HandDetector

    if mode not in HAND_CROP_MODES:
        raise HandsynthError(f"hand crop mode must be one of {HAND_CROP_MODES}, got {mode!r}")
    crops: list[np.ndarray] = []
    no_hand = empty = 0
    skipped: dict[str, str] = {}
    box_margin = margin if mode == "per-hand" else 0.0
    with HandDetector(**FID_H, model_complexity=model_complexity, box_margin=box_margin) as detector:
        for path in progress_bar(images, desc=desc, unit="img"):
            rgb = _read(path, skipped)
            if rgb is None:
                continue
            detection = detector.detect(rgb)
            if not detection.hands:
                no_hand += 1
                continue
            boxes = [detection.union_box()] if mode == "reference" else [h.box for h in detection.hands]
            for x0, y0, x1, y1 in boxes:
                if x1 <= x0 or y1 <= y0:
                    empty += 1
                    continue
                crops.append(rgb[y0:y1, x0:x1].copy())
    stats = {
        "images": len(images) - len(skipped),
        "images_without_hand": no_hand,
        "crops": len(crops),
        "empty_boxes": empty,
        "unreadable": skipped,
        "settings": {"mode": mode, **FID_H, "margin": box_margin, "model_complexity": model_complexity},
    }
    return crops, stats


def gesture_accuracy(
    images: Sequence[str | os.PathLike], targets: str | Sequence[str], desc: str = "gesture accuracy"
) -> dict:
    """Share of images the landmark classifier reads as the target gesture (from up to two hands: hands
    that touch make a two-hand gesture, which is none of the targets).

    Images with no hand count as wrong (label 'unknown'); unreadable ones are left out and listed.
    `confusion[target][label]` counts every label given per target.
    """
    from handsynth.perception.classifier import GestureClassifier

    targets = [targets] * len(images) if isinstance(targets, str) else list(targets)
    if len(targets) != len(images):
        raise HandsynthError(f"gesture_accuracy: {len(images)} images but {len(targets)} targets")
    labels: dict[str, str] = {}
    confusion: dict[str, dict[str, int]] = {}
    correct = no_hand = 0
    skipped: dict[str, str] = {}
    with GestureClassifier() as classifier:
        for path, target in zip(progress_bar(images, desc=desc, unit="img"), targets, strict=True):
            rgb = _read(path, skipped)
            if rgb is None:
                continue
            label, hand = classifier.classify_with_hand(rgb)
            no_hand += hand is None
            labels[str(path)] = label
            row = confusion.setdefault(target, {})
            row[label] = row.get(label, 0) + 1
            correct += label == target
    return {
        "accuracy": correct / len(labels) if labels else None,
        "images": len(labels),
        "correct": correct,
        "no_hand": no_hand,
        "confusion": confusion,
        "labels": labels,
        "unreadable": skipped,
    }


def clip_similarity(
    images: Sequence[str | os.PathLike],
    prompts: Sequence[str],
    model_name_or_path: str = "openai/clip-vit-base-patch32",
    device: str = "auto",
    batch_size: int = 32,
) -> dict:
    """CLIPSIM: 100 x max(cos(CLIP image, CLIP prompt), 0), averaged over image-prompt pairs
    (the CLIPScore convention). Unreadable images are left out and listed."""
    from handsynth.data.quality import image_features, load_clip, text_features

    if len(images) != len(prompts):
        raise HandsynthError(f"CLIPSIM: {len(images)} images but {len(prompts)} prompts")
    model, processor = load_clip(model_name_or_path, device=device)
    image_emb, skipped = image_features(model, processor, list(images), batch_size=batch_size)
    kept = [p for i, p in enumerate(prompts) if i not in skipped]
    text_emb = text_features(model, processor, kept)
    image_emb = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    scores = 100.0 * np.clip((image_emb * text_emb).sum(axis=1), 0.0, None)
    return {
        "clipsim": float(scores.mean()) if len(scores) else None,
        "std": float(scores.std()) if len(scores) else None,
        "pairs": len(scores),
        "model": model_name_or_path,
        "unreadable": {str(images[i]): reason for i, reason in skipped.items()},
    }
