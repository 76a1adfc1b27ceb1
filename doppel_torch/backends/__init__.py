"""Backends render a lowered `Program` (doppel_torch.spec.program): `torch` (the reference), `triton` (GPU kernels)
and `cpu` (native kernel), beside each other; each reads the same tables and none imports another. The contract,
the registry and the validation live in `base.py`."""

from doppel_torch.backends.base import BACKENDS, Backend, fastest, get_backend, render

__all__ = ["BACKENDS", "Backend", "fastest", "get_backend", "render"]
