"""Progress bars in a terminal that reports no size (a 0 x 0 pseudo-terminal): tqdm alone draws nothing there."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

SCRIPT = """
from {module} import {name} as bar
b = bar(total=5, desc="steps", unit="step", dynamic_ncols=True)
for _ in range(5):
    b.update(1)
b.close()
"""
OURS, TQDM = ("doppel_torch.progress", "progress_bar"), ("tqdm.auto", "tqdm")


def _run_in_pty(rows: int, columns: int, bar: tuple[str, str]) -> str:
    """Run SCRIPT with `bar` (module, name) in a pseudo-terminal of the given size; everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    code = SCRIPT.format(module=bar[0], name=bar[1])
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=follower, stdout=follower, stderr=follower,
                            close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@pytest.mark.parametrize("rows, columns", [(0, 0), (0, 80), (24, 0), (24, 80)])
def test_progress_bar_is_drawn_whatever_size_the_terminal_reports(rows, columns):
    out = _run_in_pty(rows, columns, OURS)
    assert "steps: 100%" in out and "5/5" in out, repr(out)


def test_tqdm_alone_draws_nothing_in_a_zero_size_terminal():
    """The case progress_bar exists for: if tqdm starts drawing here, the workaround can go."""
    out = _run_in_pty(0, 0, TQDM)
    assert "5/5" not in out, repr(out)
