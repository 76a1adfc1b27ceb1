"""The `doppel-torch` console script (and `python -m doppel_torch`): the command's own imports (torch and the
subcommands, a second or two) run under the same Ctrl-C handling as the command, so an early Ctrl-C prints one
line and exits 130 instead of an import traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from doppel_torch.cli import main as command
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted while starting: nothing was done\n")
        sys.exit(130)
    command(prog_name="doppel-torch")
