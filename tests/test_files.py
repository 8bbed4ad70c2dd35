import os
import stat

import numpy as np
import pytest

from handsynth import files


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
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}]


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
