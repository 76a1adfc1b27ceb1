"""Classification tasks read from disk: files, labels and the cross-validation splits they define.

A `Task` is a list of audio files, one label set per file and a split scheme:

- ``folds``: the dataset defines k folds (ESC-50, UrbanSound8K, HEAR k-fold tasks, FSDD). Split i tests on
  fold i, validates on fold i+1 (mod k) and trains on the rest: the hear-eval-kit convention, so that
  early stopping never looks at the test fold.
- ``fixed``: the dataset defines train / valid / test (HEAR ``trainvaltest`` tasks); one split.

Where a dataset only gives groups (a speaker, a source recording), `grouped_folds` assigns whole groups to
folds, so a group never sits on both sides of a split. Where the paper's numbers come from HEAR's own k-fold
split of a dataset that defines none (LibriCount, Vocal Imitation, CREMA-D), `hear_kfolds` redoes that split.

Loaders, one per layout: `fsdd`, `esc50`, `urbansound8k`, `vivae`, `nsynth_pitch`, `crema_d`, `fsd50k`,
`vocal_imitation`, `libricount` (each dataset's own published layout), `hear_task` (a hear-preprocess task
folder), `label_folder`, `csv_manifest`; `parse_task_spec` reads the command line's ``KIND[:PATH]`` strings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from doppel_torch.audio import walk_audio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FIXED_SPLITS = ("train", "valid", "test")
METRICS = ("accuracy", "mAP")
# hear-eval-kit score names (task_metadata.json "evaluation", the first is the task's primary score) -> ours
HEAR_METRICS = {"top1_acc": "accuracy", "pitch_acc": "accuracy", "mAP": "mAP"}


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
        metric: ``"accuracy"`` or ``"mAP"`` (macro, over classes with positives); default mAP for multi-label
            tasks, else accuracy. A single-label task may be scored by mAP (HEAR's Vocal Imitation): the probe
            stays a softmax classifier and its class probabilities are ranked against one-hot targets.
    """

    name: str
    files: list[Path]
    labels: list[tuple[str, ...]]
    classes: list[str]
    multilabel: bool
    folds: list[str]
    split_mode: str = "folds"
    groups: list[str] | None = None
    metric: str | None = None
    drawn_from: int | None = None  # `sample`: how many files the task had before the draw (reports say so)

    def __post_init__(self) -> None:
        if self.metric is None:
            self.metric = "mAP" if self.multilabel else "accuracy"
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric must be one of {METRICS}, got {self.metric!r}")
        if self.multilabel and self.metric != "mAP":
            raise ValueError(f"task {self.name!r}: a multi-label task is scored by mAP, not {self.metric}")
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
            metric=self.metric,
            drawn_from=self.drawn_from,
        )

    def sample(self, max_files: int, seed: int = 0) -> Task:
        """At most `max_files` examples, stratified over folds and classes. Deterministic in `seed`.

        Each fold (or fixed split) keeps a share proportional to its size, at least one file where
        `max_files` allows; within a fold, files are drawn round-robin over the classes (a file's first label)
        in one seeded class order shared by every fold, so a draw too small for every class keeps the same
        classes on every side of a split rather than losing whole folds. Where a fold's share reaches every class,
        its round-robin starts where the previous such fold's left off, so that the remainders do not go to the
        same classes in every fold (found from outside: FSDD at 100 files gave three digits 6 files, the others
        10-12).
        """
        if max_files >= len(self):
            return self
        rng = random.Random(seed)
        rank = {c: i for i, c in enumerate(rng.sample(self.classes, len(self.classes)))}
        folds = self.fold_names()
        members: dict[str, list[int]] = {f: [] for f in folds}
        for i, f in enumerate(self.folds):
            members[f].append(i)
        share = {f: max_files * len(members[f]) / len(self) for f in folds}
        quota = {f: int(share[f]) for f in folds}
        for f in sorted(folds, key=lambda f: quota[f] - share[f])[: max_files - sum(quota.values())]:
            quota[f] += 1  # largest remainders first
        for f in folds:
            if quota[f] == 0 and max_files >= len(folds):
                donor = max(folds, key=lambda g: quota[g])
                quota[donor], quota[f] = quota[donor] - 1, 1
        chosen: list[int] = []
        spill = 0  # where the next round-robin that reaches every class starts
        for f in folds:
            cells: dict[str, list[int]] = {}
            for i in members[f]:
                cells.setdefault(self.labels[i][0], []).append(i)
            queues = [rng.sample(cells[c], len(cells[c])) for c in sorted(cells, key=rank.__getitem__)]
            if queues and quota[f] >= len(queues):
                start = spill % len(queues)
                queues = queues[start:] + queues[:start]
                spill = start + quota[f] % len(queues)
            taken = 0
            while taken < quota[f]:
                for q in queues:
                    if q and taken < quota[f]:
                        chosen.append(q.pop())
                        taken += 1
        drawn = self.subset(sorted(chosen))
        drawn.drawn_from = self.drawn_from or len(self)
        return drawn

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
                        f"task {self.name!r}, split {split.name}: groups {[str(g) for g in sorted(shared)[:5]]} are "
                        f"on both {what} sides"
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
            f"{len(unique)} groups (files, or speakers where the task groups by speaker) cannot fill {n_folds} folds: "
            f"give a task with at least {n_folds} (in Python, the task functions take n_folds=)"
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
    files = sorted((p for p in rec.iterdir() if p.suffix.lower() == ".wav" and not _hidden(p)),
                   key=lambda p: _natural_key(p.name))
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
    """ESC-50 (Piczak 2015; GitHub karolpiczak/ESC-50, the ``ESC-50-master`` archive): ``meta/esc50.csv``
    (filename, fold, target, category, esc10, src_file, take) and ``audio/``; the 5 official folds (HEAR's
    ``esc50-v2.0.0-full`` keeps them), grouped by source recording."""
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
    """UrbanSound8K (Salamon et al. 2014): ``metadata/UrbanSound8K.csv`` (slice_file_name, fsID, start, end,
    salience, fold, classID, class) and ``audio/fold{k}/``; the 10 official folds (ARCH keeps them), grouped
    by Freesound recording (fsID)."""
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


