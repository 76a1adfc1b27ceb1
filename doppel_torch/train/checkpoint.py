"""Training checkpoints: atomic writes, safe reads.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python containers, so it loads with
``torch.load(..., weights_only=True)`` (a checkpoint from elsewhere cannot run code):

    {"format": "doppel-torch-checkpoint", "version": 1,
     "model": encoder state_dict (unwrapped: no "module." / "_orig_mod." prefixes),
     "optimizer": optimizer state_dict, "scheduler": scheduler state_dict,
     "step": optimizer steps done, "epoch": epochs completed,
     "config": the resolved training config as a nested dict (see `doppel_torch.train.config`),
     "rng": {"torch": CPU generator state, "cuda": [per-device states]},
     "metrics": last validation metrics (dict of floats),
     "crc32": CRC-32 of all the rest (`checksum`), checked on load}

The data itself needs no RNG state: every sound is keyed by (seed, global index), so the step counter
alone fixes the data still to come.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from doppel_torch.models import ResNet18Encoder

FORMAT = "doppel-torch-checkpoint"
VERSION = 1


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's "module." and torch.compile's "_orig_mod." prefixes from state-dict keys."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def rng_state() -> dict[str, Any]:
    """Torch generator states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _leaves(tree: Any):
    """The leaves of nested dicts, lists and tuples in a fixed order (dict keys sorted by their text, each key a leaf
    too)."""
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield key
            yield from _leaves(tree[key])
    elif isinstance(tree, (list, tuple)):
        yield type(tree).__name__
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree


def checksum(payload: dict[str, Any]) -> int:
    """CRC-32 of everything in a checkpoint but its "crc32" entry: each tensor's bytes, dtype and shape, and the
    repr of every other value (the config, the step, ...), dict entries in key order. torch.load does not check
    the zip's own CRCs: a checkpoint with a few overwritten bytes loaded with NaN weights and evaluated at chance,
    and one with a changed byte in its config trained with another seed, without a word (found from outside);
    ~0.03 s for a ResNet18 and its optimizer."""
    crc = 0
    for leaf in _leaves({k: v for k, v in payload.items() if k != "crc32"}):
        if isinstance(leaf, torch.Tensor):
            data = leaf.detach().reshape(-1).contiguous().cpu()
            crc = zlib.crc32(f"{data.dtype}{tuple(leaf.shape)}".encode(), crc)
            crc = zlib.crc32(data.view(torch.uint8).numpy(), crc) if data.numel() else crc
        else:
            crc = zlib.crc32(repr(leaf).encode(), crc)
    return crc


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    payload["crc32"] = checksum(payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() gives, as metrics.csv beside it
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = exc.__context__ if isinstance(exc, RuntimeError) else None
        if isinstance(cause, OSError):  # torch.save's "[enforce fail at inline_container.cc]" over a full disk
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return path


def remove_leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.pt.*.tmp`` files in a run folder that `save_checkpoint` leaves when its process is killed
    mid-write (kill -9, power loss), of last.pt and of the kept epoch-NNNN.pt alike; returns their paths. Call it at
    the start of the run that owns the folder."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.pt.*.tmp")):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        if path.name == "last.pt" and (path.parent / "metrics.csv").is_file():  # a run killed before its first one
            raise FileNotFoundError(f"no checkpoint at {path}: {path.parent} holds a run that stopped before its first "
                                    "checkpoint, so there is nothing to resume or evaluate; train anew (--out "
                                    f"{path.parent} takes a run stopped while it started; otherwise delete that "
                                    "folder or choose another --out)")
        raise FileNotFoundError(
            f"no checkpoint at {path}: pass a .pt file written by `doppel-torch train` or its run folder"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise ValueError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a file of any other content: the unpickler's KeyError, UnpicklingError, EOFError, ...
        # torch's message is long; keep its "Unsupported ..." line (e.g. "Unsupported global: GLOBAL datetime...").
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported" in line]
        reason = lines[0].split(". Please")[0] if lines else (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, (KeyError, IndexError, TypeError, ValueError, AttributeError)) or not reason:
            reason = f"{type(exc).__name__}: {reason}".rstrip(": ")
        raise ValueError(
            f"{path} could not be loaded as a checkpoint: it is truncated, not a torch.save file, or holds objects "
            f"other than tensors and plain containers (weights_only=True keeps a checkpoint from running code); give "
            f"another: a run folder's last.pt or epoch-NNNN.pt from `doppel-torch train`. torch says: {reason}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a doppel-torch checkpoint (no format tag {FORMAT!r})")
    if "crc32" in ckpt and checksum(ckpt) != ckpt["crc32"]:  # checkpoints of before 2026-12-07 have none
        raise ValueError(f"{path} is damaged: its contents do not match the checksum written with them (bytes of "
                         "the file were changed after it was saved); give another checkpoint, e.g. the run folder's "
                         "epoch-NNNN.pt or a copy")
    # what every reader takes for granted (found from outside: an edited file with a valid checksum was a KeyError)
    missing = [key for key in ("config", "model") if not isinstance(ckpt.get(key), dict)]
    if missing or not isinstance(ckpt["config"].get("model", {}), dict):
        raise ValueError(f"{path} is not a whole doppel-torch checkpoint ({' and '.join(missing) or 'config.model'} "
                         "missing or not a mapping); give a run folder's last.pt or epoch-NNNN.pt")
    # training never saves such values (it stops on a non-finite loss first)
    where = next((f"{name} has" for name, value in (ckpt.get("model") or {}).items() if not _finite(value)), None)
    if where is None and not all(_finite(v) for v in _leaves(ckpt.get("optimizer") or {})):
        where = "its optimizer state has"
    if where is not None:
        raise ValueError(f"{path} holds non-finite values ({where} NaN or infinite values): it is damaged; give "
                         "another checkpoint, e.g. the run folder's epoch-NNNN.pt")
    return ckpt


def _finite(value: Any) -> bool:
    """False for a floating-point tensor holding NaN or inf; True for anything else."""
    return not (isinstance(value, torch.Tensor) and value.is_floating_point()) or bool(torch.isfinite(value).all())


def load_weights(model: torch.nn.Module, state: dict, path: str | os.PathLike, model_config: dict) -> None:
    """model.load_state_dict(state), or ValueError in one line where the weights do not fit the model the
    checkpoint's config describes (an edited or foreign checkpoint: torch's error lists every key, 135 lines)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        first = (lines[0] if lines else str(err)).split(". ")[0][:200].rstrip(".")
        shape = ", ".join(f"{k} {v}" for k, v in model_config.items()) or "defaults"
        raise ValueError(f"{path}: its weights do not fit the model its config describes ({shape}): {first}; "
                         "was it written by another version, or edited?") from None


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[ResNet18Encoder, dict]:
    """Rebuild the trained encoder of a checkpoint: returns (ResNet18Encoder in eval mode, config dict).

    `path` is a checkpoint file or a run folder (its ``last.pt``). The model's shape comes from
    ``config["model"]`` (in_channels, embed_dim, width).
    """
    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    model_cfg = config.get("model", {})
    encoder = ResNet18Encoder(
        in_channels=int(model_cfg.get("in_channels", 1)),
        embed_dim=int(model_cfg.get("embed_dim", 512)),
        width=int(model_cfg.get("width", 64)),
    )
    load_weights(encoder, strip_prefixes(ckpt["model"]), path, model_cfg)
    encoder.to(map_location).eval()
    return encoder, config
