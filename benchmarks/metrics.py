"""FID and KID speed: the reference math vs `handsynth.evaluation.metrics`, on cached 2048-d features.

Reference, as TF-FID / pytorch-fid and the usual numpy KID scripts compute them:
- FID: `scipy.linalg.sqrtm(sigma1 @ sigma2)`, with the eps retry when it is not finite;
- KID: a Python loop over 100 subsets, each computing its three (m x m) cubic-kernel matrices.
Ours: `fid_from_features` (covariances by one syrk product each, in float32 for float32
features, then symmetric eigenvalues of F S2 F^T with a Cholesky factor F; with fewer images than
dimensions, of the centred cross-product's Gram) and `kid` (the kernels over the whole sets a row
block at a time, float32 products for float32 features, symmetric kernels half computed, subset
sums by indicator products, vectorised over subsets). Both sides draw the same KID subsets, so the
numbers must agree; the largest relative difference is printed. Each side's time is its best of
`--repeats` runs.

Features are cached in benchmarks/results/features-<n>.npz (made once: ReLU'd random mixtures,
non-negative and correlated like Inception pool features; real ones come from `handsynth evaluate`).

    python benchmarks/metrics.py [--sizes 1000 5000] [--subsets 100] [--subset-size 1000]

On a machine shared with other jobs, set OPENBLAS_NUM_THREADS=1: oversubscribed BLAS threads make
LAPACK (eigvalsh, sqrtm) 10x slower and the timings noise. The setting is saved with the results.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy import linalg

from handsynth import files
from handsynth.evaluation.metrics import fid_from_features, kid, kid_subset_indices

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIM = 2048


def cached_features(n: int, seed: int) -> np.ndarray:
    path = RESULTS / f"features-{n}-{seed}.npz"
    if path.is_file():
        return np.load(path)["features"]
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(123).normal(size=(256, DIM)) / 16  # shared: the two sets overlap
    latent = rng.normal(size=(n, 256)) + (0.15 if seed % 2 else 0.0)
    features = np.maximum(latent @ mixing + 0.1 * rng.normal(size=(n, DIM)), 0).astype(np.float32)
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=features)
    return features


def reference_fid(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def reference_kid(
    a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    idx1, idx2 = kid_subset_indices(len(a), len(b), subsets, subset_size, seed)
    d, m = a.shape[1], idx1.shape[1]
    mmds = []
    for s in range(subsets):
        x, y = a[idx1[s]], b[idx2[s]]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        mmds.append(
            (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2 * k_xy.mean()
        )
    return float(np.mean(mmds)), float(np.std(mmds))


def timed(fn, *args, repeats: int = 1):
    """(value, best time of `repeats` runs): the best run is the one least disturbed by the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return value, min(times)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--subset-size", type=int, default=1000)
    parser.add_argument(
        "--repeats", type=int, default=2, help="each side's time is its best of this many runs"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "metrics.json")
    args = parser.parse_args()

    results = {
        "dim": DIM,
        "subsets": args.subsets,
        "subset_size": args.subset_size,
        "repeats": args.repeats,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    for n in args.sizes:
        # the cached features are float32, as Inception gives them; the reference runs in float64
        # (converted before timing) as the ground truth, ours takes them as they are
        a32, b32 = cached_features(n, seed=2 * n), cached_features(n, seed=2 * n + 1)
        a, b = a32.astype(np.float64), b32.astype(np.float64)
        r = args.repeats
        ref_fid, t_ref_fid = timed(reference_fid, a, b, repeats=r)
        our_fid, t_our_fid = timed(fid_from_features, a32, b32, repeats=r)
        (ref_kid, ref_std), t_ref_kid = timed(
            reference_kid, a, b, args.subsets, args.subset_size, 0, repeats=r
        )
        our, t_our_kid = timed(kid, a32, b32, args.subsets, args.subset_size, "unbiased", 0, repeats=r)
        row = {
            "fid": {"reference": ref_fid, "ours": our_fid, "reference_s": t_ref_fid, "ours_s": t_our_fid},
            "kid": {
                "reference": ref_kid,
                "ours": our["mean"],
                "reference_std": ref_std,
                "ours_std": our["std"],
                "reference_s": t_ref_kid,
                "ours_s": t_our_kid,
            },
        }
        row["fid"]["speedup"] = t_ref_fid / t_our_fid
        row["kid"]["speedup"] = t_ref_kid / t_our_kid
        row["total_speedup"] = (t_ref_fid + t_ref_kid) / (t_our_fid + t_our_kid)
        # the KID std is compared on the scale of the KID itself: with n = m every subset is the
        # whole set, the std is rounding noise (~1e-18) and a relative figure of it means nothing
        row["max_rel_difference"] = max(
            rel(our_fid, ref_fid), rel(our["mean"], ref_kid), abs(our["std"] - ref_std) / abs(ref_kid)
        )
        results["sizes"][str(n)] = row
        print(
            f"n={n}: FID {ref_fid:.6f} vs {our_fid:.6f}, {t_ref_fid:.2f}s vs {t_our_fid:.2f}s "
            f"({row['fid']['speedup']:.1f}x) | KID {ref_kid:.6e} vs {our['mean']:.6e}, "
            f"{t_ref_kid:.2f}s vs {t_our_kid:.2f}s ({row['kid']['speedup']:.1f}x) | "
            f"total {row['total_speedup']:.1f}x, max rel diff {row['max_rel_difference']:.2e}"
        )
    files.write_json(args.out, results)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