# ------------------------------------------------------------------------ HEAR's own k-fold split, NSynth 5h


def hear_str2int(s: str) -> int:
    """hear-preprocess's ``util/luigi.py:str2int``: a string's SHA-1 as an int mod 2**32 - 1 (its RNG seeds)."""
    return int(hashlib.sha1(s.encode("utf-8")).hexdigest(), 16) % (2**32 - 1)


def hear_kfolds(keys: list[str], labels: list[tuple[str, ...]], n_folds: int, retries: int = 1000) -> list[str]:
    """HEAR's ``new_split_kfold`` fold names (``fold00`` ...) for examples with split keys `keys`.

    hear-preprocess 2021 ``pipeline.py``, ``ExtractMetadata.split_k_folds``: the unique keys sorted, shuffled
    by ``random.Random("split_k_folds")`` (then ``"split_k_folds_retry_{i}"``), cut into `n_folds` parts by
    ``np.array_split``; the first seed whose every fold holds every label wins. Its default key is the file
    stem, so the same files give HEAR's folds.
    """
    unique = sorted(set(keys))
    if len(unique) < n_folds:
        raise ValueError(f"{len(unique)} files cannot fill {n_folds} folds; is the dataset folder complete?")
    every = {c for ls in labels for c in ls}
    for attempt in range(retries):
        seed = "split_k_folds" if attempt == 0 else f"split_k_folds_retry_{attempt - 1}"
        shuffled = list(unique)
        random.Random(seed).shuffle(shuffled)
        fold_of = {}
        for j, part in enumerate(np.array_split(np.arange(len(shuffled)), n_folds)):
            fold_of.update((shuffled[int(i)], f"fold{j:02d}") for i in part)
        folds = [fold_of[k] for k in keys]
        seen: dict[str, set[str]] = {}
        for fold, ls in zip(folds, labels):
            seen.setdefault(fold, set()).update(ls)
        if all(s == every for s in seen.values()):
            return folds
    raise ValueError(f"no HEAR fold seed out of {retries} puts every label in each of {n_folds} folds; "
                     "a class has fewer files than folds")


def _hear_subsample(stems: list[str], split: str, max_files: int) -> set[str]:
    """hear-preprocess ``SubsampleSplit.run``: stems sorted, shuffled by pandas ``sample(frac=1,
    random_state=str2int(f"SubsampleSplit({split})"))`` (= ``np.random.RandomState(seed).permutation``), the
    first `max_files` kept."""
    ordered = sorted(stems)
    order = np.random.RandomState(hear_str2int(f"SubsampleSplit({split})")).permutation(len(ordered))
    return {ordered[i] for i in order[:max_files]}


