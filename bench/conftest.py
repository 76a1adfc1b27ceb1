"""Benchmarks: `pytest bench --benchmark`. Without --benchmark every benchmark is skipped, so `pytest bench`
stays cheap. Ratios are meaningful only within one run on one machine; GPU cases synchronise inside the
timed call."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False, help="run the benchmarks in bench/")
    parser.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with `pytest bench --benchmark`")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    name = request.config.getoption("--bench-device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda asked for, but no CUDA device is present")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a timed call measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def requires_cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only case: no CUDA device on this machine")
