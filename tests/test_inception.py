"""The FID Inception-v3 module: layout against the published architecture, taps, loading, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics
from handsynth.tiny.inception import random_inception, write_random_inception

FIXTURE = Path(__file__).parent / "fixtures" / "pt_inception_keys.json"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_NAME, seed=0)


@pytest.fixture(scope="module")
def model() -> inception.InceptionV3:
    """Built once: random weights (seed 0), run at the input's own size to keep CPU time low."""
    return random_inception(seed=0, resize_input=False)


def at_tap(model: inception.InceptionV3, dim: int) -> inception.InceptionV3:
    model.feature_dim = model.num_features = dim
    return model


def test_state_dict_keys_and_shapes_equal_the_standard_file():
    expected = json.loads(FIXTURE.read_text())["keys"]
    got = [[k, list(v.shape)] for k, v in inception.InceptionV3().state_dict().items()]
    assert got == expected
    # Published parameter counts: torchvision's inception_v3 (with AuxLogits) has 27,161,264; the FID
    # network drops AuxLogits (3,326,696) and has 1008 classes (+8 x 2049).
    assert sum(p.numel() for p in inception.InceptionV3(variant="torchvision").parameters()) == 27_161_264
    assert sum(p.numel() for p in inception.InceptionV3().parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_every_tap_has_its_shape_and_pinned_values(model):
    x = torch.stack(
        [
            (torch.arange(3 * 80 * 80).reshape(3, 80, 80) * 37 % 256).to(torch.uint8),
            torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
        ]
    )  # fully convolutional: 80 px instead of 299 keeps it cheap
    taps = model.taps(x, upto=2048)
    shapes = {k: tuple(v.shape) for k, v in taps.items()}
    assert shapes == {64: (2, 64), 192: (2, 192), 768: (2, 768), 2048: (2, 2048)}
    assert all(torch.isfinite(v).all() and v.abs().mean() > 1e-3 for v in taps.values())
    for dim in (64, 192):  # forward returns the chosen tap (the deep ones are the same code path)
        out = at_tap(model, dim)(x)
        assert out.shape == (2, dim) and out.dtype == torch.float32
        torch.testing.assert_close(out, taps[dim])
    at_tap(model, 2048)
    torch.testing.assert_close(
        taps[64][0, :4], torch.tensor([0.277691, 0.521221, 0.485148, 0.003955]), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        taps[2048][0, :4], torch.tensor([0.004243, 0.036037, 0.0, 0.146386]), rtol=1e-3, atol=1e-5
    )


def test_fid_variant_quirks_change_the_output(model):
    """The 2015-12-05 graph: TF average pools (padding not counted) and a max pool in Mixed_7c."""
    fid = model
    tv = inception.InceptionV3(variant="torchvision", resize_input=False)
    state = {k: v for k, v in fid.state_dict().items() if not k.startswith("fc.")}
    tv.load_state_dict(state, strict=False)
    block_input = torch.rand(1, 192, 9, 9)
    a, b = fid.Mixed_5b(block_input), tv.Mixed_5b(block_input)
    assert torch.allclose(a[:, :224], b[:, :224])  # conv branches agree
    assert not torch.allclose(a[:, 224:], b[:, 224:])  # the pooled branch differs at the borders
    e_in = torch.rand(1, 2048, 4, 4)
    assert not torch.allclose(fid.Mixed_7c(e_in), tv.Mixed_7c(e_in))
    tv.Mixed_7c.pool = "max"
    torch.testing.assert_close(fid.Mixed_7c(e_in), tv.Mixed_7c(e_in))


def test_load_inception_from_flag_env_and_cache(weights_file, model, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    with pytest.raises(HandsynthError, match="pt_inception-2015-12-05-6726825d.pth") as err:
        inception.load_inception(tmp_path / "nope.pth")
    assert "github.com/mseitzer/pytorch-fid/releases" in str(err.value)
    assert "nope.pth" in str(err.value) and inception.WEIGHTS_ENV in str(err.value)

    loaded = inception.load_inception(weights_file, feature_dim=192)
    for key, value in model.state_dict().items():  # the writer wrote random_inception(seed=0)
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.variant == "fid" and loaded.num_features == 192 and loaded.input_norm == "fid"

    monkeypatch.setenv(inception.WEIGHTS_ENV, str(weights_file))
    assert inception.resolve_weights() == weights_file
    monkeypatch.delenv(inception.WEIGHTS_ENV)
    cached = inception.default_weights_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weights_file.read_bytes())
    assert inception.resolve_weights() == cached

    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, bad)
    with pytest.raises(HandsynthError, match="does not match"):
        inception.load_inception(bad)


def test_weights_without_batch_norm_counters_load(model, tmp_path):
    # A file converted from the TF graph may hold no num_batches_tracked (a plain dict, no version
    # metadata): batch norm then fills them in, so the strict load still takes it.
    plain = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(plain) < len(model.state_dict())
    path = tmp_path / "converted.pth"
    torch.save(plain, path)
    loaded = inception.load_inception(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in plain.items())


