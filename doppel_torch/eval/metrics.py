"""Scores of a probe's predictions: accuracy (single-label) and mean average precision (multi-label)."""

from __future__ import annotations

import torch


def accuracy(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy. scores: (N, C) logits or probabilities; target: (N,) class indices."""
    if scores.shape[0] != target.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} rows, target {target.shape[0]}")
    if scores.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (scores.argmax(dim=1) == target).double().mean().item()


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Average precision of one class: sum_n (R_n - R_{n-1}) P_n over distinct score thresholds
    (scikit-learn's definition, tied scores form one threshold). scores, target: (N,); target in {0, 1}."""
    target = target.double()
    n_pos = target.sum()
    if n_pos == 0:
        raise ValueError("average precision is undefined for a class without positives")
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, t = scores.double()[order], target[order]
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # last position of each run of equal scores
    tp = torch.cumsum(t, 0)[last]
    seen = (torch.arange(1, len(s) + 1, dtype=torch.float64))[last]
    precision = tp / seen
    recall = tp / n_pos
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def mean_average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Macro mAP over the classes that have at least one positive. scores, target: (N, C)."""
    if scores.shape != target.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} differ in shape")
    cols = [c for c in range(target.shape[1]) if target[:, c].sum() > 0]
    if not cols:
        raise ValueError("no class has a positive example: mAP is undefined")
    return sum(average_precision(scores[:, c], target[:, c]) for c in cols) / len(cols)


def score(scores: torch.Tensor, target: torch.Tensor, multilabel: bool, metric: str | None = None) -> float:
    """The task's metric: `metric` ("accuracy" or "mAP"), by default mAP if `multilabel` else accuracy.

    mAP of a single-label task (HEAR's Vocal Imitation) ranks the softmax probabilities of each class
    against one-hot targets, as hear-eval-kit scores its softmax predictions (a logit column would rank
    examples differently)."""
    metric = metric or ("mAP" if multilabel else "accuracy")
    if metric == "accuracy":
        if multilabel:
            raise ValueError("accuracy is not defined for multi-label targets; use mAP")
        return accuracy(scores, target)
    if metric != "mAP":
        raise ValueError(f"unknown metric {metric!r}; use 'accuracy' or 'mAP'")
    if multilabel:
        return mean_average_precision(scores, target)
    probs = torch.softmax(scores.double(), dim=1)
    return mean_average_precision(probs, torch.nn.functional.one_hot(target, scores.shape[1]).double())


def macro_f1(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Macro F1 of the top-1 predictions over the classes present in the target or the predictions (scikit-learn's
    ``f1_score(average="macro")``, a class without true or predicted positives scoring 0). scores: (N, C); target: (N,)."""
    if scores.shape[0] != target.shape[0] or scores.shape[0] == 0:
        raise ValueError(f"F1 needs as many non-zero score rows as targets, got {scores.shape[0]} and {target.shape[0]}")
    pred = scores.argmax(dim=1)
    labels = torch.unique(torch.cat([pred, target]))
    f1 = []
    for c in labels.tolist():
        tp = ((pred == c) & (target == c)).sum().item()
        fp = ((pred == c) & (target != c)).sum().item()
        fn = ((pred != c) & (target == c)).sum().item()
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1) / len(f1)
