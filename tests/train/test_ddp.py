"""DDP with 2 gloo processes on CPU equals 1 process on the global batch: loss terms, gradients, weights.

BatchNorm normalises over each rank's batch (the paper's setting; SyncBatchNorm does not run on CPU), so the
single-process reference runs the encoder on each rank's half of the batch separately, then computes the loss
over the whole batch: what DDP computes with per-rank BatchNorm, gathered uniformity and averaged gradients.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from doppel_torch.train.data import train_indices
from doppel_torch.train.loop import Trainer

from tests.conftest import REPO
from tests.train.helpers import tiny_config

WORLD = 2
BATCH = 2  # per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(out_dir, source: str, audio_dir) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, "-m", "tests.train.ddp_worker", str(out_dir), source, str(audio_dir)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("source", ["voice"])
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path, audio_dir, source):
    ranks = _run_ranks(tmp_path, source, audio_dir)
    # Ranks drew disjoint, consecutive sound indices.
    assert torch.equal(torch.cat([r["indices"] for r in ranks]), train_indices(0, 0, 1, WORLD * BATCH, 4))

    data = {"data__data": str(audio_dir)} if source == "real" else {"data__synth": source}
    cfg = tiny_config(tmp_path / "single", optim__batch_size=WORLD * BATCH, **data)
    single = Trainer(cfg, log=lambda s: None)
    assert single.peak_lr == pytest.approx(ranks[0]["lr"])  # lr scales with the global batch: same lr
    indices = train_indices(0, 0, 1, WORLD * BATCH, cfg.data.n_val)
    audio1, audio2 = single.pairs(indices)
    single.model.train()
    single.optimizer.zero_grad()
    halves = [single.embed(single.model, audio1[s], audio2[s], indices[s]) for s in (slice(0, 2), slice(2, 4))]
    z1 = torch.cat([h[0] for h in halves])
    z2 = torch.cat([h[1] for h in halves])
    total, align, uniform = single.loss(z1, z2)
    total.backward()
    single.optimizer.step()

    terms = torch.stack([r["terms"] for r in ranks])
    # Alignment is a per-rank mean (averaged by DDP); uniformity is over the gathered batch on every rank.
    assert torch.allclose(terms[:, 1].mean(), align.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(terms[:, 2], uniform.detach().expand(WORLD), rtol=1e-5, atol=1e-6)
    assert torch.allclose(terms[:, 0].mean(), total.detach(), rtol=1e-5, atol=1e-6)
    # float32 sums in another order (all-gather, gradient all-reduce): compare whole tensors by relative
    # error, far below what a wrong gradient scale (a uniformity gradient summed over ranks or not) would give.
    def rel_err(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    errors = {name: max(rel_err(r["grads"][name], p.grad) for r in ranks) for name, p in single.model.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-3, (worst, errors[worst])
    for name, w in single.model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var") or name.endswith("num_batches_tracked"):
            continue  # BatchNorm running statistics are per rank under DDP (buffers broadcast from rank 0)
        assert rel_err(ranks[1]["weights"][name], w) < 1e-5, name
    # ... until a validation, which every rank runs on rank 0's (a resumed run has only those: a validation resumed
    # after a signal read other values on rank 1 than the uninterrupted run's, found from outside)
    assert any(not torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"]
               if k.endswith("running_mean"))
    for name, buffer in ranks[0]["validated_buffers"].items():
        assert torch.equal(ranks[1]["validated_buffers"][name], buffer), name
