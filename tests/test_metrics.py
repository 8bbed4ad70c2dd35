"""FID and KID checked against independent computations (scipy sqrtm, brute-force loops)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import linalg

from handsynth.errors import HandsynthError
from handsynth.evaluation import metrics


def _gaussian_sets(n: int = 300, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
    return a, b


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """FID as TF-FID / pytorch-fid compute it: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_against_itself_is_zero():
    a, _ = _gaussian_sets()
    assert abs(metrics.fid_from_features(a, a)) < 1e-6
    mu, sigma = metrics.feature_statistics(a)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    few = a[:20]  # fewer images than dimensions: the low-rank path
    assert abs(metrics.fid_from_features(few, few)) < 1e-6


def test_fid_equals_scipy_sqrtm_and_is_pinned():
    a, b = _gaussian_sets()
    reference = _fid_scipy(a, b)
    ours = metrics.fid_from_features(a, b)
    mu1, s1 = metrics.feature_statistics(a)
    mu2, s2 = metrics.feature_statistics(b)
    from_stats = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert from_stats == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(143.44792558, rel=1e-8)


def test_fid_low_rank_path_equals_scipy_with_fewer_images_than_dims():
    a, b = _gaussian_sets(n=40, d=64, seed=3)
    assert metrics.fid_from_features(a, b) == pytest.approx(_fid_scipy(a, b), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # scipy's sqrtm, the reference, warns
def test_fid_singular_covariance_and_mismatched_stats():
    rng = np.random.default_rng(1)
    a = np.zeros((50, 8))
    a[:, :3] = rng.normal(size=(50, 3))  # rank-3 covariance: Cholesky fails, eigh factor takes over
    b = rng.normal(size=(50, 8))
    mu1, s1 = metrics.feature_statistics(a)
    mu2, s2 = metrics.feature_statistics(b)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fid_scipy(a, b), rel=1e-6)
    with pytest.raises(HandsynthError, match="same Inception tap"):
        metrics.frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])
    with pytest.raises(HandsynthError, match="at least 2"):
        metrics.feature_statistics(a[:1])


def _kernel_loop(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    k = np.empty((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            k[i, j] = (sum(x[i, t] * y[j, t] for t in range(d)) / d + 1.0) ** 3
    return k


def _kid_brute_force(x, y, subsets, subset_size, seed, unbiased):
    """Double loops over every pair; subsets drawn as documented: one Generator, x then y."""
    rng = np.random.default_rng(seed)
    m = min(len(x), len(y), subset_size)
    values = []
    for _ in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = _kernel_loop(xs, xs), _kernel_loop(ys, ys), _kernel_loop(xs, ys)
        if unbiased:
            off_xx = sum(kxx[i, j] for i in range(m) for j in range(m) if i != j)
            off_yy = sum(kyy[i, j] for i in range(m) for j in range(m) if i != j)
            values.append((off_xx + off_yy) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))
        else:
            values.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    return np.mean(values), np.std(values)


@pytest.mark.parametrize("n1,n2,subset_size", [(14, 11, 8), (40, 45, 6)])  # full-kernel / per-subset paths
def test_unbiased_kid_equals_brute_force(n1, n2, subset_size):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(n1, 5)), rng.normal(size=(n2, 5)) + 0.2
    result = metrics.kid(x, y, subsets=4, subset_size=subset_size, seed=5)
    mean, std = _kid_brute_force(x, y, 4, subset_size, 5, unbiased=True)
    assert result["mean"] == pytest.approx(mean, rel=1e-10)
    assert result["std"] == pytest.approx(std, rel=1e-8)
    assert result["subset_size"] == min(n1, n2, subset_size)


def test_reference_kid_equals_the_official_biased_formula():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(30, 16)), rng.normal(size=(25, 16)) * 1.2
    result = metrics.kid(x, y, subsets=3, subset_size=20, estimator="reference", seed=2)

    # The official scripts: K = (X Y^T / d + 1)^3, mmd = mean(Kxx) + mean(Kyy) - 2 mean(Kxy).
    rng = np.random.default_rng(2)
    d, mmds = x.shape[1], []
    for _ in range(3):
        xs, ys = x[rng.choice(30, 20, replace=False)], y[rng.choice(25, 20, replace=False)]
        k_xx, k_yy, k_xy = (
            (np.dot(xs, xs.T) / d + 1) ** 3,
            (np.dot(ys, ys.T) / d + 1) ** 3,
            (np.dot(xs, ys.T) / d + 1) ** 3,
        )
        mmds.append(k_xx.mean() + k_yy.mean() - 2 * k_xy.mean())
    assert result["mean"] == pytest.approx(np.mean(mmds), rel=1e-10)
    assert result["std"] == pytest.approx(np.std(mmds), rel=1e-8)
    unbiased = metrics.kid(x, y, subsets=3, subset_size=20, seed=2)
    assert unbiased["mean"] != pytest.approx(result["mean"], rel=1e-3)  # the diagonal matters


