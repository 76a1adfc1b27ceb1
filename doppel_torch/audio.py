"""Reading audio files: one loader for every part that takes recordings from disk (eval clips, impulse responses)."""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


class AudioReadError(RuntimeError):
    """An audio file could not be read (missing, corrupt or empty)."""


def read_audio(source, name: str | None = None, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """Read audio with soundfile: returns (float32 audio (channels, N), sample rate).

    source: a path or a binary file object; name: how errors refer to it (default: the path); max_seconds: read
    only the file's first seconds (an hour-long file read whole to use one second of it took gigabytes).
    Raises AudioReadError (with the file name and soundfile's reason) for unreadable or empty files.
    """
    name = name if name is not None else str(source)
    source = str(source) if isinstance(source, Path) else source
    if isinstance(source, str) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise AudioReadError(f"{name}: an empty file (0 bytes)")
    try:
        if max_seconds is None:
            data, sr = sf.read(source, dtype="float32", always_2d=True)
        else:
            with sf.SoundFile(source) as f:
                sr = f.samplerate
                data = f.read(frames=max(1, math.ceil(max_seconds * sr)), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, OSError, TypeError ...
        # soundfile names a file object by its repr ("Error opening <_io.BytesIO object at 0x...>"): name it instead.
        reason = str(e).replace(f"Error opening {source!r}: ", "").replace(repr(source), name)
        raise AudioReadError(f"{name}: {reason}") from e
    if data.shape[0] == 0:
        raise AudioReadError(f"{name}: no samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def load_audio(source, name: str | None = None) -> tuple[torch.Tensor, int]:
    """`read_audio` with the channels averaged: (mono float32 audio (N,), sample rate). A recording with NaN or
    infinite samples is an AudioReadError too: it would make every embedding or reverb it feeds NaN."""
    data, sr = read_audio(source, name)
    if not bool(torch.isfinite(data).all()):
        raise AudioReadError(f"{name if name is not None else source}: NaN or infinite samples")
    return data.mean(dim=0), sr


def walk_audio(folder: Path, suffixes: tuple[str, ...]
               ) -> tuple[list[Path], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Regular files with one of `suffixes` (lower case) under `folder` (sorted), following symbolic links to
    folders; the (path, reason) of the files named so that cannot be used (a link whose target is missing or that
    loops, not a regular file); and of the folders not read (unreadable; a link to a folder already read, a second
    link to it or a loop, read once). Used by `train --data` and eval's class folders."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    folders: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            st = here.stat()
            if (st.st_dev, st.st_ino) in seen:
                folders.append((here, "a link to a folder already read (a second link to it, or a loop): read once"))
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            folders.append((here, f"unreadable folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                st = os.stat(path)  # follows links
            except OSError as exc:  # a dangling or looping link (or a file removed meanwhile)
                if path.suffix.lower() in suffixes:
                    loop = exc.errno == errno.ELOOP
                    skipped.append((path, "symbolic link loop" if loop else "dangling symbolic link (no target)"))
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif path.suffix.lower() not in suffixes:
                continue
            elif stat.S_ISREG(st.st_mode):
                found.append(path)
            else:
                skipped.append((path, "not a regular file"))
    return sorted(found), skipped, folders
