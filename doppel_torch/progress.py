"""Progress bars: tqdm (rate and ETA), sized for a terminal that reports no size.

A pseudo-terminal of size 0 x 0 (`docker exec -t` before its first resize, some CI runners and `script` sessions)
makes tqdm hide every bar: it reads the height as 0 rows, so even the first bar lies below the screen. There the bars
are drawn 80 columns wide, as for a pipe.
"""

from __future__ import annotations

import os
import sys


NON_TERMINAL_INTERVAL = 10.0  # seconds between a bar's updates where stderr is no terminal (found from outside: a
# train run's log file held an update every 0.1 s)


def progress_bar(**kwargs):
    """tqdm.auto.tqdm(**kwargs), with ncols / nrows given where the terminal on stderr reports a zero size."""
    from tqdm.auto import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal, or stderr replaced (pytest's capture)
        size = None
    if size is not None and (size.columns == 0 or size.lines == 0):
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ncols", size.columns or 80)
        kwargs.setdefault("nrows", size.lines or 20)
    if size is None:  # a log file or a pipe: an update every NON_TERMINAL_INTERVAL s, not ten a second
        kwargs.setdefault("mininterval", NON_TERMINAL_INTERVAL)
    if sys.stderr is None:  # started with stderr closed (2>&-)
        kwargs["disable"] = True
    else:
        kwargs.setdefault("file", _Quietable(sys.stderr))
    return tqdm(**kwargs)


class _Quietable:
    """A bar's stream that goes quiet when its reader ends (`2>&1 | head`), instead of raising BrokenPipeError
    into the work it shows."""

    def __init__(self, stream):
        self._stream, self._closed = stream, False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):
                self._closed = True
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._closed = True

    def __getattr__(self, name):
        return getattr(self._stream, name)