def _hidden(path: Path, root: Path | None = None) -> bool:
    """A hidden file, as macOS's AppleDouble "._name.wav" beside each file copied from a Mac: not a recording (one
    stopped FSDD with "has no label"; found from outside); with `root`, also one in a hidden folder below it (a
    Jupyter ".ipynb_checkpoints" copy of a recording landed in another fold than the recording)."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(part.startswith(".") for part in parts)


def _audio_files(folder: Path) -> list[Path]:
    """The recordings under `folder`, linked folders followed (as a class folder's), in natural order."""
    return sorted((p for p in walk_audio(folder, AUDIO_EXTENSIONS)[0] if not _hidden(p, folder)),
                  key=lambda p: _natural_key(p.name))


# ------------------------------------------------------------------------- the paper's other datasets


VIVAE_NAME = re.compile(r"^S(\d+)_([A-Za-z]+)_")  # as ARCH reads it: speaker, emotion, then anything


def vivae(root: Path | str) -> Task:
    """VIVAE 1.0 (Holz et al. 2022, Zenodo 4066235): ``full_set/S{speaker}_{emotion}_{intensity}_{take}.wav``
    (e.g. ``S01_achievement_low_01.wav``), 11 speakers, 6 emotions.

    ARCH's protocol (``arch_eval/evaluation/classification/sound/vivae.py``): label = emotion, one fold per
    speaker (leave-one-speaker-out; validation on the next speaker), so the probe is tested on an unheard voice.
    """
    root = _require_dir(Path(root), "VIVAE")
    full = root / "full_set"
    if not full.is_dir():
        raise FileNotFoundError(f"VIVAE folder {root} has no full_set/ folder; give the folder that holds full_set/")
    files, labels, folds = [], [], []
    for p in _audio_files(full):
        m = VIVAE_NAME.match(p.stem)
        if m is None:
            raise ValueError(f"VIVAE file {p.name} has no label: names must be S<speaker>_<emotion>_<intensity>_<n>.wav")
        files.append(p)
        labels.append((m.group(2),))
        folds.append(f"S{int(m.group(1)):02d}")
    if not files:
        raise FileNotFoundError(f"no audio files in {full}")
    return Task("vivae", files, labels, sorted({ls[0] for ls in labels}), False, folds, "folds", list(folds))


NSYNTH_SPLITS = {"train": "train", "valid": "valid", "test": "test"}


def nsynth_pitch(root: Path | str, hours: float | None = 5.0) -> Task:
    """NSynth 2.2.3 (Engel et al. 2017) pitch, HEAR's ``nsynth_pitch-v2.2.3-5h``: ``nsynth-{train,valid,test}/
    examples.json`` (note_str -> {pitch, ...}) and ``nsynth-{split}/audio/{note_str}.wav`` (4 s, 16 kHz).

    As hear-preprocess ``nsynth_pitch.py``: label = MIDI pitch, only pitches 21-108 (88 piano keys), NSynth's
    own train / valid / test split; ``hours=5`` keeps HEAR's 5 h subsample (train 4,000, valid 500, test 500
    files of 4 s: 5 h x 80/90, x 10/90 and x 10/90, drawn as hear-preprocess ``SubsampleSplit`` does, see
    `_hear_subsample`). ``hours=None`` keeps every file.
    """
    root = _require_dir(Path(root), "NSynth")
    files, labels, folds = [], [], []
    percent = {"train": 80, "valid": 10, "test": 10}  # hear-preprocess pipeline.py: 80/10/10, of 90 train+valid
    for split in NSYNTH_SPLITS:
        folder = root / f"nsynth-{split}"
        meta = _require_file(folder / "examples.json", f"NSynth {split} examples.json")
        notes = {k: v for k, v in json.loads(meta.read_text()).items() if 21 <= int(v["pitch"]) <= 108}
        keep = set(notes) if hours is None else _hear_subsample(
            list(notes), split, int(3600 * hours * percent[split] / 90 / 4.0))
        for stem in sorted(keep):
            files.append(folder / "audio" / f"{stem}.wav")
            labels.append((str(int(notes[stem]["pitch"])),))
            folds.append(split)
    name = "nsynth-pitch" + ("" if hours is None else f"-{hours:g}h")
    return Task(name, files, labels, sorted({ls[0] for ls in labels}, key=int), False, folds, "fixed")


CREMA_D_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def crema_d(root: Path | str, n_folds: int = 5) -> Task:
    """CREMA-D (Cao et al. 2014; GitHub CheyneyComputerScience/CREMA-D): ``AudioWAV/{actor}_{sentence}_
    {emotion}_{level}.wav`` (e.g. ``1001_DFA_ANG_XX.wav``); label = the emotion code (ANG, DIS, FEA, HAP,
    NEU, SAD).

    HEAR's ``tfds_crema_d-1.0.0-full`` protocol: 5 new folds by file (its split key is the file, not the
    actor), drawn with `hear_kfolds`. HEAR keyed the files by TFDS id, so the folds are HEAR's algorithm on
    the original names, not HEAR's exact folds; actors do cross folds, as in HEAR.
    """
    root = _require_dir(Path(root), "CREMA-D")
    audio = root / "AudioWAV"
    if not audio.is_dir():
        raise FileNotFoundError(f"CREMA-D folder {root} has no AudioWAV/ folder; give the folder that holds AudioWAV/")
    files, labels = [], []
    for p in _audio_files(audio):
        parts = p.stem.split("_")
        if len(parts) != 4 or parts[2] not in CREMA_D_EMOTIONS:
            raise ValueError(f"CREMA-D file {p.name} has no emotion code: names must be "
                             f"actor_sentence_EMOTION_level.wav with EMOTION in {', '.join(CREMA_D_EMOTIONS)}")
        files.append(p)
        labels.append((parts[2],))
    if not files:
        raise FileNotFoundError(f"no audio files in {audio}")
    stems = [p.stem for p in files]
    classes = sorted({ls[0] for ls in labels})
    return Task("crema-d", files, labels, classes, False, hear_kfolds(stems, labels, n_folds), "folds", stems)


# hear-preprocess fsd50k.py: "These 12 train files have length >= 30sec ... and thus should be removed"
FSD50K_TOO_LONG = frozenset({83299, 83298, 121426, 121351, 121472, 121471, 124796, 397150, 124797, 124800,
                             124834, 124858})


def fsd50k(root: Path | str) -> Task:
    """FSD50K 1.0 (Fonseca et al. 2021, Zenodo 4060432): ``FSD50K.ground_truth/dev.csv`` (fname, labels,
    mids, split: train / val) and ``eval.csv`` (fname, labels, mids), audio ``FSD50K.dev_audio/{fname}.wav``
    and ``FSD50K.eval_audio/{fname}.wav``; labels comma-separated (200 classes, multi-label, mAP).

    HEAR's ``fsd50k-v1.0-full``: the dataset's fixed split (dev train -> train, dev val -> valid, eval -> test),
    without the 12 dev files over 30 s that hear-preprocess drops.
    """
    root = _require_dir(Path(root), "FSD50K")
    files, labels, folds = [], [], []
    for csv_name, audio_dir in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        meta = _require_file(root / "FSD50K.ground_truth" / csv_name, f"FSD50K ground truth {csv_name}")
        with open(meta, newline="") as f:
            reader = csv.DictReader(f)
            need = {"fname", "labels"} | ({"split"} if csv_name == "dev.csv" else set())
            if not need <= set(reader.fieldnames or []):
                raise ValueError(f"{meta}: expected columns {sorted(need)}, found {reader.fieldnames}")
            for row in reader:
                if csv_name == "dev.csv" and int(row["fname"]) in FSD50K_TOO_LONG:
                    continue
                files.append(root / audio_dir / f"{row['fname']}.wav")
                labels.append(tuple(s.strip() for s in row["labels"].split(",") if s.strip()))
                folds.append("test" if csv_name == "eval.csv" else {"val": "valid"}.get(row["split"], row["split"]))
    classes = sorted({c for ls in labels for c in ls})
    return Task("fsd50k", files, labels, classes, True, folds, "fixed")


def vocal_imitation(root: Path | str, n_folds: int = 3) -> Task:
    """Vocal Imitation Set 1.1.3 (Kim et al. 2018, Zenodo 1340763): ``VocalImitationSet/vocal_imitations.txt``
    (tab-separated; included, imitation_filename, reference_filename, ...) and the audio under
    ``vocal_imitations/included/``.

    HEAR's ``vocal_imitation-v1.1.3-full``: the included imitations, label = the imitated reference recording
    (302 classes), 3 new folds by file (`hear_kfolds`, HEAR's split key: the file stem, so the same files give
    HEAR's folds); scored by mAP, HEAR's primary score for this task.
    """
    root = _require_dir(Path(root), "Vocal Imitation")
    meta = _require_file(root / "vocal_imitations.txt", "Vocal Imitation metadata")
    audio = root / "vocal_imitations" / "included"
    with open(meta, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        need = {"included", "imitation_filename", "reference_filename"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{meta}: expected tab-separated columns {sorted(need)}, found {reader.fieldnames}")
        rows = [r for r in reader if r["included"].strip().lower() in ("1", "true", "1.0")]
    files = [audio / r["imitation_filename"] for r in rows]
    labels = [(r["reference_filename"],) for r in rows]
    if not files:
        raise FileNotFoundError(f"{meta} lists no included imitation")
    stems = [p.stem for p in files]
    classes = sorted({ls[0] for ls in labels})
    return Task("vocal-imitation", files, labels, classes, False, hear_kfolds(stems, labels, n_folds), "folds",
                stems, metric="mAP")


def libricount(root: Path | str, n_folds: int = 5) -> Task:
    """LibriCount10-0dB 1.0 (Stöter et al. 2018, Zenodo 1216072): ``test/{count}_{id}.wav`` (5 s mixtures of
    0-10 speakers; the zip's json annotations are not needed).

    HEAR's ``libricount-v1.0.0-hear2021-full``: label = the speaker count (11 classes), 5 new folds by file
    (`hear_kfolds` with HEAR's split key, the file stem, so the same files give HEAR's folds).
    """
    root = _require_dir(Path(root), "LibriCount")
    folder = root / "test" if (root / "test").is_dir() else root
    files = [p for p in _audio_files(folder) if p.suffix.lower() == ".wav"]
    if not files:
        raise FileNotFoundError(f"no .wav files in {folder}; expected LibriCount's test/ folder")
    labels = []
    for p in files:
        count = p.stem.split("_")[0]
        if not count.isdigit():
            raise ValueError(f"LibriCount file {p.name} has no speaker count: names must be <count>_<id>.wav")
        labels.append((str(int(count)),))
    stems = [p.stem for p in files]
    classes = sorted({ls[0] for ls in labels}, key=int)
    return Task("libricount", files, labels, classes, False, hear_kfolds(stems, labels, n_folds), "folds", stems)


# ------------------------------------------------------------------------------------------------ HEAR


def hear_task(root: Path | str) -> Task:
    """A task folder preprocessed by hear-preprocess 2021.x (scene tasks only; as in the HEAR 2021 release,
    e.g. ``esc50-v2.0.0-full/``).

    Reads ``task_metadata.json`` (prediction_type, split_mode, evaluation: its first score is the task's
    metric, top1_acc / pitch_acc -> accuracy, mAP -> mAP), ``labelvocabulary.csv`` (idx, label), one
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
    primary = (meta.get("evaluation") or [None])[0]
    metric = HEAR_METRICS.get(primary) if not multilabel else "mAP"
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
    return Task(root.name, files, labels, classes, multilabel, folds, split_mode, metric=metric)


# ------------------------------------------------------------------------------- generic folder, CSV


def label_folder(root: Path | str, n_folds: int = 5, seed: int = 0) -> Task:
    """``root/<label>/<file>``: one subfolder per class. No groups are known, so each file is its own group
    and files are spread over `n_folds` folds with `seed`; prefer a CSV manifest with groups where one source
    recording yields several files."""
    root = _require_dir(Path(root), "label")
    dangling = sorted(p.name for p in root.iterdir() if p.is_symlink() and not p.exists())
    if dangling:  # neither a class folder nor a file: said, not silently dropped
        warnings.warn(f"{root}: {', '.join(dangling[:3])}{' ...' if len(dangling) > 3 else ''}: symbolic link(s) to "
                      "nothing, left out", stacklevel=2)
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        raise ValueError(
            f"{root}: audio file(s) {loose[:3]} have no label: put every file in a subfolder named by its class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders; expected root/<label>/<audio file>")
    files, labels, groups = [], [], []
    first: dict[str, tuple[Path, str]] = {}  # a recording's real path -> where it was met first, and its class
    for c in classes:
        # symbolic links to folders followed (rglob does not); an audio-named link to nothing is kept, so that the
        # evaluation reports it unreadable rather than dropping it unseen
        walked, broken, _ = walk_audio(root / c, AUDIO_EXTENSIONS)
        found = sorted(p for p in walked + [p for p, _ in broken] if not _hidden(p, root / c))
        if not found:
            raise ValueError(f"{root}: class {c!r} has no examples (no audio file in {root / c})")
        for path in found:  # one recording reached twice through links: once in its class, refused across two
            real = os.path.realpath(path)
            if real in first:
                seen, label = first[real]
                if label != c:
                    raise ValueError(f"{root}: {seen} (class {label!r}) and {path} (class {c!r}) are the same "
                                     "recording, reached through a symbolic link: a recording belongs to one class "
                                     "(remove the link)")
                continue
            first[real] = (path, c)
            files.append(path)
            labels.append((c,))
            groups.append(real)  # its real path: a recording never on both sides of a split
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
        if path.is_dir():
            raise ValueError(f"CSV manifest {path} is a folder: give the .csv file (or folder:{path} for a folder "
                             "of class subfolders)")
        raise FileNotFoundError(f"CSV manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]  # "path, label" too
        columns = set(reader.fieldnames)
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
    first: dict[Path, int] = {}
    for k, file in enumerate(files):  # one recording twice: two labels, or one counted twice (found from outside)
        if file in first:
            j = first[file]
            what = (f"with labels {';'.join(labels[j])!r} and {';'.join(labels[k])!r}" if labels[j] != labels[k]
                    else "twice")
            raise ValueError(f"{path}, lines {j + 2} and {k + 2}: {rows[k]['path']!r} is listed {what}; list each "
                             "file once (several labels: separate them with ';' on one line)")
        first[file] = k
    has_folds = "fold" in columns
    if has_folds and not all(folds):
        raise ValueError(f"{path}: the 'fold' column is empty on some rows; fill it or drop the column")
    if not has_folds:
        folds = grouped_folds(groups, n_folds, seed)
    if has_folds and {f.lower() for f in folds} <= set(FIXED_SPLITS):  # "Train", "VALID": the same fixed split
        folds = [f.lower() for f in folds]
    split_mode = "fixed" if has_folds and set(folds) <= set(FIXED_SPLITS) else "folds"
    named = sorted(set(folds) & set(FIXED_SPLITS)) if has_folds else []
    if split_mode == "folds" and named:  # a fixed split with one misspelt name would be read as folds
        others = sorted(set(folds) - set(FIXED_SPLITS))
        raise ValueError(f"{path}: the 'fold' column mixes split names ({', '.join(named)}) with "
                         f"{', '.join(others[:5])}: a fixed split uses exactly train, valid and test (any case); "
                         "cross-validation folds use other names (1, 2, 3, ...)")
    multilabel = any(len(ls) > 1 for ls in labels)
    classes = sorted({c for ls in labels for c in ls})
    task = Task(path.stem, files, labels, classes, multilabel, folds, split_mode, groups)
    task.check_group_disjoint()
    return task


# ------------------------------------------------------------------------------------------ task specs

TASK_LOADERS = {
    "esc50": esc50, "us8k": urbansound8k, "vivae": vivae, "nsynth-pitch-5h": nsynth_pitch, "crema-d": crema_d,
    "fsd50k": fsd50k, "vocal-imitation": vocal_imitation, "libricount": libricount, "hear": hear_task,
    "folder": label_folder, "csv": csv_manifest,
}
TASK_KINDS = ("fsdd", "fsdd-digit", "fsdd-speaker", *TASK_LOADERS)


def parse_task_spec(spec: str) -> list[Task]:
    """``KIND[:PATH]`` -> tasks. ``fsdd`` gives two tasks (digit, speaker); PATH is optional for the FSDD
    kinds only (default: `default_fsdd_root`). Kinds: fsdd, fsdd-digit, fsdd-speaker, esc50, us8k, vivae,
    nsynth-pitch-5h, crema-d, fsd50k, vocal-imitation, libricount (each PATH: the dataset's own folder, see
    the loaders), hear (a HEAR task folder), folder, csv."""
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
    return [TASK_LOADERS[kind](path)]
