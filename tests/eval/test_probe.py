"""Probes and metrics: they learn planted structure, do not leak test labels, and score like the textbook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from doppel_torch.eval.evaluate import cross_validate, protocol_splits, summarize
from doppel_torch.eval.metrics import accuracy, average_precision, macro_f1, mean_average_precision
from doppel_torch.eval.probe import (
    LinearJob, ProbeConfig, arch_lr_factor, fit_linear_many, fit_probe, hear_grid, predict,
)
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


# Each protocol, made small: paper and arch with fewer epochs; hear with its drawn grid at hidden width 64.
PROTOCOLS = {
    "paper": lambda: ProbeConfig("paper", **FAST),
    "arch": lambda: ProbeConfig("arch", max_epochs=60),
    "hear": lambda: ProbeConfig("hear", max_epochs=30, grid=[p | dict(hidden_dim=64) for p in hear_grid(30)]),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_each_protocol_learns_planted_classes_and_not_shuffled_ones(digit_task, protocol):
    config = PROTOCOLS[protocol]()
    runs = cross_validate(_planted(digit_task), digit_task, config, seeds=(0,))
    assert len(runs) == 6 and summarize(runs)["mean"] > 0.95, summarize(runs)
    assert all(0.0 <= r["f1"] <= 1.0 for r in runs)
    if protocol == "hear":  # one grid point chosen on the first split, retrained on every other split
        assert len({str(r["point"]) for r in runs}) == 1 and runs[0]["point"] in config.grid
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(digit_task), 512, generator=g)
    shuffled = digit_task.subset(range(len(digit_task)))
    shuffled.labels = [digit_task.labels[i] for i in torch.randperm(len(digit_task), generator=g).tolist()]
    assert summarize(cross_validate(x, shuffled, config, seeds=(0,)))["mean"] < 0.2  # chance 0.1


@pytest.mark.parametrize("protocol", ["paper", "arch"])
def test_batched_linear_probes_equal_the_one_probe_loop(protocol):
    # fit_linear_many stacks probes of different training-set sizes and seeds; each must be what the plain
    # autograd + torch.optim loop (fit_point) gives for its job alone: same selected epoch, same weights.
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (260,), generator=g)
    x = 0.5 * torch.randn(5, 24, generator=g)[y] + torch.randn(260, 24, generator=g)
    jobs = [LinearJob(np.arange(0, 150), np.arange(150, 200), 0), LinearJob(np.arange(0, 150), np.arange(150, 200), 1),
            LinearJob(np.arange(60, 260), np.arange(0, 60), 2)]
    config = ProbeConfig(protocol, max_epochs=12, **({"patience": 3} if protocol == "paper" else {}))
    for job, fit in zip(jobs, fit_linear_many(x, y, jobs, 5, False, config)):
        ref = fit_probe(x[job.train], y[job.train], x[job.valid], y[job.valid], 5, False, config, job.seed)
        assert (fit.best_epoch, fit.epochs_run, fit.valid_score) == (ref.best_epoch, ref.epochs_run, ref.valid_score)
        torch.testing.assert_close(fit.model[1].weight, ref.model[1].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(predict(fit.model, x), predict(ref.model, x), atol=1e-4, rtol=1e-4)


def test_hear_grid_is_the_kits_draw():
    # PARAM_GRID's 16 points in ParameterGrid order, random.Random(42).shuffle, first 8 (task_predictions.py
    # 59-96, 1294, 1340-1344): the draw a kit run makes.
    assert [(p["hidden_layers"], p["initialization"], p["lr"]) for p in hear_grid()] == [
        (1, "xavier_normal", 1e-4), (2, "xavier_uniform", 1e-3), (1, "xavier_normal", 1e-3),
        (1, "xavier_normal", 3.2e-4), (2, "xavier_normal", 3.2e-4), (2, "xavier_uniform", 3.2e-4),
        (2, "xavier_normal", 3.2e-3), (2, "xavier_uniform", 3.2e-3)]
    p = hear_grid()[0]
    assert (p["hidden_dim"], p["dropout"], p["batch_size"], p["patience"], p["check_every"], p["max_epochs"]) == (
        1024, 0.1, 1024, 20, 3, 500)
    config = ProbeConfig("hear")
    assert len(config.points()) == 8 and config.standardize is False
    assert ProbeConfig("linear").protocol == "paper"
    with pytest.raises(ValueError, match="replaced by 'hear'"):
        ProbeConfig("mlp-grid")
    with pytest.raises(ValueError, match="grid's"):
        ProbeConfig("hear", lr=1e-3)


def test_arch_splits_hold_out_a_fold_and_split_the_rest_80_20(digit_task):
    for split in protocol_splits(digit_task, "arch"):
        folds = np.asarray(digit_task.folds)
        assert set(folds[split.test]) == {split.name} and split.name not in set(folds[split.train])
        pool = len(split.train) + len(split.valid)
        assert pool + len(split.test) == len(digit_task) and len(split.valid) == int(np.ceil(0.2 * pool))
        assert not set(split.train) & set(split.valid)
    assert [s.name for s in protocol_splits(digit_task, "arch")] == digit_task.fold_names()
    # hear: the task's splits, training rows in sorted-fold order (the kit's unshuffled ConcatDataset)
    for ours, kit in zip(protocol_splits(digit_task, "hear"), digit_task.splits()):
        assert sorted(ours.train) == sorted(kit.train) and list(ours.valid) == list(kit.valid)
        ranks = [digit_task.fold_names().index(digit_task.folds[i]) for i in ours.train]
        assert ranks == sorted(ranks)
    # ARCH's learning rate: 0 at the first step, linear warm-up over 10 % of the steps, linear decay to 0
    assert [arch_lr_factor(s, 100) for s in (0, 5, 10, 55, 100, 120)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


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
    # macro F1 over the classes in the target or the predictions: class 0 F1 1/2, class 1 F1 2/3, class 2 0
    logits = torch.eye(3)[torch.tensor([0, 0, 1, 2])]
    assert macro_f1(logits, torch.tensor([0, 1, 1, 0])) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="without positives"):
        average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.0]))


def test_unseen_classes_are_those_of_the_protocols_own_splits(fsdd_root):
    """20 FSDD files: digit 2 of george's test fold never appears in the paper's training folds; under arch the
    training side is 80 % of the other folds, and for jackson's fold its draw lacks digit 2 too (the report said only
    george for every protocol)."""
    from doppel_torch.eval.evaluate import _unseen_in_training

    task = fsdd(fsdd_root, "digit").sample(20, seed=0)
    assert _unseen_in_training(task, "paper") == _unseen_in_training(task, "hear") == {"george": ["2"]}
    assert _unseen_in_training(task, "arch") == {"george": ["2"], "jackson": ["2"]}