def test_kid_pinned():
    a, b = _gaussian_sets(n=200, d=16)
    result = metrics.kid(a, b, subsets=20, subset_size=100, seed=0)
    assert result["mean"] == pytest.approx(7.97049001, rel=1e-8)
    assert result["std"] == pytest.approx(1.16073093, rel=1e-8)
    with pytest.raises(HandsynthError, match="estimator"):
        metrics.kid(a, b, estimator="biased")


# ---------------------------------------------------------------------------------------------
# Hand metrics on the real HaGRID photos, against MediaPipe called directly.

PAPER_GESTURES = ["call", "four", "like", "mute", "ok", "palm"]


# the six paper gestures and six two-hand ones (HAND-CONF at confidence 0.0 is slow on 2 cores)
SUBSET = [*PAPER_GESTURES, "hand_heart", "holy", "xsign", "timeout", "take_photo", "thumb_index"]


def _photos(hagrid_mini) -> list:
    return [next((hagrid_mini / "images" / g).glob("*.jpg")) for g in SUBSET]


def _mediapipe(paths, max_num_hands, confidence):
    import mediapipe as mp

    results = []
    with mp.solutions.hands.Hands(
        static_image_mode=True, max_num_hands=max_num_hands, min_detection_confidence=confidence
    ) as hands:
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            results.append((rgb, hands.process(rgb)))
    return results


def test_hand_conf_equals_mediapipe_called_directly(hagrid_mini, tmp_path):
    paths = _photos(hagrid_mini)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = metrics.hand_confidence([*paths, broken])

    scores, with_hand = [], 0
    for _, res in _mediapipe(paths, max_num_hands=2, confidence=0.0):
        found = [h.classification[0].score for h in res.multi_handedness or []]
        scores += found
        with_hand += bool(found)
    assert result["hand_conf"] == pytest.approx(float(np.mean(scores)), abs=1e-12)
    assert result["hands"] == len(scores) and result["images_with_hand"] == with_hand
    assert result["images"] == len(paths) and list(result["unreadable"]) == [str(broken)]
    assert result["detection_rate"] == pytest.approx(with_hand / len(paths))
    assert result["hand_conf"] == pytest.approx(0.963131, abs=1e-5)  # pinned on the 12 photos
    assert result["hands"] == 17 and with_hand == 12


