"""The `doppel-torch` console script (and `python -m doppel_torch`). Ctrl-C or SIGTERM where a command has no
handling of its own (its imports, `eval`, `delta-profile`, `info`, `sample`) prints one line and exits 130 / 143,
128 + the signal, as `train` and `match` do, instead of click's "Aborted!" with status 1 or a silent kill."""

from __future__ import annotations

import signal
import sys

_received: list[int] = []


def _terminate(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _interrupted(when: str) -> None:
    signum = _received[0] if _received else signal.SIGINT
    sys.stderr.write(f"\ninterrupted by {signal.Signals(signum).name} {when}\n")
    sys.exit(128 + signum)


def main() -> None:
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # one started with SIGTERM ignored keeps it ignored
        signal.signal(signal.SIGTERM, _terminate)
    try:
        import click

        from doppel_torch.cli import main as command
    except KeyboardInterrupt:
        _interrupted("while starting: nothing was done")
    try:
        code = command.main(prog_name="doppel-torch", standalone_mode=False)
    except click.exceptions.Abort as err:  # click's form of a KeyboardInterrupt (or an EOF at a prompt)
        if isinstance(err.__cause__, KeyboardInterrupt):
            _interrupted("before the command finished")
        sys.stderr.write("Aborted!\n")
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # one after click's own handling (while it closes the context)
        _interrupted("before the command finished")
    sys.exit(code if isinstance(code, int) else 0)
