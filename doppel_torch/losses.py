"""Alignment and uniformity losses (Wang & Isola, 2020) and a differentiable all-gather.

The paper's objective (Algorithm 1), with embeddings L2-normalised beforehand:

    L = align(E1, E2; alpha=2) + (uniform(E1; t=2) + uniform(E2; t=2)) / 2

Under torch.distributed the uniformity term runs over the embeddings of all ranks, gathered with gradients
(`gather_with_grad`), so one step on W ranks with batch b each equals one step on one rank with batch W * b.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Mean over pairs of ||x_i - y_i||_2^alpha; x, y: (B, D) -> scalar."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"align_loss needs two (B, D) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log of the mean over pairs i < j of exp(-t ||x_i - x_j||^2); x: (B, D), B >= 2 -> scalar.

    Computed from the Gram matrix (||a - b||^2 = 2 - 2 a.b only holds for unit vectors, so the squared norms
    are kept) with a log-sum-exp: equal to ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``, which is what
    the paper's code computes, but stable when all distances are large.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"uniform_loss needs (B, D) embeddings with B >= 2, got shape {tuple(x.shape)}")
    n = x.shape[0]
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    logits = -t * d2[iu[0], iu[1]]
    return torch.logsumexp(logits, dim=0) - torch.log(torch.tensor(float(logits.numel()), device=x.device))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, ...) tensors of all ranks along dim 0 -> (W * B, ...), keeping gradients.

    Uses ``torch.distributed.nn.functional.all_gather`` (its backward sums each slice's gradient over ranks).
    Without an initialised process group (or with one rank) returns x unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def doppelganger_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    alpha: float = 2.0,
    t: float = 2.0,
    align_weight: float = 1.0,
    uniform_weight: float = 1.0,
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's loss on raw embeddings z1, z2 (B, D) of the two views (normalised here, in float32).

    Returns (total, align, uniform). Alignment is the local mean (DDP averages it across ranks); uniformity
    is over the gathered embeddings of all ranks when `gather` and a process group is initialised.
    """
    e1 = F.normalize(z1.float(), dim=1)
    e2 = F.normalize(z2.float(), dim=1)
    align = align_loss(e1, e2, alpha)
    if gather:
        e1, e2 = gather_with_grad(e1), gather_with_grad(e2)
    uniform = 0.5 * (uniform_loss(e1, t) + uniform_loss(e2, t))
    return align_weight * align + uniform_weight * uniform, align, uniform
