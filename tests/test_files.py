import os
import stat

import numpy as np
import pytest
from PIL import Image

from handsynth import files
from handsynth.errors import HandsynthError


def test_atomic_write_leaves_no_trace_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise KeyboardInterrupt
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_normal_permissions(tmp_path):
    files.write_npy(tmp_path / "mean.npy", np.zeros(3))
    with files.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "x").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "mean.npy").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask


def test_jsonl_append_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    files.append_jsonl(path, {"step": 1})
    files.append_jsonl(path, {"step": 2})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a kill mid-write
    assert files.read_jsonl(path, torn_end_ok=True) == [{"step": 1}, {"step": 2}]
    with pytest.raises(HandsynthError, match=r"log.jsonl line 3 is not valid JSON"):
        files.read_jsonl(path)  # a user's file: its cut last line is named, not dropped


def test_a_bad_middle_line_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "hands.jsonl"
    path.write_text('{"key": "a"}\n\n{"key": "b", oops}\n{"key": "c"}\n{"key": "d"}')
    for read in (files.read_jsonl, files.read_jsonl_repairing):
        with pytest.raises(HandsynthError, match=r"hands.jsonl line 3 is not valid JSON .*fix or delete"):
            read(path)
    with pytest.raises(HandsynthError, match=r"line 3 is not valid JSON"):
        files.read_jsonl(path, torn_end_ok=True)
    path.write_text('{"key": "a"}\n[1, 2]\n')
    with pytest.raises(HandsynthError, match=r"line 2 is a JSON list, not an object"):
        files.read_jsonl(path)
    path.write_text('{"key": "a"}\n{"key": "b", "x": 1\n')  # a bad last line that did get its newline
    with pytest.raises(HandsynthError, match=r"line 2 is not valid JSON"):
        files.read_jsonl_repairing(path)
    path.write_text('{"key": "a"}\n\n{"key": "b"}')  # blank lines and a last line without newline are fine
    assert files.read_jsonl(path) == [{"key": "a"}, {"key": "b"}]


def test_a_resumed_generation_cuts_a_torn_records_line_before_appending(tmp_path):
    plan = [{"index": i, "seed": i} for i in range(3)]
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(b"x")
    files.append_jsonl(tmp_path / "records.jsonl", {"index": 0, "seed": 0, "file": "0.png"})
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"index": 1, "se')  # killed mid-append
    assert list(files.finished_records(tmp_path, plan, ["seed"])) == [0]
    files.append_jsonl(tmp_path / "records.jsonl", {"index": 1, "seed": 1, "file": "1.png"})
    assert list(files.finished_records(tmp_path, plan, ["seed"])) == [0, 1]


def test_a_torn_last_line_is_cut_so_the_next_append_starts_its_own_line(tmp_path):
    path = tmp_path / "log.jsonl"
    files.append_jsonl(path, {"step": 1})
    with open(path, "a") as f:
        f.write('{"step": 2, "lo')  # a kill mid-write
    assert files.read_jsonl_repairing(path) == [{"step": 1}]
    files.append_jsonl(path, {"step": 3})
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 3}]
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"step": 4}')  # the record written, its newline not
    assert files.read_jsonl_repairing(path) == [{"step": 1}, {"step": 3}, {"step": 4}]
    assert path.read_bytes() == whole + b'{"step": 4}\n'
    assert files.read_jsonl_repairing(path) == [{"step": 1}, {"step": 3}, {"step": 4}]  # intact: unchanged


@pytest.mark.parametrize("mode, full", [("I;16", 65535), ("I", 2**31 - 1), ("F", 1.0)])
def test_high_bit_depth_images_are_scaled_to_8_bits_not_clipped(tmp_path, mode, full):
    ramp = np.linspace(0, 1, 256).reshape(16, 16)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray((ramp * full).astype(dtype))
    path = tmp_path / ("deep.png" if mode == "I;16" else "deep.tif")
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
    rgb = files.load_rgb(path)
    expected = np.round(ramp * 255).astype(np.uint8)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1  # convert("RGB") gives 255 nearly everywhere
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.mean() == pytest.approx(127.5, abs=0.6)
    with Image.open(path) as reopened:
        assert np.abs(np.asarray(files.to_gray(reopened)).astype(int) - expected).max() <= 1


def hold_lock(folder):
    """A separate process that takes the output lock on `folder` and waits; returns it once it holds it."""
    import subprocess
    import sys

    code = (
        "import sys, time; from handsynth import files\n"
        "with files.output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_of_an_output_folder_is_refused_with_the_first_ones_process(tmp_path):
    import signal

    holder = hold_lock(tmp_path / "samples")
    try:
        with pytest.raises(HandsynthError) as caught:
            with files.output_lock(tmp_path / "samples"):
                pass
        assert str(caught.value).startswith(
            f"{tmp_path / 'samples'} is being written by process {holder.pid} (`"
        )
        assert str(caught.value).endswith("`); wait for it to finish, or choose another output folder")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "samples" / ".lock").is_file()  # left by the killed process
    with files.output_lock(tmp_path / "samples") as lock:  # taken over: the kernel dropped the dead one's
        assert lock.read_text().startswith(f"process {os.getpid()} ")
    assert not (tmp_path / "samples" / ".lock").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(HandsynthError, match="a-file is a file, not a folder; choose another output folder"):
        with files.output_lock(tmp_path / "a-file" / "samples"):
            pass
