"""Evaluation driver: embed every task's audio with every feature extractor, probe each split and seed.

    embedders = {"doppelganger": Embedder.from_checkpoint(ckpt),
                 "random-init": Embedder.random_init(0), "log-mel": Embedder.log_mel()}
    report = evaluate(embedders, parse_task_spec("fsdd"), ProbeConfig(), seeds=[0, 1, 2],
                      cache=EmbeddingCache("~/.cache/doppel_torch/embeddings"))

Unreadable audio files are listed in the report (``tasks.<name>.unreadable``) and left out of that task,
never fatal. Scores are given as mean +- std (sample std, ddof = 1) over all (split, seed) runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from doppel_torch.eval.cache import EmbeddingCache
from doppel_torch.eval.embed import SAMPLE_RATE, AudioReadError, Embedder, cpu_threads, free_cpu_threads, load_audio
from doppel_torch.eval.metrics import macro_f1, score
from doppel_torch.eval.probe import (
    ARCH_SPLIT_SEED, ARCH_VALID_FRACTION, LinearJob, ProbeConfig, fit_linear_many, fit_probe, predict,
)
from doppel_torch.eval.tasks import Split, Task
from doppel_torch.functional import resample
from doppel_torch.progress import progress_bar


def extract_features(
    embedders: dict[str, Embedder],
    files: list[Path],
    cache: EmbeddingCache | None = None,
    memo: dict | None = None,
    progress: bool = True,
    desc: str = "embedding",
    chunk: int = 32,
) -> tuple[dict[str, torch.Tensor], np.ndarray, list[tuple[str, str]]]:
    """Clip embeddings of `files` from every extractor; each file is read and decoded at most once.

    Returns (features: name -> (M, D) float32 for the M readable files, kept: their indices into `files`,
    unreadable: (path, reason) pairs). `memo` is an in-memory cache shared between tasks of one run.
    On the CPU the encoders use the cores other processes leave free (`free_cpu_threads`) and each clip is
    resampled on one thread (0.2 ms for an FSDD clip, where two threads on a loaded machine took 92 ms).
    """
    on_cpu = any(e.device.type == "cpu" for e in embedders.values())
    with cpu_threads(free_cpu_threads() if on_cpu else torch.get_num_threads()):
        return _extract_features(embedders, files, cache, memo, progress, desc, chunk)


def _extract_features(embedders, files, cache, memo, progress, desc, chunk):
    memo = {} if memo is None else memo
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in embedders}
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    bar = progress_bar(total=len(files), desc=desc, unit="file", disable=not progress, leave=False)
    for start in range(0, len(files), chunk):
        batch = []  # (index, file hash, raw bytes)
        for i in range(start, min(start + chunk, len(files))):
            try:
                raw = Path(files[i]).read_bytes()
            except OSError as e:
                unreadable.append((str(files[i]), f"{type(e).__name__}: {e.strerror or e}"))
                continue
            batch.append((i, hashlib.sha256(raw).hexdigest(), raw))
        found: dict[tuple[str, str], torch.Tensor] = {}
        for name, emb in embedders.items():
            for _, h, _ in batch:
                key = (emb.cache_key, h)
                vec = memo.get(key)
                if vec is None and cache is not None:
                    vec = cache.get(*key, size=emb.embedding_size)
                if vec is not None:
                    found[key] = vec
        clips: dict[str, torch.Tensor] = {}
        for i, h, raw in batch:
            if all((emb.cache_key, h) in found for emb in embedders.values()):
                continue
            try:
                audio, sr = load_audio(io.BytesIO(raw), name=str(files[i]))
            except AudioReadError as e:
                unreadable.append((str(files[i]), str(e).split(": ", 1)[-1]))
                continue
            with cpu_threads(1):
                clips[h] = resample(audio, sr, SAMPLE_RATE)
        for name, emb in embedders.items():
            todo = [h for h in dict.fromkeys(h for _, h, _ in batch) if (emb.cache_key, h) not in found and h in clips]
            if todo:
                for h, vec in zip(todo, emb.embed_clips([clips[h] for h in todo])):
                    found[(emb.cache_key, h)] = vec
                    if cache is not None:
                        cache.put(emb.cache_key, h, vec)
        for i, h, _ in batch:
            if all((emb.cache_key, h) in found for emb in embedders.values()):
                kept.append(i)
                for name, emb in embedders.items():
                    vec = found[(emb.cache_key, h)]
                    memo[(emb.cache_key, h)] = vec
                    rows[name].append(vec)
        bar.update(min(chunk, len(files) - start))
    bar.close()
    features = {
        name: torch.stack(r) if r else torch.zeros(0, embedders[name].embedding_size) for name, r in rows.items()
    }
    return features, np.asarray(kept, dtype=np.int64), unreadable


def protocol_splits(task: Task, protocol: str) -> list[Split]:
    """The (train, valid, test) splits a protocol uses on `task`.

    ``paper`` and ``hear``: the task's own (test fold k, validation fold k + 1, train the rest; or its fixed split);
    for ``hear`` the training rows are in fold order, as the kit's unshuffled loader reads them (ConcatDataset of
    the sorted training folds, task_predictions.py:804-818).
    ``arch``: test fold k; the other folds, concatenated in fold order, split 80/20 into train / validation as
    scikit-learn's ``train_test_split(test_size=0.2, random_state=42)`` does (ARCH esc50.py:155-175): the first
    ceil(0.2 n) of ``RandomState(42).permutation(n)`` validate, the rest train. A fixed split is kept.
    """
    if protocol == "paper" or task.split_mode == "fixed":
        return task.splits()
    folds = np.asarray(task.folds)
    names = task.fold_names()
    if protocol == "hear":  # the kit concatenates the training folds in sorted order and never shuffles them
        rank = {name: i for i, name in enumerate(names)}
        return [replace(s, train=np.array(sorted(s.train, key=lambda i: (rank[task.folds[i]], i)), dtype=np.int64))
                for s in task.splits()]
    out = []
    for name in names:
        pool = np.concatenate([np.flatnonzero(folds == other) for other in names if other != name])
        perm = np.random.RandomState(ARCH_SPLIT_SEED).permutation(len(pool))
        n_valid = math.ceil(ARCH_VALID_FRACTION * len(pool))
        out.append(Split(name, pool[perm[n_valid:]], pool[perm[:n_valid]], np.flatnonzero(folds == name)))
    return out


def cross_validate(
    features: torch.Tensor, task: Task, config: ProbeConfig, seeds=(0,), progress: bool = False, desc: str = ""
) -> list[dict]:
    """Fit and score a probe on every split of `task` for every seed, by `config`'s protocol.
    features: (N, D), rows = task.files.

    Returns one dict per run: split, seed, score (the task's metric on the test fold), f1 (macro F1 on the test
    fold, single-label tasks), valid_score, best_epoch, epochs_run, point (the chosen hyperparameters).
    ``paper`` and ``arch`` fit all (split, seed) probes of the task at once (`fit_linear_many`); ``hear`` selects
    its grid point on the first split per seed, then retrains that point on the other splits.
    """
    if features.shape[0] != len(task):
        raise ValueError(f"{features.shape[0]} feature rows for {len(task)} files of task {task.name!r}")
    x = features.float()
    y = task.targets()
    splits = _checked_splits(task, config.protocol)
    n_classes = len(task.classes)
    bar = progress_bar(total=len(splits) * len(seeds), desc=desc or f"{task.name} probes", disable=not progress, leave=False)
    fits: dict[tuple[int, int], object] = {}
    if config.protocol in ("paper", "arch"):
        jobs = [LinearJob(split.train, split.valid, int(seed)) for split in splits for seed in seeds]
        results = iter(fit_linear_many(x, y, jobs, n_classes, task.multilabel, config, task.metric))
        for i in range(len(splits)):
            for seed in seeds:
                fits[i, seed] = next(results)
        bar.update(len(jobs))
    else:
        t = torch.as_tensor
        for seed in seeds:
            for i, split in enumerate(splits):
                grid = config if i == 0 else replace(config, grid=[fits[0, seed].point])
                fits[i, seed] = fit_probe(x[t(split.train)], y[t(split.train)], x[t(split.valid)], y[t(split.valid)],
                                          n_classes, task.multilabel, grid, seed, task.metric)
                bar.update(1)
    bar.close()
    runs = []
    for i, split in enumerate(splits):
        test = torch.as_tensor(split.test)
        for seed in seeds:
            fit = fits[i, seed]
            logits = predict(fit.model, x[test])
            run = dict(split=split.name, seed=int(seed), score=score(logits, y[test], task.multilabel, task.metric),
                       valid_score=fit.valid_score, best_epoch=fit.best_epoch, epochs_run=fit.epochs_run, point=fit.point)
            if not task.multilabel:
                run["f1"] = macro_f1(logits, y[test])
            runs.append(run)
    return runs


def summarize(runs: list[dict]) -> dict:
    """mean, std (ddof = 1; 0 for a single run) and n of the runs' test scores; f1_mean and f1_std likewise
    where the runs have a macro F1."""
    def mean_std(values):
        v = np.array(values, dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    mean, std = mean_std([r["score"] for r in runs])
    out = dict(mean=mean, std=std, n=len(runs))
    if runs and all("f1" in r for r in runs):
        out["f1_mean"], out["f1_std"] = mean_std([r["f1"] for r in runs])
    return out


def evaluate(
    embedders: dict[str, Embedder],
    tasks: list[Task],
    config: ProbeConfig | None = None,
    seeds=(0,),
    cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> dict:
    """Probe every task with every extractor; returns the report (a JSON-ready dict, see the module doc)."""
    config = config or ProbeConfig()
    seeds = [int(s) for s in seeds]
    if not embedders:
        raise ValueError("no feature extractor to evaluate")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"task names must be unique, got {names}: a folder task is named after its folder, so give "
                         f"the folders named {', '.join(twice)} different names (a symbolic link under another name "
                         "will do)")
    report = dict(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        probe={k: v for k, v in asdict(config).items() if k != "grid"}
        | {"kind": config.protocol, "grid_points": len(config.points()), "description": config.describe()}
        | ({"grid": config.grid} if config.protocol == "hear" else {}),
        seeds=seeds,
        extractors={n: dict(key=e.key, embedding_size=e.embedding_size) for n, e in embedders.items()},
        tasks={},
    )
    for task in tasks:  # a split that cannot be probed is refused before any audio is embedded
        _checked_splits(task, config.protocol)
    memo: dict = {}
    for task in tasks:
        try:
            report["tasks"][task.name] = _evaluate_task(task, embedders, config, seeds, cache, memo, progress)
        except KeyboardInterrupt:  # Ctrl-C (or a SIGTERM raised as one): the finished tasks go with it
            report["interrupted"] = dict(task=task.name, finished=list(report["tasks"]))
            raise EvaluationInterrupted(report) from None
        except ValueError as err:  # a task that cannot be probed (its files unreadable, one class left): the
            if not report["tasks"]:  # finished ones go with it (found from outside: hours of probes were lost)
                raise
            report["failed"] = dict(task=task.name, error=str(err), finished=list(report["tasks"]))
            raise EvaluationFailed(report, err) from None
    return report


class EvaluationFailed(ValueError):
    """A task of `evaluate` could not be probed after others had finished: carries their report
    (`report["failed"]` names the task and its error)."""

    def __init__(self, report: dict, error: ValueError):
        super().__init__(str(error))
        self.report = report


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during `evaluate`: a KeyboardInterrupt that carries the report of the tasks finished before it
    (`report["interrupted"]` names the task it cut)."""

    def __init__(self, report: dict):
        super().__init__(f"interrupted during task {report['interrupted']['task']!r}")
        self.report = report


