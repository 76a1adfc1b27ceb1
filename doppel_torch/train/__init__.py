"""Contrastive pretraining on audio doppelgangers: config, loop, checkpoints and the `train` command.

    from doppel_torch.train import Trainer, make_config
    summary = Trainer(make_config("cpu-smoke", {"data.synth": "voicefm"})).fit()
"""

from doppel_torch.train.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from doppel_torch.train.config import PRESETS, TrainConfig, make_config
from doppel_torch.train.loop import NonFiniteLoss, Trainer

__all__ = [
    "PRESETS",
    "NonFiniteLoss",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "load_encoder",
    "make_config",
    "save_checkpoint",
]
