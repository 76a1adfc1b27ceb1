"""Checks the subcommands share, made before any work starts, each failing as one line that says what to do:
an output folder that can take files, and a --device this torch can use."""

from __future__ import annotations

import atexit
import math
import os
import sys
from pathlib import Path

import click

_created: list[Path] = []  # folders out_folder made, outermost first


@atexit.register
def _remove_if_left_empty() -> None:
    """A command that stops before writing anything (a bad --data found after the folder check, a Ctrl-C at start)
    does not leave behind the empty folders it made; a folder that holds anything stays, and so does one the user
    had made."""
    for folder in reversed(_created):
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            pass


def say(message: str = "", err: bool = False) -> None:
    """click.echo for a command's log lines, which outlive a closed pipe: when the reader of stdout (or stderr) ends
    (`| head`, a killed `| tee`), that stream goes quiet for the rest of the process and the work goes on, with one
    note on stderr where it still reads. Before, click's EPIPE handling ended a training run silently, up to
    --checkpoint-every steps after its last checkpoint, and an eval before its report was written."""
    try:
        click.echo(message, err=err)
    except (BrokenPipeError, ValueError):  # ValueError: a stream closed outright
        name = "stderr" if err else "stdout"
        try:
            setattr(sys, name, open(os.devnull, "w"))  # for the rest of the process
        except OSError:
            return
        if not err:
            say(f"note: {name} was closed (a pipe's reader ended); the work goes on without printing there", err=True)


class FolderPath(click.Path):
    """click.Path for an output folder that refuses an empty name: --out "" (an unset shell variable) would
    otherwise write into the current folder (found from outside)."""

    def __init__(self, **kwargs):
        super().__init__(file_okay=False, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("must name a folder ('.' for the current one)", param, ctx)
        return super().convert(value, param, ctx)


class NumberRange(click.FloatRange):
    """click.FloatRange that refuses NaN, which it lets through (every comparison with NaN is false), so that a
    nonsense value is a usage error naming the option rather than a failure after the work has started."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail("must be a number, not NaN", param, ctx)
        return number


class SeedType(click.ParamType):
    """--seed: an integer the random keys take whole, [-2^63, 2^64) (rng.check_seed); a larger one is a usage error
    naming the option, not a failure after the work has started."""

    name = "integer"

    def convert(self, value, param, ctx):
        from doppel_torch import rng

        try:
            return rng.check_seed(int(value) if isinstance(value, str) else value)
        except ValueError as err:
            self.fail(str(err) if not isinstance(value, str) or value.strip().lstrip("+-").isdigit()
                      else f"{value!r} is not an integer", param, ctx)


SEED = SeedType()


def out_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create `path` (and its parents) and check that a file can be written there (root ignores modes, so try)."""
    folder = Path(path)
    if folder.is_symlink() and not folder.exists():
        raise click.ClickException(f"cannot use {option} {folder}: it is a link to {os.readlink(folder)}, which does "
                                   "not exist (create that folder, or choose another)")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _created.extend(reversed(missing))
    except FileExistsError:
        raise click.ClickException(f"cannot use {option} {folder}: it exists and is not a folder (choose a "
                                   "folder)") from None
    except OSError as err:
        raise click.ClickException(f"cannot create {option} {folder}: {err.strerror or err} (choose another "
                                   "folder)") from None
    probe = folder / f".doppel-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise click.ClickException(f"cannot write in {option} {folder}: {err.strerror or err} (choose another "
                                   "folder)") from None
    return folder


def device_option(device: str | None):
    """--device as a torch.device: cuda when present if not given; cpu or cuda, and cuda only where it works."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"unknown device {device!r}: give cpu or cuda (cuda:N for one GPU)",
                                 param_hint="--device") from None
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{device} is not a device this command runs on: give cpu or cuda",
                                 param_hint="--device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available here (no GPU, or a CPU-only torch): use --device cpu",
                                 param_hint="--device")
    return device


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation that failed: MemoryError, CUDA's OutOfMemoryError, or the RuntimeError of
    torch's CPU allocator ("can't allocate memory"), which a command turns into one line saying what to lower."""
    import torch

    return isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err)))