def _evaluate_task(task, embedders, config, seeds, cache, memo, progress) -> dict:
    """One task's report entry: its features by every extractor, then the probes of each split and seed."""
    task.check_group_disjoint()
    feats, kept, unreadable = extract_features(
        embedders, task.files, cache, memo, progress, desc=f"{task.name}: embedding"
    )
    if len(kept) == 0:
        raise ValueError(f"task {task.name!r}: none of its {len(task)} files could be read; first error: "
                         f"{unreadable[0][0]}: {unreadable[0][1]}")
    used = task.subset(kept) if len(kept) < len(task) else task
    if not used.multilabel and len(used.classes) < 2:  # every probe, chance too, would score 100 % (found from outside)
        left = "is left with" if len(used) < len(task) else "has"
        raise ValueError(f"task {task.name!r} {left} {len(used.classes)} class ({', '.join(map(str, used.classes))}) "
                         f"among its {len(used)} readable files: a probe needs 2 or more classes (check the folder: "
                         "one subfolder per class)")
    entry = dict(
        metric=task.metric, n_files=len(task), n_used=len(used), classes=used.classes,
        **({"drawn_from": task.drawn_from} if task.drawn_from else {}),
        chance=chance_level(used),
        dropped_classes=[c for c in task.classes if c not in used.classes],
        splits=[s.name for s in used.splits()], unreadable=[dict(path=p, error=e) for p, e in unreadable],
        unseen_in_training=_unseen_in_training(used, config.protocol), results={},
    )
    for name in embedders:
        runs = cross_validate(feats[name], used, config, seeds, progress, desc=f"{task.name}: {name} probes")
        entry["results"][name] = summarize(runs) | dict(runs=runs)
    return entry


