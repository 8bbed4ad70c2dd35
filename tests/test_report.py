"""The run's report page, on a hand-made run folder."""

from __future__ import annotations

import re

from PIL import Image

from handsynth import files
from handsynth.report import write_run_report


def test_the_two_stage_data_section_follows_pose_output_dir_outside_the_run(tmp_path):
    run, data = tmp_path / "run", tmp_path / "shared-data"
    files.write_text(run / "config.toml", f'[run]\nmethods = ["twostage"]\n\n[pose]\noutput_dir = "{data}"\n')
    files.write_json(data / "report.json", {"counts": {"selected": 7, "done": 6}})
    Image.new("RGB", (4, 4)).save(data / "contact_sheet.png")
    page = write_run_report(run, [])
    text = page.read_text()
    assert "<td>selected</td>" in text and ">7<" in text
    (src,) = re.findall(r'<img src="([^"]+)" alt="two-stage data contact sheet"', text)
    assert (page.parent / src).resolve() == (data / "contact_sheet.png").resolve()


def test_the_two_stage_metrics_count_the_images_left_out_of_the_fg_sets(tmp_path):
    run = tmp_path / "run"
    files.write_text(run / "config.toml", '[run]\nmethods = ["twostage"]\n')
    report = {
        "metrics": {"fid_fg": {"value": 12.5, "feature_dim": 192}},
        "settings": {"feature_dims": [192]},
        "fg_left_out": {"real": 15, "generated": 3},
    }
    files.write_json(run / "twostage" / "eval" / "report.json", report)
    text = write_run_report(run, []).read_text()
    assert "15 real, 3 generated image(s) without one left out" in text


def test_the_two_stage_section_counts_the_skipped_poses(tmp_path):
    run = tmp_path / "run"
    files.write_text(run / "config.toml", '[run]\nmethods = ["twostage"]\n')
    reason = "the pose lies entirely off the 64x64 image"
    rows = [{"key": "far", "skipped": reason}, {"key": "handless", "skipped": "no hand to draw"}]
    files.write_jsonl(run / "twostage" / "samples" / "records.jsonl", rows)
    text = write_run_report(run, []).read_text()
    assert f"2 of 2 poses skipped: they cannot be drawn (first: far, {reason})" in text
