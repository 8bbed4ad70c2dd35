"""Progress off a terminal: plain lines at most every 10 % or 30 s, never tqdm's redrawn bar."""

from __future__ import annotations

import io
import re
from pathlib import Path

from tqdm import tqdm

from handsynth import progress
from handsynth.progress import LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_every_tenth_and_one_at_the_end():
    log = io.StringIO()
    with progress_bar(total=100, desc="poses", file=log, mininterval=0) as bar:
        assert isinstance(bar, LogLines)
        for step in range(100):
            bar.update()
            bar.set_postfix(loss=step)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    done = [int(re.search(r"\| *(\d+)/100", line).group(1)) for line in lines]
    assert done == list(range(0, 101, 10)) and lines[-1].startswith("poses: 100%")


def test_off_a_terminal_without_a_total_a_line_every_30_seconds(monkeypatch):
    clock = iter(range(0, 10_000))  # one second per call
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    for _ in progress_bar(iter(range(100)), file=log, mininterval=0, miniters=1):
        pass
    lines = log.getvalue().splitlines()
    assert 3 <= len(lines) <= 6 and "\r" not in log.getvalue()  # 100 steps of about 1 s each, and the end
    assert lines[-1].startswith("100it")


def test_on_a_terminal_it_is_tqdm_and_every_module_uses_the_helper():
    terminal = Terminal()
    bar = progress_bar(total=3, file=terminal)
    assert type(bar) is tqdm
    bar.close()
    assert "\r" in terminal.getvalue()
    src = Path(progress.__file__).parent
    importers = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if path.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", path.read_text(), re.M)
    ]
    assert importers == []