def test_preprocess_modes():
    # 601x299: left red, right blue, an 11 px green column in the middle
    rgb = np.zeros((299, 601, 3), np.uint8)
    rgb[:, :300, 0] = 255
    rgb[:, 301:, 2] = 255
    rgb[:, 295:306] = (0, 255, 0)
    clean = inception.preprocess_image(rgb, "clean")
    ref = inception.preprocess_image(Image.fromarray(rgb), "reference")
    assert clean.shape == ref.shape == (299, 299, 3) and clean.dtype == ref.dtype == np.float32
    assert 0 <= clean.min() and clean.max() <= 255
    # clean squashes the whole width; a plain PIL uint8 bicubic resize agrees to rounding
    pil = np.asarray(Image.fromarray(rgb).resize((299, 299), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(clean - pil).max() <= 1.0
    # reference keeps the aspect ratio (short side already 299) and takes the centre 299 columns
    np.testing.assert_array_equal(ref, rgb[:, 151:450].astype(np.float32))
    assert np.array_equal(ref[:, ::-1, 1], ref[:, :, 1])  # a centred crop
    # torchvision Resize truncates the long side: 600x400 -> 448x299, then the crop starts at 74
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8))
    expected = np.asarray(wide.resize((448, 299), Image.Resampling.BILINEAR), np.float32)[:, 74:373]
    np.testing.assert_array_equal(inception.preprocess_image(wide, "reference"), expected)
    with pytest.raises(HandsynthError, match="preprocess"):
        inception.preprocess_image(rgb, "bilinear")


def test_imagenet_normalisation_with_transform_input_is_the_fid_scaling():
    """torchvision's transform_input undoes ImageNet normalisation to (x-0.5)/0.5 per channel."""
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    tv = inception.InceptionV3(variant="torchvision", input_norm="imagenet")
    fid = inception.InceptionV3(input_norm="fid")
    torch.testing.assert_close(tv.normalize(x), fid.normalize(x))
    imagenet = inception.InceptionV3(input_norm="imagenet").normalize(x)
    torch.testing.assert_close(imagenet[0, 0], (x[0, 0] / 255.0 - 0.485) / 0.229)


def test_extract_and_cache_features(model, tmp_path, monkeypatch):
    model = at_tap(model, 64)
    model.resize_input = True
    paths = []
    for i in range(3):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(p)
        paths.append(p)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    paths.insert(1, tmp_path / "imgs" / "broken.png")

    first = inception.cached_features(model, paths, tmp_path / "cache", batch_size=2)
    assert first["features"].shape == (3, 64) and list(first["used"]) == [0, 2, 3]
    direct = model(torch.from_numpy(inception.preprocess_image(Image.open(paths[2]))).permute(2, 0, 1)[None])
    np.testing.assert_allclose(first["features"][1], direct[0].double().numpy(), rtol=1e-4, atol=1e-5)
    mu, sigma = metrics.feature_statistics(first["features"])
    np.testing.assert_allclose(first["mu"], mu)
    np.testing.assert_allclose(first["sigma"], sigma)

    def no_reading(*args, **kwargs):
        raise AssertionError("cached set was read again")

    monkeypatch.setattr(inception, "extract_features", no_reading)
    again = inception.cached_features(model, paths, tmp_path / "cache", batch_size=2)
    np.testing.assert_array_equal(again["features"], first["features"])
    with pytest.raises(AssertionError, match="read again"):  # a different setting is a different key
        inception.cached_features(model, paths, tmp_path / "cache", preprocess="reference")
    model.resize_input = False
    at_tap(model, 2048)


@pytest.mark.slow  # importing torchmetrics alone takes 10+ s on 2 cores
def test_plugs_into_torchmetrics_fid(model):
    from torchmetrics.image.fid import FrechetInceptionDistance

    model = at_tap(model, 64)
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (6, 3, 80, 80), dtype=torch.uint8, generator=gen)
    fake = (real.float() * 0.5 + 60).to(torch.uint8)
    fid = FrechetInceptionDistance(feature=model)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = metrics.fid_from_features(model(real).double().numpy(), model(fake).double().numpy())
    assert float(fid.compute()) == pytest.approx(ours, rel=1e-4)
    at_tap(model, 2048)


def test_several_taps_come_from_one_pass_and_equal_each_tap_alone(model, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (60, 70, 3), dtype=np.uint8) for _ in range(3)]
    path = tmp_path / "img.png"
    Image.fromarray(arrays[2]).save(path)

    def broken():
        raise HandsynthError("mask missing")

    # an array, a function that makes the image, a failing one (skipped) and a file
    items = [arrays[0], lambda: arrays[1], broken, path]
    passes = []
    original = model.taps
    monkeypatch.setattr(model, "taps", lambda x, upto=None: passes.append(upto) or original(x, upto))
    feats, used = inception.extract_tap_features(model, items, (192, 64), batch_size=8)
    assert passes == [192] and used == [0, 1, 3]  # one batch, one pass to the deepest tap
    for dim in (64, 192):
        alone, _ = inception.extract_features(at_tap(model, dim), [arrays[0], arrays[1], path])
        np.testing.assert_array_equal(feats[dim], alone)
    at_tap(model, 2048)
    with pytest.raises(HandsynthError, match="taps must be among"):
        inception.extract_tap_features(model, items, (100,))

    cached, cached_used = inception.cached_tap_features(model, [path] * 2, (64, 192), tmp_path / "cache")
    assert list(cached_used) == [0, 1] and cached[64].shape == (2, 64) and cached[192].shape == (2, 192)
    np.testing.assert_array_equal(cached[192][0], feats[192][2])
    monkeypatch.setattr(inception, "extract_tap_features", lambda *a, **k: pytest.fail("cache not used"))
    again, _ = inception.cached_tap_features(model, [path] * 2, (192, 64), tmp_path / "cache")
    np.testing.assert_array_equal(again[64], cached[64])
    with pytest.raises(pytest.fail.Exception):  # derived images under another tag are another key
        inception.cached_tap_features(
            model, [path] * 2, (64, 192), tmp_path / "cache", images=arrays[:2], images_tag="fg"
        )