def _unseen_in_training(task: Task, protocol: str) -> dict[str, list]:
    """Per split of the protocol (`protocol_splits`), the classes of its test side that its training side never
    shows (no probe can predict them: a fold-wise task whose classes live in one fold, say); only the splits that
    have some."""
    unseen = {}
    for split in protocol_splits(task, protocol):
        seen = {c for i in split.train for c in task.labels[i]}
        missing = sorted({c for i in split.test for c in task.labels[i]} - seen, key=task.classes.index)
        if missing:
            unseen[split.name] = missing
    return unseen


def _checked_splits(task: Task, protocol: str) -> list:
    """The protocol's splits of `task`; ValueError in one line for a split with an empty side."""
    splits = protocol_splits(task, protocol)
    for split in splits:
        if len(split.train) == 0 or len(split.valid) == 0 or len(split.test) == 0:
            raise ValueError(
                f"task {task.name!r}, split {split.name}: empty train, valid or test set "
                f"({len(split.train)}, {len(split.valid)}, {len(split.test)} files); a fixed split needs train, "
                "valid and test files, and every fold needs readable files"
            )
    return splits


def chance_level(task: Task) -> float:
    """Accuracy of always predicting the most frequent class (tasks scored by accuracy)."""
    if task.metric != "accuracy":
        return math.nan
    counts = np.bincount(task.targets().numpy(), minlength=len(task.classes))
    return float(counts.max() / counts.sum())