def test_hand_crops_equal_mediapipe_called_directly(hagrid_mini, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 100), (128, 128, 128)).save(blank)
    paths = [*_photos(hagrid_mini), blank]
    crops, stats = metrics.hand_crops(paths, mode="reference")
    expected = []
    for rgb, res in _mediapipe(paths, max_num_hands=2, confidence=0.5):
        if not res.multi_hand_landmarks:
            continue
        xs = [p.x for hand in res.multi_hand_landmarks for p in hand.landmark]
        ys = [p.y for hand in res.multi_hand_landmarks for p in hand.landmark]
        h, w = rgb.shape[:2]  # cal_fid-h.py: union of the landmarks, truncated to int, no margin
        x0, x1 = max(int(min(xs) * w), 0), min(int(max(xs) * w), w)
        y0, y1 = max(int(min(ys) * h), 0), min(int(max(ys) * h), h)
        expected.append(rgb[y0:y1, x0:x1])
    assert len(crops) == len(expected) == stats["crops"]
    for got, want in zip(crops, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert stats["images_without_hand"] == len(paths) - len(expected) == 1

    per_hand, per_stats = metrics.hand_crops(paths, mode="per-hand", margin=0.25)
    assert per_stats["crops"] == 16 and stats["crops"] == 12  # two-hand photos give two crops
    assert sum(c.size for c in per_hand) > 0
    with pytest.raises(HandsynthError, match="hand crop mode"):
        metrics.hand_crops(paths, mode="union")


def test_gesture_accuracy_matches_the_classifier_on_the_six_gestures(hagrid_mini):
    from handsynth.files import load_rgb
    from handsynth.perception.classifier import GestureClassifier

    paths = [next((hagrid_mini / "images" / g).glob("*.jpg")) for g in PAPER_GESTURES]
    result = metrics.gesture_accuracy(paths, PAPER_GESTURES)
    with GestureClassifier() as classifier:
        labels = [classifier.classify(load_rgb(p)) for p in paths]
    assert [result["labels"][str(p)] for p in paths] == labels
    assert result["correct"] == sum(label == g for label, g in zip(labels, PAPER_GESTURES, strict=True))
    assert result["accuracy"] == pytest.approx(result["correct"] / 6)
    for gesture, label in zip(PAPER_GESTURES, labels, strict=True):
        assert result["confusion"][gesture] == {label: 1}
    # one target for all: only the 'call' photo can be right
    assert metrics.gesture_accuracy(paths, "call")["correct"] == int(labels[0] == "call")


def test_clipsim_equals_clip_called_directly(tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from handsynth.tiny.clip import write_tiny_clip

    folder = write_tiny_clip(tmp_path / "clip", seed=0)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"oops")
    prompts = ["a man making phone call hand gesture", "bad", "a woman giving the thumbs up", "a child"]
    result = metrics.clip_similarity(
        [paths[0], tmp_path / "bad.png", *paths[1:]], prompts, str(folder), "cpu"
    )

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    kept = [prompts[0], *prompts[2:]]
    inputs = processor(text=kept, images=[Image.open(p) for p in paths], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
    expected = 100 * cos.clamp(min=0)
    assert result["pairs"] == 3 and list(result["unreadable"]) == [str(tmp_path / "bad.png")]
    assert result["clipsim"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert result["clipsim"] > 1.0  # not every pair clamped to 0
    with pytest.raises(HandsynthError, match="prompts"):
        metrics.clip_similarity(paths, prompts, str(folder), "cpu")


def test_fid_on_float32_features_agrees_with_float64():
    rng = np.random.default_rng(3)
    a = np.maximum(rng.normal(size=(400, 64)), 0).astype(np.float32)  # more images than dims: covariances
    b = np.maximum(rng.normal(size=(400, 64)) + 0.1, 0).astype(np.float32)
    exact = metrics.fid_from_features(a.astype(np.float64), b.astype(np.float64))
    assert metrics.fid_from_features(a, b) == pytest.approx(exact, rel=1e-6)
    assert metrics.feature_statistics(a)[1].dtype == np.float64


def test_kid_on_float32_features_agrees_with_float64():
    rng = np.random.default_rng(4)
    a = np.maximum(rng.normal(size=(300, 256)), 0).astype(np.float32)
    b = np.maximum(rng.normal(size=(300, 256)) + 0.1, 0).astype(np.float32)
    fast = metrics.kid(a, b, subsets=10, subset_size=100)
    exact = metrics.kid(a.astype(np.float64), b.astype(np.float64), subsets=10, subset_size=100)
    assert fast["mean"] == pytest.approx(exact["mean"], rel=1e-6)
    assert fast["std"] == pytest.approx(exact["std"], rel=1e-5)
