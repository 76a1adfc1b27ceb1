"""Classification tasks read from disk: files, labels and the cross-validation splits they define.

A `Task` is a list of audio files, one label set per file and a split scheme:

- ``folds``: the dataset defines k folds (ESC-50, UrbanSound8K, HEAR k-fold tasks, FSDD). Split i tests on
  fold i, validates on fold i+1 (mod k) and trains on the rest: the hear-eval-kit convention, so that
  early stopping never looks at the test fold.
- ``fixed``: the dataset defines train / valid / test (HEAR ``trainvaltest`` tasks); one split.

Where a dataset only gives groups (a speaker, a source recording), `grouped_folds` assigns whole groups to
folds, so a group never sits on both sides of a split.

Loaders: `fsdd`, `esc50`, `urbansound8k`, `hear_task`, `label_folder`, `csv_manifest`, and `parse_task_spec`
for the command line's ``KIND[:PATH]`` strings.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FIXED_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """Indices into a task's files: train, valid (early stopping / model selection) and test."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


@dataclass
class Task:
    """An audio classification task.

    Args:
        name: short identifier used in reports (``fsdd-digit``, ``esc50``).
        files: audio file paths, one per example.
        labels: label names per example; a 1-tuple for single-label tasks.
        classes: the label vocabulary, in output order. Every class must have at least one example.
        multilabel: scored by mAP with a sigmoid head if True, else by accuracy with a softmax head.
        folds: fold name per example (``split_mode="folds"``) or ``train``/``valid``/``test``
            (``split_mode="fixed"``).
        groups: optional group per example (speaker, source recording): checked never to cross a split.
    """

    name: str
    files: list[Path]
    labels: list[tuple[str, ...]]
    classes: list[str]
    multilabel: bool
    folds: list[str]
    split_mode: str = "folds"
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.files)
        if n == 0:
            raise ValueError(f"task {self.name!r} has no audio files")
        if len(self.labels) != n or len(self.folds) != n or (self.groups is not None and len(self.groups) != n):
            raise ValueError(f"task {self.name!r}: files, labels, folds and groups must have the same length")
        if self.split_mode not in ("folds", "fixed"):
            raise ValueError(f"split_mode must be 'folds' or 'fixed', got {self.split_mode!r}")
        known = set(self.classes)
        counts = dict.fromkeys(self.classes, 0)
        for path, labels in zip(self.files, self.labels):
            if not labels:
                raise ValueError(f"task {self.name!r}: file {path} has no label")
            if not self.multilabel and len(labels) != 1:
                raise ValueError(f"task {self.name!r}: file {path} has {len(labels)} labels in a single-label task")
            for label in labels:
                if label not in known:
                    raise ValueError(f"task {self.name!r}: file {path} has label {label!r} outside the class list")
                counts[label] += 1
        empty = [c for c, k in counts.items() if k == 0]
        if empty:
            raise ValueError(
                f"task {self.name!r}: class(es) {empty} have no examples; remove them from the class list "
                "or add audio for them"
            )
        if self.split_mode == "fixed":
            bad = sorted(set(self.folds) - set(FIXED_SPLITS))
            if bad or "train" not in self.folds or "test" not in self.folds:
                raise ValueError(
                    f"task {self.name!r}: a fixed split needs folds named train/valid/test with train and test "
                    f"present, got {sorted(set(self.folds))}"
                )
        elif len(set(self.folds)) < 3:
            raise ValueError(
                f"task {self.name!r}: fold-wise cross-validation needs at least 3 folds (test, valid, train), "
                f"got {sorted(set(self.folds))}"
            )

    def __len__(self) -> int:
        return len(self.files)

    @property
    def metric(self) -> str:
        """``"mAP"`` for multi-label tasks, ``"accuracy"`` otherwise."""
        return "mAP" if self.multilabel else "accuracy"

    def targets(self) -> torch.Tensor:
        """Class indices (N,) int64 for single-label tasks, multi-hot (N, C) float32 for multi-label ones."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return torch.tensor([index[labels[0]] for labels in self.labels], dtype=torch.int64)
        y = torch.zeros(len(self), len(self.classes))
        for i, labels in enumerate(self.labels):
            y[i, [index[c] for c in labels]] = 1.0
        return y

    def fold_names(self) -> list[str]:
        return sorted(set(self.folds), key=_natural_key)

    def splits(self) -> list[Split]:
        """The cross-validation splits: one per fold (test i, valid i+1, train rest), or the fixed one."""
        folds = np.asarray(self.folds)
        if self.split_mode == "fixed":
            valid = np.flatnonzero(folds == "valid")
            return [Split("test", np.flatnonzero(folds == "train"), valid, np.flatnonzero(folds == "test"))]
        names = self.fold_names()
        out = []
        for i, name in enumerate(names):
            valid_name = names[(i + 1) % len(names)]
            train = np.flatnonzero((folds != name) & (folds != valid_name))
            out.append(Split(name, train, np.flatnonzero(folds == valid_name), np.flatnonzero(folds == name)))
        return out

    def subset(self, indices) -> Task:
        """A task restricted to `indices`; classes that lose all their examples are dropped."""
        indices = [int(i) for i in indices]
        labels = [self.labels[i] for i in indices]
        present = {c for ls in labels for c in ls}
        return Task(
            name=self.name,
            files=[self.files[i] for i in indices],
            labels=labels,
            classes=[c for c in self.classes if c in present],
            multilabel=self.multilabel,
            folds=[self.folds[i] for i in indices],
            split_mode=self.split_mode,
            groups=None if self.groups is None else [self.groups[i] for i in indices],
        )

    def sample(self, max_files: int, seed: int = 0) -> Task:
        """At most `max_files` examples, drawn round-robin over (fold, first label) cells so that every
        fold and class keeps examples. Deterministic in `seed`."""
        if max_files >= len(self):
            return self
        rng = random.Random(seed)
        cells: dict[tuple[str, str], list[int]] = {}
        for i in range(len(self)):
            cells.setdefault((self.folds[i], self.labels[i][0]), []).append(i)
        queues = [rng.sample(v, len(v)) for _, v in sorted(cells.items())]
        chosen: list[int] = []
        while len(chosen) < max_files:
            for q in queues:
                if q and len(chosen) < max_files:
                    chosen.append(q.pop())
        return self.subset(sorted(chosen))

    def check_group_disjoint(self) -> None:
        """Raise if any group has examples on two sides of a split."""
        if self.groups is None:
            return
        groups = np.asarray(self.groups)
        for split in self.splits():
            sides = [set(groups[split.train]), set(groups[split.valid]), set(groups[split.test])]
            for a, b, what in ((0, 2, "train/test"), (1, 2, "valid/test"), (0, 1, "train/valid")):
                shared = sides[a] & sides[b]
                if shared:
                    raise ValueError(
                        f"task {self.name!r}, split {split.name}: groups {sorted(shared)[:5]} are on both "
                        f"{what} sides"
                    )


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def grouped_folds(groups: list[str], n_folds: int = 5, seed: int = 0) -> list[str]:
    """Assign whole groups to `n_folds` folds of similar size; returns a fold name per example.

    Groups are shuffled with `seed`, then placed largest first into the currently smallest fold.
    """
    unique = sorted(set(groups))
    if len(unique) < n_folds:
        raise ValueError(
            f"{len(unique)} groups cannot fill {n_folds} folds; use fewer folds or give finer groups"
        )
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    random.Random(seed).shuffle(unique)
    unique.sort(key=lambda g: -sizes[g])  # stable: shuffled order breaks ties
    fill = [0] * n_folds
    fold_of: dict[str, str] = {}
    for g in unique:
        k = min(range(n_folds), key=lambda j: fill[j])
        fill[k] += sizes[g]
        fold_of[g] = f"fold{k}"
    return [fold_of[g] for g in groups]


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist (check the path given to --task)")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; is the dataset folder complete?")
    return path


# ----------------------------------------------------------------------------------------------- FSDD

FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def default_fsdd_root() -> Path:
    """The FSDD copy of the project's shared folder: ``$DOPPEL_SHARED/data/fsdd``, by default
    ``<repo>/../shared/data/fsdd`` next to a development checkout."""
    shared = os.environ.get("DOPPEL_SHARED", Path(__file__).resolve().parents[3] / "shared")
    return Path(shared) / "data" / "fsdd"


def fsdd(root: Path | str | None = None, target: str = "digit") -> Task:
    """Free Spoken Digit Dataset (8 kHz wav files ``{digit}_{speaker}_{take}.wav`` under ``recordings/``).

    - ``target="digit"``: 10 classes; one fold per speaker (leave-one-speaker-out), so the probe is always
      tested on a voice it has never heard.
    - ``target="speaker"``: 6 classes; folds by take, ``take // 10`` (5 folds of 10 takes per digit and
      speaker), grouped so that a take never sits on two sides.
    """
    if target not in ("digit", "speaker"):
        raise ValueError(f"FSDD target must be 'digit' or 'speaker', got {target!r}")
    if root is None and not default_fsdd_root().is_dir():
        raise FileNotFoundError(
            f"FSDD folder {default_fsdd_root()} does not exist: give its path as fsdd:PATH (the folder that "
            "holds recordings/) or set DOPPEL_SHARED"
        )
    root = _require_dir(Path(root) if root is not None else default_fsdd_root(), "FSDD")
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    files = sorted((p for p in rec.iterdir() if p.suffix.lower() == ".wav"), key=lambda p: _natural_key(p.name))
    if not files:
        raise FileNotFoundError(f"no .wav files in {rec}; expected FSDD's recordings/ folder")
    labels, folds, groups = [], [], []
    for p in files:
        m = FSDD_NAME.match(p.stem)
        if m is None:
            raise ValueError(f"FSDD file {p.name} has no label: names must be digit_speaker_take.wav")
        digit, speaker, take = m.group(1), m.group(2), int(m.group(3))
        if target == "digit":
            labels.append((digit,))
            folds.append(speaker)
            groups.append(speaker)
        else:
            labels.append((speaker,))
            folds.append(f"takes{take // 10 * 10:02d}")
            groups.append(f"{speaker}/{digit}/{take}")
    classes = sorted({ls[0] for ls in labels}, key=_natural_key)
    return Task(f"fsdd-{target}", files, labels, classes, False, folds, "folds", groups)


# ---------------------------------------------------------------------------------- ESC-50, UrbanSound8K


def esc50(root: Path | str) -> Task:
    """ESC-50: ``meta/esc50.csv`` (filename, fold, category, src_file) and ``audio/``; 5 official folds."""
    root = _require_dir(Path(root), "ESC-50")
    meta = _require_file(root / "meta" / "esc50.csv", "ESC-50 metadata")
    files, labels, folds, groups = [], [], [], []
    with open(meta, newline="") as f:
        for row in csv.DictReader(f):
            files.append(root / "audio" / row["filename"])
            labels.append((row["category"],))
            folds.append(f"fold{row['fold']}")
            groups.append(row.get("src_file") or row["filename"])
    classes = sorted({ls[0] for ls in labels})
    return Task("esc50", files, labels, classes, False, folds, "folds", groups)


def urbansound8k(root: Path | str) -> Task:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv`` and ``audio/fold{k}/``; 10 official folds, grouped by fsID."""
    root = _require_dir(Path(root), "UrbanSound8K")
    meta = _require_file(root / "metadata" / "UrbanSound8K.csv", "UrbanSound8K metadata")
    files, labels, folds, groups = [], [], [], []
    with open(meta, newline="") as f:
        for row in csv.DictReader(f):
            files.append(root / "audio" / f"fold{row['fold']}" / row["slice_file_name"])
            labels.append((row["class"],))
            folds.append(f"fold{row['fold']}")
            groups.append(row["fsID"])
    classes = sorted({ls[0] for ls in labels})
    return Task("urbansound8k", files, labels, classes, False, folds, "folds", groups)


