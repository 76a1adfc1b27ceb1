"""Files written whole or not at all: what the commands write (wavs, theta.json, reports, profiles) goes to a
temporary file beside its destination and is renamed over it, so a full disk, a Ctrl-C or a kill never leaves a cut
file where a good one (or nothing) was. Checkpoints have their own (`train/checkpoint.py`: fsync and leftovers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written_whole(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; renames it over `path` when the block ends, removes it when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_whole(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text`, whole or not at all."""
    with written_whole(path) as tmp:
        tmp.write_text(text)
