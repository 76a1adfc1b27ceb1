"""backend="triton": fused batched synth kernels (`synth.py`) and their backward (`grad.py`) over the program tables,
their device math (`_math.py`), the generated column constants (`columns.py`) and the ahead-of-time compile check
(`aot.py`).

Triton is imported lazily, so that this package imports (and explains itself) where Triton is missing.
"""

from __future__ import annotations

import os

import torch

from doppel_torch.backends import base


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_available() -> None:
    """Raise RuntimeError saying why the Triton backend cannot run here; return quietly when it can."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"backend='triton' needs the triton package, which cannot be imported ({err}); "
            "install it (pip install triton) or use backend='torch' or backend='cpu'"
        ) from err
    if _interpret():
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend='triton' needs a CUDA GPU and torch.cuda.is_available() is False; use backend='torch' or "
            "backend='cpu', or set TRITON_INTERPRET=1 (before importing doppel_torch) to run the kernels in "
            "Triton's slow CPU interpreter"
        )


class Backend(base.Backend):
    """phase_dtype: dtype of control signals, frequencies and phase; None = float64 (see synth.py)."""

    name = "triton"
    differentiable = True

    def __init__(self, phase_dtype: torch.dtype | None = None):
        self.phase_dtype = phase_dtype

    def check_available(self) -> None:
        check_available()

    def check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            from doppel_torch.backends.triton import _math

            if not _math.INTERPRET:
                raise ValueError(f"backend='triton' renders CUDA tensors; theta is on {device} "
                                 "(TRITON_INTERPRET=1 runs the kernels on the CPU)")

    def render(self, program, theta, *, noise, seed, indices, normalize, out):
        if torch.is_grad_enabled() and (theta.requires_grad or (noise is not None and noise.requires_grad)):
            from doppel_torch.backends.triton.grad import render_differentiable

            return render_differentiable(program, theta, noise=noise, seed=seed, indices=indices,
                                         normalize=normalize, out=out)
        from doppel_torch.backends.triton.synth import render

        return render(program, theta, noise=noise, seed=seed, indices=indices, normalize=normalize, out=out,
                      phase_dtype=self.phase_dtype)


__all__ = ["Backend", "check_available"]
