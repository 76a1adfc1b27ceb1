"""Which backends a test can run here, and on which device."""

from __future__ import annotations

import torch

BACKENDS = ("torch", "cpu", "triton")


def device_of(backend: str) -> torch.device:
    """triton renders CUDA tensors, or CPU tensors in the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py)."""
    return torch.device("cuda") if backend == "triton" and torch.cuda.is_available() else torch.device("cpu")
