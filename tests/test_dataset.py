"""Dataset building: selection, cropping (center / hand), coordinate transforms, build end to end."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handsynth import files
from handsynth.config import Config
from handsynth.data import dataset
from handsynth.data.dataset import (
    CropPlan,
    apply_crop,
    plan_crop,
    select_gesture,
    select_verified,
    split_targets,
    transform_box,
    transform_points,
)
from handsynth.data.gestures import gesture_phrase
from handsynth.data.hagrid import HagridRecord, check_image, read_hagrid
from handsynth.data.rewriting import pronoun_for
from handsynth.errors import HandsynthError


def _records(n: int, users: int | None = None, gesture: str = "call") -> list[HagridRecord]:
    return [
        HagridRecord(
            key=f"k{i:04d}",
            image_path=Path(f"/nowhere/{gesture}/k{i:04d}.jpg"),
            gesture=gesture,
            bbox=(0.4, 0.4, 0.2, 0.2),
            user_id=None if users is None else f"user{i % users:02d}",
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------- selection


def test_selection_is_seeded_disjoint_and_order_free():
    records = _records(50)
    a = select_gesture(records, 10, 15, seed=3)
    b = select_gesture(list(reversed(records)), 10, 15, seed=3)
    assert [r.key for r in a.train] == [r.key for r in b.train]
    assert [r.key for r in a.test] == [r.key for r in b.test]
    assert len(a.train) == 10 and len(a.test) == 15 and a.available == 50 and not a.short
    assert not {r.key for r in a.train} & {r.key for r in a.test}
    c = select_gesture(records, 10, 15, seed=4)
    assert {r.key for r in c.train} != {r.key for r in a.train}
    # a fixed pin: the selection must not drift between versions (ordered by sha256 of "seed/key")
    assert [r.key for r in a.test[:3]] == ["k0007", "k0005", "k0009"]
    by_hash = sorted((r.key for r in records), key=lambda k: hashlib.sha256(f"3/{k}".encode()).hexdigest())
    assert [r.key for r in a.test + a.train] == by_hash[:25]  # test first, then train
    # more training images later: test unchanged, train extended
    more = select_gesture(records, 20, 15, seed=3)
    assert more.test == a.test and more.train[:10] == a.train


def test_selection_is_stable_when_a_candidate_drops_out():
    records = _records(40)
    full = select_gesture(records, 5, 5, seed=0)
    rest = sorted(set(r.key for r in records) - {r.key for r in full.train + full.test},
                  key=lambda k: hashlib.sha256(f"0/{k}".encode()).hexdigest())  # fmt: skip
    dropped = full.train[2]
    again = select_gesture([r for r in records if r.key != dropped.key], 5, 5, seed=0)
    # the others keep their places; the next candidate joins train
    assert again.test == full.test
    assert [r.key for r in again.train] == [r.key for r in full.train if r.key != dropped.key] + [rest[0]]
    dropped = full.test[0]
    again = select_gesture([r for r in records if r.key != dropped.key], 5, 5, seed=0)
    assert [r.key for r in again.test] == [r.key for r in full.test[1:]] + [full.train[0].key]


def test_short_gesture_is_split_evenly_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        s = select_gesture(_records(7), 1000, 1000)
    assert s.short and len(s.train) + len(s.test) == 7 and abs(len(s.train) - len(s.test)) == 1
    assert "has 7 images, fewer than the 2000 requested" in caplog.text
    assert split_targets(30, 100, 50) == (20, 10)
    assert split_targets(300, 100, 50) == (100, 50)


def test_subject_disjoint_selection():
    records = _records(120, users=12)  # 10 images per subject
    s = select_gesture(records, 30, 30, seed=1, subject_disjoint=True)
    train_users = {r.user_id for r in s.train}
    test_users = {r.user_id for r in s.test}
    assert not train_users & test_users
    assert len(s.train) == 30 and len(s.test) == 30
    assert select_gesture(records, 30, 30, seed=1, subject_disjoint=True).train == s.train
    # without the option, with these sizes the subjects do mix (so the test above means something)
    plain = select_gesture(records, 30, 30, seed=1)
    assert {r.user_id for r in plain.train} & {r.user_id for r in plain.test}
    # short: everything is used that can be, still disjoint
    short = select_gesture(records, 100, 100, seed=1, subject_disjoint=True)
    assert not {r.user_id for r in short.train} & {r.user_id for r in short.test}
    assert len(short.train) + len(short.test) == 120


def test_select_verified_replaces_unreadable_images(tmp_path, hagrid_mini):
    photo = next((hagrid_mini / "images" / "call").glob("*.jpg"))
    records = []
    for i in range(8):
        path = tmp_path / f"k{i}.jpg"
        shutil.copy(photo, path)
        records.append(HagridRecord(f"k{i}", path, "call", (0.2, 0.2, 0.5, 0.5)))
    first = select_gesture(records, 2, 2)
    victim = first.train[0]
    victim.image_path.write_bytes(b"\xff\xd8 broken jpeg")
    corrupt = {}
    s = select_verified(records, 2, 2, corrupt=corrupt)
    assert list(corrupt) == [victim.key] and victim.image_path == corrupt[victim.key][1]
    assert s.test == first.test and len(s.train) == 2 and victim.key not in {r.key for r in s.train}
    assert s.train[0] == first.train[1]


# ---------------------------------------------------------------- cropping


def test_center_plan_matches_torchvision_resize_and_centercrop():
    # Resize(512): shorter side to 512, the long side truncated; CenterCrop offsets rounded.
    assert plan_crop(1920, 1080, 512, None) == CropPlan((910, 512), 199, 0, 512, False, False)
    assert plan_crop(1080, 1920, 512, None) == CropPlan((512, 910), 0, 199, 512, False, False)
    assert plan_crop(641, 480, 512, None) == CropPlan((683, 512), 86, 0, 512, False, False)
    assert plan_crop(300, 300, 64, None) == CropPlan((64, 64), 0, 0, 64, False, False)
    # a box at the left edge of a landscape photo: the centre crop cuts it
    assert plan_crop(1920, 1080, 512, (0.02, 0.3, 0.1, 0.2)).center_cuts_box
    assert not plan_crop(1920, 1080, 512, (0.4, 0.3, 0.1, 0.2)).center_cuts_box


def test_apply_crop_equals_pil_resize_then_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8))
    plan = plan_crop(160, 90, 48, None)
    assert plan.resized == (85, 48) and plan.left == 18
    expected = np.asarray(image.resize((85, 48), Image.BILINEAR).crop((18, 0, 66, 48))).astype(int)
    got = np.asarray(apply_crop(image, plan, 48)).astype(int)
    assert np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01  # PIL's rounding only
    # hand mode on a box left of the centre: the window moves to hold it, same pixels otherwise
    plan = plan_crop(160, 90, 48, (0.02, 0.3, 0.1, 0.2), "hand")
    assert plan.left == 1 and plan.center_cuts_box and not plan.padded
    expected = np.asarray(image.resize((85, 48), Image.BILINEAR).crop((1, 0, 49, 48))).astype(int)
    got = np.asarray(apply_crop(image, plan, 48)).astype(int)
    assert np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01


@pytest.mark.parametrize("mode", ["center", "hand"])
@pytest.mark.parametrize(
    ("width", "height", "px", "py"),
    [(400, 240, 0.93, 0.5), (240, 400, 0.3, 0.08), (300, 300, 0.5, 0.5), (500, 200, 0.07, 0.9)],
)
def test_transformed_points_follow_the_pixels(mode, width, height, px, py):
    """A bright dot drawn at a landmark lands where transform_points says, independent of the crop."""
    image = np.zeros((height, width, 3), np.uint8)
    cx, cy = int(px * width), int(py * height)
    image[cy - 2 : cy + 3, cx - 2 : cx + 3] = 255
    box = (max(px - 0.05, 0), max(py - 0.05, 0), 0.1 - max(px + 0.05 - 1, 0), 0.1)
    plan = plan_crop(width, height, 64, box, mode)
    out = np.asarray(apply_crop(Image.fromarray(image), plan, 64)).astype(float).sum(2)
    expected = transform_points(np.array([[(cx + 0.5) / width, (cy + 0.5) / height]]), plan)[0] * 64
    if mode == "center" and plan.center_cuts_box:
        return  # the dot may be cut off: that is the point of hand mode
    ys, xs = np.nonzero(out > out.max() * 0.5)
    np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], expected, atol=1.0)


def _embed(photo: Path, record: HagridRecord, canvas: tuple[int, int], at: tuple[int, int], dest: Path):
    """Paste a real photo into a bigger grey canvas; returns its annotation in canvas coordinates."""
    image = Image.open(photo).convert("RGB")
    big = Image.new("RGB", canvas, (90, 90, 90))
    big.paste(image, at)
    big.save(dest, quality=95)
    w, h = image.size
    sx, sy = w / canvas[0], h / canvas[1]
    ox, oy = at[0] / canvas[0], at[1] / canvas[1]
    box = record.gesture_box
    return [ox + box[0] * sx, oy + box[1] * sy, box[2] * sx, box[3] * sy]


def test_hand_crop_keeps_every_real_box_inside(hagrid_mini, tmp_path):
    """Each real photo at the edge of a 16:9 or 9:16 frame: centre crops cut hands, hand crops never."""
    records = read_hagrid(
        hagrid_mini, sorted(p.stem for p in (hagrid_mini / "annotations" / "test").iterdir())
    )
    assert len(records.records) == 33
    cuts = padded = 0
    for i, record in enumerate(records.records):
        w, h = Image.open(record.image_path).size
        canvas = (w * 16 // 9 + 40, h) if i % 2 == 0 else (w, h * 16 // 9 + 40)
        at = (0, 0) if i % 4 < 2 else (canvas[0] - w, canvas[1] - h)
        box = _embed(record.image_path, record, canvas, at, tmp_path / "x.jpg")
        for mode in ("center", "hand", "original"):
            if mode == "original":  # the unembedded photo (nearly square): nothing to cut
                plan = plan_crop(w, h, 128, record.gesture_box, "hand")
                tbox = transform_box(record.gesture_box, plan)
                raw = transform_points(np.array([record.gesture_box[:2]]), plan)
            else:
                plan = plan_crop(canvas[0], canvas[1], 128, box, mode)
                tbox = transform_box(box, plan)
                raw = transform_points(np.array([box[:2]]), plan)
            if mode == "center":
                cuts += plan.center_cuts_box
                continue
            # padded only when the box is longer than the (resized) shorter side: no square inside holds it
            b = record.gesture_box if mode == "original" else box
            assert plan.padded == (max(b[2] * plan.resized[0], b[3] * plan.resized[1]) > 128 + 1e-6)
            padded += plan.padded
            assert tbox is not None
            # inside (within half a pixel) and not clipped: the whole box survived
            assert tbox[0] >= -0.5 / 128 and tbox[1] >= -0.5 / 128
            assert tbox[0] + tbox[2] <= 1 + 0.5 / 128 and tbox[1] + tbox[3] <= 1 + 0.5 / 128
            np.testing.assert_allclose(tbox[:2], np.clip(raw[0], 0, 1), atol=1e-9)
        # the landmarks too, after the hand crop
        plan = plan_crop(canvas[0], canvas[1], 128, box, "hand")
        lm = record.landmarks * [w / canvas[0], h / canvas[1]] + [at[0] / canvas[0], at[1] / canvas[1]]
        assert np.all(transform_points(lm, plan) >= -0.01) and np.all(transform_points(lm, plan) <= 1.01)
    assert cuts == 33  # every hand sits near the frame edge: the reference crop cuts them all
    assert padded == 1  # thumb_index2: its box spans the whole photo width


def test_hand_crop_pads_when_the_box_is_longer_than_the_short_side():
    # portrait 100 x 400 with a box 90% of the height: no 100 px square holds it
    plan = plan_crop(100, 400, 64, (0.1, 0.05, 0.8, 0.9), "hand")
    assert plan.padded and plan.resized == (64, 256) and plan.side == 231
    box = transform_box((0.1, 0.05, 0.8, 0.9), plan)
    assert box is not None and box[1] >= 0 and box[1] + box[3] <= 1
    image = Image.new("RGB", (100, 400), (255, 255, 255))
    out = np.asarray(apply_crop(image, plan, 64))
    assert out.shape == (64, 64, 3)
    assert out[:, :5].max() == 0 and out[32, 32].min() == 255  # black past the image's sides


def test_transform_box_clips_and_drops():
    plan = CropPlan((200, 100), 50, 0, 100, False, False)
    assert transform_box((0.0, 0.1, 0.5, 0.2), plan) == pytest.approx([0.0, 0.1, 0.5, 0.2])
    assert transform_box((0.0, 0.1, 0.2, 0.2), plan) is None  # entirely left of the crop
    pts = transform_points(np.array([[0.25, 0.5, 0.1]]), plan)
    np.testing.assert_allclose(pts, [[0.0, 0.5, 0.2]])  # z scales with x


# ---------------------------------------------------------------- build


def _config(source: Path, out: Path, **data) -> Config:
    config = Config()
    config.run.output_dir = str(out)
    config.data.source = str(source)
    for key, value in data.items():
        config.set(f"data.{key}", value)
    return config


def test_build_on_synthetic_with_metadata_captions(tmp_path, monkeypatch):
    pytest.importorskip("handsynth.data.captioning")
    from handsynth.data.dataset import build_dataset
    from handsynth.data.synthetic import write_synthetic_hagrid

    source = write_synthetic_hagrid(tmp_path / "syn", ["call", "palm"], per_gesture=7, size=48, seed=0)
    config = _config(source, tmp_path / "run", gestures=["call", "palm"], n_train=3, n_test=3,
                     image_size=32, captioner="metadata", rewrite="deterministic", crop="hand")  # fmt: skip
    report = build_dataset(config, tmp_path / "ds")
    ds = tmp_path / "ds"
    assert report["totals"] == {"train": 6, "test": 6}
    assert report["rewrites"]["deterministic"] == 12
    train = files.read_jsonl(ds / "train.jsonl")
    annotations = json.loads((source / "annotations" / "train" / "call.json").read_text())
    for row in train:
        assert set(row) >= {"key", "image", "gesture", "split", "caption_raw", "caption", "captioner", "bbox",
                            "landmarks", "user_id"}  # fmt: skip
        assert Image.open(ds / row["image"]).size == (32, 32)
        assert row["image"] == f"images/train/{row['gesture']}/{row['key']}.jpg"
        if row["gesture"] == "call":
            assert row["caption_raw"] == annotations[row["key"]]["caption"]
            assert "making phone call hand gesture" in row["caption"]
        assert np.asarray(row["landmarks"]).shape == (21, 2)
    names = (ds / "reference" / "call_metadata_file_name.txt").read_text().splitlines()
    modified = (ds / "reference" / "call_metadata_modified.txt").read_text().splitlines()
    assert names == sorted(names) and len(names) == len(modified) == 3
    assert (ds / "reference" / "test" / "palm_metadata_modified.txt").is_file()

    # prepared images are reused, so a different crop must not silently mix into this folder
    config.data.crop = "center"
    with pytest.raises(HandsynthError, match="was prepared with .*'crop': 'hand'"):
        build_dataset(config, ds)
    # a re-run trusts the images it prepared: their sources are not decoded again
    config.data.crop = "hand"
    decoded = []
    monkeypatch.setattr(dataset, "check_image", lambda path: decoded.append(path) or check_image(path))
    config.data.n_train = 4  # one more per gesture: only those two are checked
    report = build_dataset(config, ds)
    assert report["totals"] == {"train": 8, "test": 6} and len(decoded) == 2


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from handsynth.tiny.captioners import write_tiny_vitgpt2
    from handsynth.tiny.clip import write_tiny_clip
    from handsynth.tiny.llm import write_tiny_llm

    root = tmp_path_factory.mktemp("tiny")
    return {
        "vitgpt2": write_tiny_vitgpt2(root / "vitgpt2"),
        "llm": write_tiny_llm(root / "llm"),
        "clip": write_tiny_clip(root / "clip"),
    }


@pytest.mark.slow
def test_data_build_cli_on_hagrid_mini(hagrid_mini, tiny_models, tmp_path, capsys):
    """End to end on real photos: tiny ViT-GPT2 captions, tiny LLM rewrites (all rejected and counted),
    hand crop; then a re-run does no new work, and `data evaluate` scores it."""
    from handsynth.cli import main

    gestures = ["call", "four", "hand_heart", "like", "mute", "ok", "palm", "thumb_index2"]
    ds = tmp_path / "ds"
    argv = ["data", "build", "--source", str(hagrid_mini), "--gestures", ",".join(gestures),
            "--n-train", "1", "--n-test", "1", "--image-size", "64", "--crop", "hand",
            "--captioner", "vitgpt2", "--captioner-model", str(tiny_models["vitgpt2"]),
            "--rewrite", "llm", "--rewrite-model", str(tiny_models["llm"]),
            "--set", "data.rewrite_batch_size=5", "--set", "run.device='cpu'",
            "--output-dir", str(tmp_path / "run"), "--dataset-dir", str(ds)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((ds / "report.json").read_text())
    assert report["totals"] == {"train": 8, "test": 0}  # one photo per gesture: it goes to train
    assert all(c["short"] and c["train"] == 1 for c in report["counts"].values())
    assert report["missing"]["count"] == 0 and report["corrupt"]["count"] == 0
    assert report["rewrites"]["llm_fallback"] == 8 and report["rewrites"]["llm_ok"] == 0
    assert report["center_cut"]["count"] == 0 and report["padded"] == 0  # near-square photos
    rows = files.read_jsonl(ds / "train.jsonl")
    assert files.read_jsonl(ds / "test.jsonl") == []
    index = {r.key: r for r in read_hagrid(hagrid_mini, gestures).records}
    for row in rows:
        record = index[row["key"]]
        assert row["gesture"] == record.gesture and row["captioner"] == "vitgpt2"
        assert Image.open(ds / row["image"]).size == (64, 64)
        assert row["caption_raw"] and row["caption"].startswith(row["caption_raw"].rstrip(" ."))
        assert gesture_phrase(record.gesture, pronoun_for(row["caption_raw"])) in row["caption"]
        # a 296 x 296 photo maps straight onto the 64 px square: coordinates are unchanged
        w, h = Image.open(record.image_path).size
        if w == h:
            np.testing.assert_allclose(row["bbox"], record.bbox, atol=1e-9)
            np.testing.assert_allclose(row["landmarks"], record.landmarks, atol=1e-6)
    for gesture in gestures:
        names = (ds / "reference" / f"{gesture}_VitGpt2_file_name.txt").read_text().splitlines()
        modified = (ds / "reference" / f"{gesture}_VitGpt2_modified.txt").read_text().splitlines()
        (row,) = [r for r in rows if r["gesture"] == gesture]
        assert names == [f"{row['key']}.jpg"] and modified == [row["caption"]]
        assert (ds / "images" / "train" / gesture / names[0]).is_file()
    assert (ds / "config.toml").is_file()

    # a re-run: nothing is prepared, captioned or rewritten again
    captions_before = (ds / "captions" / "vitgpt2.jsonl").read_text()
    rewrites_before = (ds / "captions" / "rewritten-llm.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (ds / "images").rglob("*.jpg")}
    assert main(argv) == 0
    assert (ds / "captions" / "vitgpt2.jsonl").read_text() == captions_before
    assert (ds / "captions" / "rewritten-llm.jsonl").read_text() == rewrites_before
    assert {p: p.stat().st_mtime_ns for p in (ds / "images").rglob("*.jpg")} == mtimes
    assert files.read_jsonl(ds / "train.jsonl") == rows

    capsys.readouterr()
    argv = [
        "data",
        "evaluate",
        "--dataset-dir",
        str(ds),
        "--clip-model",
        str(tiny_models["clip"]),
        "--set",
        "run.device='cpu'",
    ]  # fmt: skip  (all splits: the empty test split is skipped)
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "train/all" in table and "train/call" in table and "train/thumb_index2" in table
    quality = json.loads((ds / "quality-caption.json").read_text())
    assert quality["train/all"]["n_pairs"] == 8 and quality["train/call"]["n_pairs"] == 1
    assert -1 <= quality["train/all"]["image_caption"] <= 1


def test_data_build_errors(tmp_path, hagrid_mini, capsys):
    from handsynth.cli import main

    assert main(["data", "build", "--source", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)]) == 2
    assert main(["data", "build", "--gestures", "call,wave", "--output-dir", str(tmp_path)]) == 2
    assert main(["data", "build", "--captioner", "gpt4v", "--output-dir", str(tmp_path)]) == 2
    assert "valid captioners are: blip2, paligemma, vitgpt2, llava" in capsys.readouterr().err
    assert (
        main(["data", "evaluate", "--dataset-dir", str(tmp_path / "none"), "--clip-model", str(tmp_path)])
        == 2
    )
    argv = [
        "data",
        "build",
        "--source",
        str(hagrid_mini),
        "--captioner",
        "metadata",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "needs captions in the annotations" in capsys.readouterr().err
    assert not (tmp_path / "dataset" / "images").exists()  # refused before any work