# ------------------------------------------------------------------------------------------------ HEAR


def hear_task(root: Path | str) -> Task:
    """A task folder preprocessed by hear-preprocess (scene tasks only).

    Reads ``task_metadata.json`` (prediction_type, split_mode), ``labelvocabulary.csv`` (idx, label), one
    ``{split}.json`` per split (file name -> list of labels) and the audio under ``{sample_rate}/{split}/``
    (16000 preferred).
    """
    root = _require_dir(Path(root), "HEAR task")
    meta = json.loads(_require_file(root / "task_metadata.json", "HEAR task_metadata.json").read_text())
    if meta.get("embedding_type", "scene") != "scene":
        raise ValueError(
            f"HEAR task {root.name}: embedding_type {meta.get('embedding_type')!r} is not supported; "
            "only scene (clip-level) tasks can be probed here"
        )
    multilabel = meta.get("prediction_type") == "multilabel"
    rates = sorted((d for d in root.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    if not rates:
        raise FileNotFoundError(f"HEAR task {root}: no audio folder named by sample rate (e.g. 16000/)")
    audio_dir = root / "16000" if (root / "16000").is_dir() else rates[-1]
    with open(_require_file(root / "labelvocabulary.csv", "HEAR labelvocabulary.csv"), newline="") as f:
        classes = [row["label"] for row in sorted(csv.DictReader(f), key=lambda r: int(r["idx"]))]
    mode = meta.get("split_mode", "trainvaltest")
    if mode == "trainvaltest":
        split_names, split_mode = list(FIXED_SPLITS), "fixed"
    else:
        split_names = sorted((p.stem for p in root.glob("fold*.json")), key=_natural_key)
        split_mode = "folds"
        if not split_names:
            raise FileNotFoundError(f"HEAR task {root}: split_mode {mode!r} but no fold*.json label files")
    files, labels, folds = [], [], []
    for split in split_names:
        label_file = _require_file(root / f"{split}.json", f"HEAR label file for split {split!r}")
        mapping = json.loads(label_file.read_text())
        split_dir = audio_dir / split
        for name in sorted(p.name for p in split_dir.iterdir()) if split_dir.is_dir() else []:
            if name not in mapping:
                raise ValueError(f"HEAR task {root.name}: file {split_dir / name} has no label in {label_file.name}")
        for name, ls in sorted(mapping.items()):
            files.append(split_dir / name)
            labels.append(tuple(str(x) for x in ls))
            folds.append(split)
    return Task(root.name, files, labels, classes, multilabel, folds, split_mode)


# ------------------------------------------------------------------------------- generic folder, CSV


def label_folder(root: Path | str, n_folds: int = 5, seed: int = 0) -> Task:
    """``root/<label>/<file>``: one subfolder per class. No groups are known, so each file is its own group
    and files are spread over `n_folds` folds with `seed`; prefer a CSV manifest with groups where one source
    recording yields several files."""
    root = _require_dir(Path(root), "label")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        raise ValueError(
            f"{root}: audio file(s) {loose[:3]} have no label: put every file in a subfolder named by its class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders; expected root/<label>/<audio file>")
    files, labels = [], []
    for c in classes:
        found = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        if not found:
            raise ValueError(f"{root}: class {c!r} has no examples (no audio file in {root / c})")
        files += found
        labels += [(c,)] * len(found)
    groups = [str(p) for p in files]
    return Task(root.name, files, labels, classes, False, grouped_folds(groups, n_folds, seed), "folds", groups)


def csv_manifest(path: Path | str, n_folds: int = 5, seed: int = 0) -> Task:
    """A CSV with columns ``path, label[, fold][, group]``; paths relative to the CSV's folder.

    Several labels separated by ``;`` make the task multi-label. Without a ``fold`` column, folds are made
    from ``group`` (or from each file when there is no group) with `grouped_folds`, so a group (a speaker, a
    source recording) never sits on both sides of a split. A ``fold`` column of train/valid/test is a fixed
    split.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CSV manifest {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        if not {"path", "label"} <= columns:
            raise ValueError(f"{path}: a manifest needs columns 'path' and 'label', found {sorted(columns)}")
        rows = list(reader)
    files, labels, folds, groups = [], [], [], []
    for line, row in enumerate(rows, start=2):
        ls = tuple(s.strip() for s in (row["label"] or "").split(";") if s.strip())
        if not ls:
            raise ValueError(f"{path}, line {line}: file {row['path']!r} has no label")
        files.append((path.parent / row["path"]).resolve())
        labels.append(ls)
        folds.append((row.get("fold") or "").strip())
        groups.append((row.get("group") or "").strip() or row["path"])
    has_folds = "fold" in columns
    if has_folds and not all(folds):
        raise ValueError(f"{path}: the 'fold' column is empty on some rows; fill it or drop the column")
    if not has_folds:
        folds = grouped_folds(groups, n_folds, seed)
    split_mode = "fixed" if has_folds and set(folds) <= set(FIXED_SPLITS) else "folds"
    multilabel = any(len(ls) > 1 for ls in labels)
    classes = sorted({c for ls in labels for c in ls})
    task = Task(path.stem, files, labels, classes, multilabel, folds, split_mode, groups)
    task.check_group_disjoint()
    return task


# ------------------------------------------------------------------------------------------ task specs

TASK_KINDS = ("fsdd", "fsdd-digit", "fsdd-speaker", "esc50", "us8k", "hear", "folder", "csv")


def parse_task_spec(spec: str) -> list[Task]:
    """``KIND[:PATH]`` -> tasks. ``fsdd`` gives two tasks (digit, speaker); PATH is optional for the FSDD
    kinds only (default: `default_fsdd_root`). Kinds: fsdd, fsdd-digit, fsdd-speaker, esc50, us8k, hear,
    folder, csv."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r} in {spec!r}; use one of {', '.join(TASK_KINDS)} as KIND[:PATH]")
    if kind.startswith("fsdd"):
        root = path or None
        targets = ("digit", "speaker") if kind == "fsdd" else (kind.split("-")[1],)
        return [fsdd(root, t) for t in targets]
    if not path:
        raise ValueError(f"task {kind!r} needs a path: {kind}:PATH")
    loader = {"esc50": esc50, "us8k": urbansound8k, "hear": hear_task, "folder": label_folder, "csv": csv_manifest}
    return [loader[kind](path)]
