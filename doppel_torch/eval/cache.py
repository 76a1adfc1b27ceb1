"""On-disk cache of clip embeddings, keyed by the feature extractor and the audio file's content.

Layout: ``root/<extractor key>/<sha256[:2]>/<sha256 of the file>.npy`` holding one float32 (D,) vector.
The extractor key names the weights (a checkpoint's sha256, a random-init seed) and the framing, so a new
checkpoint or hop never reads stale vectors; the file key is its content, so moving or renaming audio keeps
its cache entries while editing it does not.
"""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch


class EmbeddingCache:
    """Embeddings per (extractor key, file sha256). `get` returns None on a miss."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.write_failed = False  # a put that could not write: no more tries (each would fail the same way)

    def unwritable(self) -> str | None:
        """None where entries can be written under root (created if missing), else why not: a read-only folder, one
        that cannot be created, a file in its place."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as err:
            return err.strerror or str(err)
        return None

    def path(self, key: str, file_hash: str) -> Path:
        return self.root / key / file_hash[:2] / f"{file_hash}.npy"

    def get(self, key: str, file_hash: str, size: int | None = None) -> torch.Tensor | None:
        """The cached (D,) float32 vector, or None when there is none or it is not a valid embedding: truncated (an
        interrupted write), not a 1-D float vector of `size` values (another extractor's, a damaged file) or
        holding NaN or inf. A None makes the caller recompute the entry and overwrite it."""
        p = self.path(key, file_hash)
        if not p.is_file():
            return None
        try:
            vec = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # a truncated entry from an interrupted run: recompute it
            return None
        if vec.ndim != 1 or vec.dtype.kind != "f" or (size is not None and vec.shape[0] != size):
            return None
        if not np.isfinite(vec).all():
            return None
        return torch.from_numpy(vec.astype(np.float32, copy=False))

    def put(self, key: str, file_hash: str, embedding: torch.Tensor) -> None:
        """Write atomically (temporary file, then rename), so readers never see half a vector. A cache that cannot
        be written (a full disk) is warned about once and left alone: the evaluation goes on without it."""
        if self.write_failed:
            return
        p = self.path(key, file_hash)
        tmp = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, embedding.detach().cpu().float().numpy(), allow_pickle=False)
            os.replace(tmp, p)
        except BaseException as err:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            if not isinstance(err, OSError):
                raise
            self.write_failed = True
            remedy = ("free some space, or pass --no-cache" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                      else "give a --cache-dir you can write, or pass --no-cache")
            warnings.warn(f"cannot write the embedding cache in {self.root} ({err.strerror or err}): going on "
                          f"without caching ({remedy})", stacklevel=2)
