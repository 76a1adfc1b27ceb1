"""Tiny training configs for the tests: a 4-wide ResNet18, batch 4, 1 s sounds, no progress bar."""

from __future__ import annotations

from typing import Any

from doppel_torch.train.config import TrainConfig, make_config

TINY = {
    "model.width": 4,
    "model.embed_dim": 16,
    "optim.batch_size": 4,
    "data.sounds_per_epoch": 40,  # 4 validation sounds, 36 training sounds = 9 steps per epoch
    "optim.epochs": 2,
    "run.device": "cpu",
    "run.precision": "fp32",
    "run.channels_last": False,
    "run.progress": False,
    "run.tensorboard": False,
    "run.examples": 0,
    "run.log_every": 1,
    "data.num_workers": 0,
}


def tiny_config(out_dir, **overrides: Any) -> TrainConfig:
    """make_config("default") with TINY and `overrides` (keys with "__" for ".": optim__lr=...)."""
    extra = {k.replace("__", "."): v for k, v in overrides.items()}
    return make_config("default", {**TINY, "run.out_dir": str(out_dir), **extra})
