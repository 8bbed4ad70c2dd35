"""`handsynth compare`'s parts that need no run: the tiny T2I-Adapter, the resumable image loop every
generator shares, the published values and the tables' layout. The whole comparison on the demo's
outputs is in test_demo.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from handsynth import compare, files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.sharing import make_images


def test_the_tiny_t2i_adapter_steers_the_tiny_sd(tmp_path):
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    from handsynth.tiny.adapter import write_tiny_t2i_adapter
    from handsynth.tiny.sd import write_tiny_sd

    adapter = T2IAdapter.from_pretrained(write_tiny_t2i_adapter(tmp_path / "adapter"))
    pipe = StableDiffusionAdapterPipeline.from_pretrained(
        write_tiny_sd(tmp_path / "sd"), adapter=adapter, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    poses = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]

    def draw(pose: Image.Image, scale: float = 1.0) -> np.ndarray:
        generator = torch.Generator().manual_seed(3)
        image = pipe("a person", image=pose, height=64, width=64, num_inference_steps=2, generator=generator,
                     adapter_conditioning_scale=scale, output_type="np").images[0]  # fmt: skip
        return image

    first = draw(poses[0])
    assert first.shape == (64, 64, 3)
    assert np.abs(first - draw(poses[1])).mean() > 1e-3  # the condition image reaches the UNet
    np.testing.assert_array_equal(draw(poses[0], 0.0), draw(poses[1], 0.0))  # and only through the adapter


def plan(n: int) -> list[dict]:
    return [{"index": i, "file": f"images/{i:06d}.png", "seed": 10 + i, "prompt": f"p{i}"} for i in range(n)]


def seeded_image(record: dict) -> Image.Image:
    value = np.random.default_rng(record["seed"]).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(value)


def test_an_interrupted_image_loop_resumes_with_what_it_had_not_made(tmp_path):
    drawn = []

    def draw(batch, device):
        drawn.append([r["index"] for r in batch])
        if len(drawn) == 2:
            raise KeyboardInterrupt
        return [seeded_image(r) for r in batch]

    keys = ("prompt", "seed")
    with pytest.raises(KeyboardInterrupt):
        make_images(tmp_path / "cut", plan(5), draw, keys, batch_size=2, progress=False)
    assert [r["index"] for r in files.read_jsonl(tmp_path / "cut" / "records.jsonl")] == [0, 1]
    records = make_images(tmp_path / "cut", plan(5), draw, keys, batch_size=2, progress=False)
    assert drawn == [[0, 1], [2, 3], [2, 3], [4]]  # the second run draws only what the first had not
    whole = make_images(tmp_path / "whole", plan(5), lambda b, device: [seeded_image(r) for r in b], keys,
                              batch_size=3, progress=False)  # fmt: skip
    assert records == whole
    for record in whole:  # each image from its own seed, whatever its batch
        assert (tmp_path / "cut" / record["file"]).read_bytes() == (
            tmp_path / "whole" / record["file"]
        ).read_bytes()
    other = [{**r, "seed": 0} for r in plan(5)]
    with pytest.raises(HandsynthError, match="made with other settings"):
        make_images(tmp_path / "cut", other, draw, keys, progress=False)


def test_the_published_values_name_their_source_and_carry_spec_numbers():
    values = compare.published()
    assert "seed 004" in values["twostage"]["source"] and "SPEC.md" in values["twostage"]["source"]
    assert values["twostage"]["rows"]["twostage"]["dap"] == 0.76
    assert values["twostage"]["rows"]["controlnet"]["fid_fg"] == 2.34
    assert values["hand1000"]["difference"]["fid"] == -28.599 and "Table 2" in values["hand1000"]["source"]


def test_a_table_gives_a_paper_column_only_to_metrics_the_paper_publishes():
    table = {
        "columns": {"dap": "DAP ↑", "kid_fg": "KID fg ↓"},
        "rows": [
            {"row": "sd", "values": {"dap": 0.1, "kid_fg": 0.02}, "paper": {}},
            {"row": "twostage", "values": {"dap": 0.3, "kid_fg": None}, "paper": {"dap": 0.76}},
        ],
    }
    headers, rows = compare.table_cells(table)
    assert headers == ["row", "DAP ↑", "DAP ↑ paper", "KID fg ↓"]
    assert rows == [["sd", 0.1, "", 0.02], ["twostage", 0.3, 0.76, None]]


def test_compare_settings_are_checked_naming_the_key():
    config = Config()
    config.compare.baselines = ["sd", "humansd"]
    with pytest.raises(HandsynthError, match=r"compare.baselines: unknown \['humansd'\]"):
        compare.check_compare_settings(config)
    config.compare.baselines, config.compare.batch_size = ["sd"], 0
    with pytest.raises(HandsynthError, match="compare.batch_size must be at least 1"):
        compare.check_compare_settings(config)
    config.compare.baselines = ["base", "t2i_adapter", "sd"]
    assert compare.baselines_of(config, "twostage") == ["sd", "t2i_adapter"]
    assert compare.baselines_of(config, "hand1000") == ["base"]


def test_a_row_made_from_other_prompts_or_seeds_is_refused(tmp_path):
    method, row = tmp_path / "method", tmp_path / "row"
    files.write_jsonl(method / "records.jsonl", [{"key": "a", "prompt": "x", "seed": 1}])
    files.write_jsonl(row / "records.jsonl", [{"key": "a", "prompt": "x", "seed": 2}])
    with pytest.raises(HandsynthError, match="does not hold the prompts and seeds"):
        compare.check_aligned(method, row, ("key", "prompt", "seed"))


def test_compare_before_the_method_made_its_images_says_which_command_makes_them(tmp_path, capsys):
    from handsynth.cli import main

    out = str(tmp_path / "run")
    assert main(["compare", "--output-dir", out, "--methods", "twostage"]) == 2
    assert "run `handsynth twostage generate` first" in capsys.readouterr().err
    assert main(["compare", "--output-dir", out, "--methods", "hand1000", "--baselines", "base"]) == 2
    assert "run `handsynth generate` first" in capsys.readouterr().err
    assert main(["compare", "--output-dir", out, "--baselines", "handrefiner"]) == 2
    assert "compare.baselines: unknown ['handrefiner']" in capsys.readouterr().err
