"""Fixtures of the eval tests: the real FSDD recordings and a tiny trained-format checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from doppel_torch.models import ResNet18Encoder
from doppel_torch.train.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def fsdd_root(shared_dir) -> Path:
    root = shared_dir / "data" / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.fail(f"FSDD recordings missing under {root}")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in `doppel-torch train`'s format holding a width-8 ResNet18 (64-d), for speed."""
    torch.manual_seed(123)
    encoder = ResNet18Encoder(in_channels=1, embed_dim=64, width=8)
    path = tmp_path_factory.mktemp("run") / "last.pt"
    save_checkpoint(path, {"model": encoder.state_dict(), "config": {"model": {"embed_dim": 64, "width": 8}}})
    return path
