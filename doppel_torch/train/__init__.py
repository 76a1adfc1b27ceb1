"""Contrastive pretraining on audio doppelgangers: config, loop, checkpoints and the `train` command."""

from doppel_torch.train.checkpoint import load_checkpoint, load_encoder, save_checkpoint

__all__ = ["load_checkpoint", "load_encoder", "save_checkpoint"]
