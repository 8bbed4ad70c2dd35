"""Progress bars that suit where they are written: tqdm's bar on a terminal; off one (CI, a cluster's log
file, output piped to a file) a plain line at most every 10 % of the work or every 30 s, and one at the
end, instead of a `\\r`-redrawn bar per step that fills a log with megabytes of bars."""

from __future__ import annotations

import io
import sys
import time
from typing import Any

from tqdm import tqdm

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_SECONDS = 30.0


class LogLines(tqdm):
    """tqdm that writes whole lines, only when the work has moved on by a tenth of its total or 30 s
    have passed since the last line, and at the end. Everything else (update, set_postfix, iteration,
    `with`) is tqdm's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._line_n: float | None = None  # the count at the last line written; None: none yet
        self._line_time = time.monotonic()
        self._closing = False
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        if self._line_n is not None:
            moved = self.n - self._line_n
            tenth = bool(self.total) and moved >= self.total * LINE_EVERY_FRACTION
            late = moved > 0 and now - self._line_time >= LINE_EVERY_SECONDS
            final = self._closing and moved > 0
            if not (tenth or late or final):
                return True
        self._line_n, self._line_time = self.n, now
        self.fp.write(self.__str__().strip() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if self.disable:
            return super().close()
        self._closing = True
        self.display()
        # tqdm's close redraws the bar and ends it with "\n" or "\r": the last line is already written
        stream, self.fp = self.fp, io.StringIO()
        try:
            super().close()
        finally:
            self.fp = stream


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal, `LogLines` elsewhere; the stream is tqdm's `file`
    (standard error unless given)."""
    stream = kwargs.get("file") or sys.stderr
    bar = tqdm if _is_terminal(stream) else LogLines
    return bar(iterable, **kwargs)
