"""One rank of the DDP equivalence test (launched by test_ddp.py with RANK / WORLD_SIZE set, like torchrun).

argv: out_dir data_source ("real" or a synth name). Writes rank<R>.pt with the rank's loss terms, the
encoder's gradients after one step, its weights after the SGD step and its buffers after a validation.
"""

from __future__ import annotations

import os
import sys

import torch

from doppel_torch.train.data import train_indices
from doppel_torch.train.distributed import cleanup, init_distributed
from doppel_torch.train.loop import Trainer

from tests.train.helpers import tiny_config

if __name__ == "__main__":
    out_dir, source, data_path = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    data = {"data.data": data_path} if source == "real" else {"data.synth": source}
    cfg = tiny_config(out_dir, optim__batch_size=2, **{k.replace(".", "__"): v for k, v in data.items()})
    trainer = Trainer(cfg, env=env, log=lambda s: None)
    try:
        indices = train_indices(0, env.rank, env.world_size, cfg.optim.batch_size, cfg.data.n_val)
        audio1, audio2 = trainer.pairs(indices)
        terms = trainer.train_step(indices, audio1, audio2)
        result = {
            "terms": terms,
            "grads": {k: p.grad.clone() for k, p in trainer.model.named_parameters()},
            "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "indices": indices,
            "lr": trainer.optimizer.param_groups[0]["lr"],
        }
        trainer.validate()  # on rank 0's model: its BatchNorm statistics on every rank
        result["validated_buffers"] = {k: v.clone() for k, v in trainer.model.named_buffers()}
        torch.save(result, os.path.join(out_dir, f"rank{env.rank}.pt"))
    finally:
        cleanup()
