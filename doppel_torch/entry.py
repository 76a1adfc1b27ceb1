"""The `doppel-torch` console script (and `python -m doppel_torch`). Ctrl-C or SIGTERM where a command has no
handling of its own (its imports, `eval`, `delta-profile`, `info`, `sample`) prints one line and exits 130 / 143,
128 + the signal, as `train` and `match` do, instead of click's "Aborted!" with status 1 or a silent kill."""

from __future__ import annotations

import os
import signal
import sys

_received: list[int] = []


def _openmp_defaults(environ=os.environ) -> None:
    """OpenMP threads that wait for work spin briefly, then sleep (GOMP_SPINCOUNT=1000, libgomp's own count for a
    team larger than the free cores), unless the user chose a wait policy or a spin count.

    torch's CPU threads (and the kernels', which run on them) otherwise spin ~300,000 times at every barrier. With
    another busy process on the machine the spinning thread is charged the CPU time its partner then lacks, and each
    parallel region waits a scheduler slice. `doppel-torch match` (60 steps, 16 restarts, 2 threads) beside another
    2-thread torch job took 18.4-31.7 s, with this 8.1-13.3 s (OMP_WAIT_POLICY=PASSIVE 9.8-14.2 s, one thread
    6.9-13.7 s); beside a pytest benchmark run 19.8-20.5 s, passive 4.8-4.9 s. Idle it costs nothing measurable:
    100 match steps 1.02x the default's wall time (median of 5 pairs, 0.86-1.13; passive 1.13x), `train --preset
    cpu-smoke` 0.98x (3 pairs). Must run before torch is imported: libgomp reads both once, at load."""
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", "1000")


def _one_line_warnings() -> None:
    """A warning as one line, `warning: <message>`, instead of Python's `loop.py:149: UserWarning: <message>` and
    the source line under it (found from outside: a resumed run's note about a changed world size read as a crash)."""
    import warnings

    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"


def _terminate(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def _interrupted(when: str) -> None:
    signum = _received[0] if _received else signal.SIGINT
    sys.stderr.write(f"\ninterrupted by {signal.Signals(signum).name} {when}\n")
    sys.exit(128 + signum)


def main() -> None:
    _openmp_defaults()
    _one_line_warnings()
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # one started with SIGTERM ignored keeps it ignored
        signal.signal(signal.SIGTERM, _terminate)
    try:
        # numpy first: torch imports it inside a try that swallows any exception, a KeyboardInterrupt too, so a
        # Ctrl-C landing there was lost (the command ran on) or left numpy half-imported (found from outside: a
        # SIGINT 0.5 s after start)
        import numpy  # noqa: F401
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
