"""Probes and metrics: they learn planted structure, do not leak test labels, and score like the textbook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from doppel_torch.eval.evaluate import cross_validate, summarize
from doppel_torch.eval.metrics import accuracy, average_precision, mean_average_precision
from doppel_torch.eval.probe import ProbeConfig, fit_probe, predict
from doppel_torch.eval.tasks import fsdd

FAST = dict(max_epochs=30, patience=5)


@pytest.fixture(scope="module")
def digit_task(fsdd_root):
    return fsdd(fsdd_root, "digit").sample(300, seed=0)  # 6 speaker folds, 5 takes per digit and speaker


def _planted(task, dim=64, spread=3.0, seed=0):
    """Features with a per-class mean + unit noise: linearly separable when spread is large."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(len(task.classes), dim, generator=g)
    return means[task.targets()] + torch.randn(len(task), dim, generator=g)


def test_linear_probe_learns_planted_classes(digit_task):
    runs = cross_validate(_planted(digit_task), digit_task, ProbeConfig(**FAST), seeds=(0, 1))
    assert len(runs) == 12 and {r["split"] for r in runs} == set(digit_task.fold_names())
    s = summarize(runs)
    assert s["mean"] > 0.95, s


def test_shuffled_labels_give_chance(digit_task):
    # Per-file random 512-d features can be memorised (see the control below), so any leak of test examples
    # into training would show as above-chance test accuracy. Labels are shuffled across files.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(digit_task), 512, generator=g)
    perm = torch.randperm(len(digit_task), generator=g).numpy()
    shuffled = digit_task.subset(range(len(digit_task)))
    shuffled.labels = [digit_task.labels[i] for i in perm]
    s = summarize(cross_validate(x, shuffled, ProbeConfig(**FAST), seeds=(0,)))
    assert s["mean"] < 0.2, s  # chance is 0.1; 300 files over 6 folds: std of the mean ~0.017

    # control: trained on the test fold itself, the same probe fits these labels well above chance
    split = shuffled.splits()[0]
    y = shuffled.targets()
    t = torch.as_tensor(split.test)
    fit = fit_probe(x[t], y[t], x[t], y[t], 10, False, ProbeConfig(max_epochs=100, patience=100), seed=0)
    assert accuracy(predict(fit.model, x[t]), y[t]) > 0.9


def test_mlp_grid_picks_a_point_and_learns(digit_task):
    grid = [dict(hidden_layers=h, hidden_dim=32, dropout=0.1, lr=lr, batch_size=64, patience=3, check_every=1,
                 max_epochs=15) for h, lr in ((1, 1e-3), (2, 3e-3))]
    config = ProbeConfig(kind="mlp-grid", grid=grid)
    runs = cross_validate(_planted(digit_task), digit_task, config, seeds=(0,))
    assert all(r["point"] in grid for r in runs)
    assert summarize(runs)["mean"] > 0.9
    assert len(ProbeConfig(kind="mlp-grid").points()) == 8  # the HEAR kit's default grid


def test_probe_is_deterministic_in_its_seed(digit_task):
    x = _planted(digit_task, spread=0.3)
    a = cross_validate(x, digit_task, ProbeConfig(**FAST), seeds=(5,))
    b = cross_validate(x, digit_task, ProbeConfig(**FAST), seeds=(5,))
    assert [r["score"] for r in a] == [r["score"] for r in b]


def test_multilabel_probe_scores_map():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(400, 5, generator=g) < 0.3).float()
    y[y.sum(1) == 0, 0] = 1.0
    x = 3 * y @ torch.randn(5, 32, generator=g) + torch.randn(400, 32, generator=g)
    fit = fit_probe(x[:300], y[:300], x[300:350], y[300:350], 5, True, ProbeConfig(**FAST))
    assert mean_average_precision(predict(fit.model, x[350:]), y[350:]) > 0.9


def _ap_bruteforce(scores, target):
    """Mean over positives of the precision among all items scoring >= that positive (ties count as ranked)."""
    out = []
    for i in np.flatnonzero(target):
        above = scores >= scores[i]
        out.append(target[above].sum() / above.sum())
    return float(np.mean(out))


def test_average_precision_matches_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        target = (rng.random(n) < 0.4).astype(float)
        if target.sum() == 0:
            target[0] = 1
        ap = average_precision(torch.tensor(scores), torch.tensor(target))
        assert ap == pytest.approx(_ap_bruteforce(scores, target), abs=1e-12)
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    assert accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5
    with pytest.raises(ValueError, match="without positives"):
        average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.0]))
