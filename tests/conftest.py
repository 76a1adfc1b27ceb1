"""Shared test helpers: where the read-only project data lives, and the anchors' import fixes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, as Triton's own CI does. `@triton.jit` reads
# the flag when it decorates a function, so it must be set before any test module imports the kernels: a kernel
# module imported without it cannot run interpreted later in the same process.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# CI and developers have the project's shared folder next to the repository root (../shared).
SHARED = Path(os.environ.get("DOPPEL_SHARED", REPO.parent / "shared"))
SYNTHAX_REF = SHARED / "reference" / "synthax"
FSDD = SHARED / "data" / "fsdd"
RIRS = SHARED / "data" / "rirs"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"project data folder {SHARED} is missing (set DOPPEL_SHARED to its path)")
    return SHARED


def import_torchsynth():
    """torchsynth 1.0.2 imports `pytorch_lightning.core.lightning`, which Lightning 2 renamed to
    `pytorch_lightning.core.module`; alias it before importing (needs setuptools<81 for pkg_resources)."""
    import pytorch_lightning.core.module as lightning_module

    sys.modules.setdefault("pytorch_lightning.core.lightning", lightning_module)
    import torchsynth.config
    import torchsynth.synth

    return torchsynth


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores in CI: keep each test's intra-op threads bounded and results independent of load.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
