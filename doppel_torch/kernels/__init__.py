"""Triton backend: fused batched synth kernels (`synth.py`) and their device math (`_math.py`).

`VoiceSynth(backend="triton")` calls `check_available()` when built and `render(...)` per batch.
Triton is imported lazily, so that this package imports (and explains itself) where Triton is missing.
"""

from __future__ import annotations

import os

import torch


def check_available() -> None:
    """Raise RuntimeError saying why the Triton backend cannot run here; return quietly when it can."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"backend='triton' needs the triton package, which cannot be imported ({err}); "
            "install it (pip install triton) or use backend='torch' or backend='cpu'"
        ) from err
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend='triton' needs a CUDA GPU and torch.cuda.is_available() is False; use backend='torch' or "
            "backend='cpu', or set TRITON_INTERPRET=1 (before importing doppel_torch) to run the kernels in "
            "Triton's slow CPU interpreter"
        )


def render(synth, theta: torch.Tensor, noise=None, seed: int = 0, indices=None, normalize: bool = True, phase_dtype=None,
           out=None):
    """Render validated, clamped theta (B, m) to audio (B, N); see `doppel_torch.kernels.synth.render`."""
    from doppel_torch.kernels.synth import render as _render

    return _render(synth, theta, noise=noise, seed=seed, indices=indices, normalize=normalize, phase_dtype=phase_dtype,
                   out=out)


__all__ = ["check_available", "render"]
