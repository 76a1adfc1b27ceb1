"""Evaluation driver: embed every task's audio with every feature extractor, probe each split and seed.

    embedders = {"doppelganger": Embedder.from_checkpoint(ckpt),
                 "random-init": Embedder.random_init(0), "log-mel": Embedder.log_mel()}
    report = evaluate(embedders, parse_task_spec("fsdd"), ProbeConfig(), seeds=[0, 1, 2],
                      cache=EmbeddingCache("~/.cache/doppel-torch/embeddings"))

Unreadable audio files are listed in the report (``tasks.<name>.unreadable``) and left out of that task,
never fatal. Scores are given as mean +- std (sample std, ddof = 1) over all (split, seed) runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from doppel_torch.eval.cache import EmbeddingCache
from doppel_torch.eval.embed import SAMPLE_RATE, AudioReadError, Embedder, load_audio
from doppel_torch.eval.probe import ProbeConfig, fit_probe, predict
from doppel_torch.eval.metrics import score
from doppel_torch.eval.tasks import Task
from doppel_torch.functional import resample


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
    """
    memo = {} if memo is None else memo
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in embedders}
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    bar = tqdm(total=len(files), desc=desc, unit="file", disable=not progress, leave=False)
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


def cross_validate(
    features: torch.Tensor, task: Task, config: ProbeConfig, seeds=(0,), progress: bool = False, desc: str = ""
) -> list[dict]:
    """Fit and score a probe on every split of `task` for every seed. features: (N, D), rows = task.files.

    Returns one dict per run: split, seed, score (the task's metric on the test fold), valid_score,
    best_epoch, point (the chosen hyperparameters).
    """
    if features.shape[0] != len(task):
        raise ValueError(f"{features.shape[0]} feature rows for {len(task)} files of task {task.name!r}")
    x = features.float()
    y = task.targets()
    runs = []
    splits = task.splits()
    bar = tqdm(total=len(splits) * len(seeds), desc=desc or f"{task.name} probes", disable=not progress, leave=False)
    for split in splits:
        if len(split.train) == 0 or len(split.valid) == 0 or len(split.test) == 0:
            raise ValueError(
                f"task {task.name!r}, split {split.name}: empty train, valid or test set "
                f"({len(split.train)}, {len(split.valid)}, {len(split.test)} files); a fixed split needs train, "
                "valid and test files, and every fold needs readable files"
            )
        t = torch.as_tensor
        for seed in seeds:
            fit = fit_probe(
                x[t(split.train)], y[t(split.train)], x[t(split.valid)], y[t(split.valid)],
                len(task.classes), task.multilabel, config, seed,
            )
            test_score = score(predict(fit.model, x[t(split.test)]), y[t(split.test)], task.multilabel, task.metric)
            runs.append(dict(split=split.name, seed=int(seed), score=test_score, valid_score=fit.valid_score,
                             best_epoch=fit.best_epoch, point=fit.point))
            bar.update(1)
    bar.close()
    return runs


def summarize(runs: list[dict]) -> dict:
    """mean, std (ddof = 1; 0 for a single run) and n of the runs' test scores."""
    s = np.array([r["score"] for r in runs], dtype=np.float64)
    return dict(mean=float(s.mean()), std=float(s.std(ddof=1)) if len(s) > 1 else 0.0, n=len(s))


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
        raise ValueError(f"task names must be unique, got {names}")
    report = dict(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        probe={k: v for k, v in asdict(config).items() if k != "grid"} | {"grid_points": len(config.points())},
        seeds=seeds,
        extractors={n: dict(key=e.key, embedding_size=e.embedding_size) for n, e in embedders.items()},
        tasks={},
    )
    memo: dict = {}
    for task in tasks:
        task.check_group_disjoint()
        feats, kept, unreadable = extract_features(
            embedders, task.files, cache, memo, progress, desc=f"{task.name}: embedding"
        )
        if len(kept) == 0:
            raise ValueError(f"task {task.name!r}: none of its {len(task)} files could be read; first error: "
                             f"{unreadable[0][0]}: {unreadable[0][1]}")
        used = task.subset(kept) if len(kept) < len(task) else task
        entry = dict(
            metric=task.metric, n_files=len(task), n_used=len(used), classes=used.classes,
            chance=chance_level(used),
            dropped_classes=[c for c in task.classes if c not in used.classes],
            splits=[s.name for s in used.splits()], unreadable=[dict(path=p, error=e) for p, e in unreadable],
            results={},
        )
        for name in embedders:
            runs = cross_validate(feats[name], used, config, seeds, progress, desc=f"{task.name}: {name} probes")
            entry["results"][name] = summarize(runs) | dict(runs=runs)
        report["tasks"][task.name] = entry
    return report


def chance_level(task: Task) -> float:
    """Accuracy of always predicting the most frequent class (tasks scored by accuracy)."""
    if task.metric != "accuracy":
        return math.nan
    counts = np.bincount(task.targets().numpy(), minlength=len(task.classes))
    return float(counts.max() / counts.sum())
