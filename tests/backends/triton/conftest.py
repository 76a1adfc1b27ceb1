"""Kernel tests run on CUDA when present, else in Triton's CPU interpreter (as Triton's own CI does).

Device: `pytest tests/backends/triton --device cuda|cpu` (or DOPPEL_KERNEL_DEVICE), default cuda when available.
On CPU each test runs with TRITON_INTERPRET=1 set (and restored afterwards, so that other tests still see
the real environment); the kernels must then be first imported inside these tests.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default=None, help="device for the Triton kernel tests: cuda or cpu (interpreter)")


def _device_name(config) -> str:
    name = config.getoption("--device", default=None) or os.environ.get("DOPPEL_KERNEL_DEVICE")
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device(request, monkeypatch) -> torch.device:
    name = _device_name(request.config)
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda asked for, but no CUDA device is present")
        return torch.device("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    math_module = sys.modules.get("doppel_torch.backends.triton._math")
    if math_module is not None and not math_module.INTERPRET:
        pytest.skip("doppel_torch.backends.triton was imported without TRITON_INTERPRET=1 in this process; "
                    "run `TRITON_INTERPRET=1 pytest tests/backends/triton`")
    return torch.device("cpu")
