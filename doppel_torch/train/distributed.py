"""torch.distributed set-up for `torchrun`: one process per device, NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits: rank / world size / local rank, its device, and a CPU (gloo) group for flags."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    control_group: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistEnv(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    # Stop flags (signals, NaN) travel on a CPU group, so checking them never synchronises the GPU.
    control = dist.new_group(backend="gloo") if device.type == "cuda" else None
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, control_group=control)


PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
             "NCCL communicator", "ncclRemoteError")


def peer_gone(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because another process of the run is gone (killed, crashed):
    torch's DistBackendError, or gloo's / NCCL's transport errors as RuntimeError."""
    backend_error = getattr(torch.distributed, "DistBackendError", None)
    return (backend_error is not None and isinstance(err, backend_error)) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE))


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True if `flag` is true on any rank (a tiny CPU all-reduce; no communication on one process)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control_group)
    return bool(t.item())


def mean_over_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Average a tensor over ranks (returns a copy)."""
    values = values.detach().clone()
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= env.world_size
    return values


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
