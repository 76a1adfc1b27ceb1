"""Tasks from disk: FSDD folds, the dataset-format loaders on real FSDD audio, and clear errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from doppel_torch.eval.tasks import (
    Task, csv_manifest, esc50, fsdd, grouped_folds, hear_task, label_folder, parse_task_spec, urbansound8k,
)


def _speaker(path) -> str:
    return re.match(r"^\d_([a-z]+)_\d+$", path.stem).group(1)


def test_fsdd_digit_folds_never_share_a_speaker(fsdd_root):
    task = fsdd(fsdd_root, "digit")
    assert len(task) == 3000 and task.classes == [str(d) for d in range(10)]
    splits = task.splits()
    assert len(splits) == 6
    tested = []
    for split in splits:
        # speakers read back from the file names, independently of the task's groups
        sides = [{_speaker(task.files[i]) for i in idx} for idx in (split.train, split.valid, split.test)]
        assert len(sides[2]) == 1 and not (sides[0] & sides[2]) and not (sides[1] & sides[2]) and not (sides[0] & sides[1])
        assert len(split.train) + len(split.valid) + len(split.test) == 3000
        tested += sides[2]
    assert sorted(tested) == sorted({_speaker(p) for p in task.files})  # every speaker is tested once
    task.check_group_disjoint()


def test_fsdd_speaker_folds_split_takes(fsdd_root):
    task = fsdd(fsdd_root, "speaker")
    assert len(task.classes) == 6
    takes = np.array([int(p.stem.split("_")[2]) for p in task.files])
    for split in task.splits():
        test_takes, train_takes = set(takes[split.test]), set(takes[split.train])
        assert not test_takes & train_takes
        assert len(set(np.asarray(task.labels, dtype=object)[split.test].ravel())) == 6  # every speaker tested


def test_sample_keeps_every_fold_and_class(fsdd_root):
    task = fsdd(fsdd_root, "digit").sample(60, seed=3)
    assert len(task) == 60 and len(task.classes) == 10 and len(task.fold_names()) == 6
    assert task.sample(60, seed=3).files == task.files
    # the remainders of the folds spread over the classes (found from outside: at 100 files three digits had 6
    # files, the others 10-12, in every draw)
    for n, per_class in ((100, {10}), (130, {13})):
        counts = Counter(labels[0] for labels in fsdd(fsdd_root, "digit").sample(n, seed=0).labels)
        assert set(counts.values()) == per_class and len(counts) == 10, counts


def test_grouped_folds_keep_groups_together():
    groups = [f"g{i % 17}" for i in range(200)]
    folds = grouped_folds(groups, n_folds=5, seed=1)
    fold_of = {}
    for g, f in zip(groups, folds):
        assert fold_of.setdefault(g, f) == f
    sizes = np.unique(folds, return_counts=True)[1]
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 12  # balanced to within one group
    with pytest.raises(ValueError, match=r"groups \(files, or speakers where the task groups by speaker\) cannot fill"):
        grouped_folds(["a", "b"], n_folds=3)


def _copy_fsdd(fsdd_root, dest, names):
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(fsdd_root / "recordings" / n, dest / n)


def test_esc50_and_urbansound8k_layouts(fsdd_root, tmp_path):
    files = [f"{d}_{s}_{t}.wav" for d in (0, 1) for s in ("george", "theo") for t in range(5)]
    root = tmp_path / "ESC-50"
    _copy_fsdd(fsdd_root, root / "audio", files)
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for i, n in enumerate(files):
            w.writerow([n, i % 5 + 1, n[0], f"digit{n[0]}", False, f"src{i}", "A"])
    task = esc50(root)
    assert task.fold_names() == [f"fold{k}" for k in range(1, 6)] and task.classes == ["digit0", "digit1"]
    assert all(p.is_file() for p in task.files)

    root = tmp_path / "UrbanSound8K"
    (root / "metadata").mkdir(parents=True)
    rows = []
    for i, n in enumerate(files):
        _copy_fsdd(fsdd_root, root / "audio" / f"fold{i % 4 + 1}", [n])
        rows.append([n, f"fs{i // 2}", 0, 1, 1, i % 4 + 1, n[0], f"c{n[0]}"])
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    task = urbansound8k(root)
    assert len(task.fold_names()) == 4 and all(p.is_file() for p in task.files)


def _hear_folder(fsdd_root, root, vocab, extra_unlabelled=False):
    names = sorted(p.name for p in (fsdd_root / "recordings").glob("[0-2]_theo_[0-5].wav"))
    (root).mkdir(parents=True)
    (root / "task_metadata.json").write_text(json.dumps(
        dict(task_name="digits", embedding_type="scene", prediction_type="multiclass", split_mode="new_split_kfold",
             nfolds=3)))
    with open(root / "labelvocabulary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        w.writerows(enumerate(vocab))
    for k in range(3):
        part = [n for i, n in enumerate(names) if i % 3 == k]
        _copy_fsdd(fsdd_root, root / "16000" / f"fold{k:02d}", part)
        (root / f"fold{k:02d}.json").write_text(json.dumps({n: [n[0]] for n in part}))
    if extra_unlabelled:
        _copy_fsdd(fsdd_root, root / "16000" / "fold00", ["9_theo_0.wav"])


def test_hear_task_folder(fsdd_root, tmp_path):
    _hear_folder(fsdd_root, tmp_path / "digits-v1", ["0", "1", "2"])
    task = hear_task(tmp_path / "digits-v1")
    assert task.fold_names() == ["fold00", "fold01", "fold02"] and task.classes == ["0", "1", "2"]
    assert len(task) == 18 and all(p.is_file() for p in task.files) and not task.multilabel


def test_csv_manifest_grouped_splits_and_multilabel(fsdd_root, tmp_path):
    rec = fsdd_root / "recordings"
    rows = [(str(rec / f"{d}_{s}_{t}.wav"), f"{d};{'low' if d < 5 else 'high'}", s)
            for d in range(10) for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler") for t in (0, 1)]
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    task = csv_manifest(path, n_folds=3)
    assert task.multilabel and task.metric == "mAP" and len(task.classes) == 12
    assert task.targets().shape == (120, 12) and task.targets().sum() == 240
    groups = np.asarray(task.groups)
    for split in task.splits():
        assert not set(groups[split.train]) & set(groups[split.test])
        assert not set(groups[split.valid]) & set(groups[split.test])


# ------------------------------------------------------------------------------------------ bad inputs

def test_missing_folders_raise_clear_errors(tmp_path):
    missing = tmp_path / "nope"
    for loader in (lambda p: fsdd(p), esc50, urbansound8k, hear_task, label_folder):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            loader(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        csv_manifest(missing / "m.csv")
    with pytest.raises(FileNotFoundError, match="ESC-50 metadata"):
        esc50(tmp_path)  # folder exists, meta/esc50.csv does not


def test_file_without_label_raises(fsdd_root, tmp_path):
    root = tmp_path / "by_label"
    _copy_fsdd(fsdd_root, root / "zero", ["0_theo_0.wav"])
    _copy_fsdd(fsdd_root, root, ["1_theo_0.wav"])  # loose file: no class folder
    with pytest.raises(ValueError, match=r"have no label.*subfolder"):
        label_folder(root)

    path = tmp_path / "m.csv"
    path.write_text("path,label\na.wav,cat\nb.wav,\n")
    with pytest.raises(ValueError, match=r"line 3: file 'b.wav' has no label"):
        csv_manifest(path)
    path.write_text("path,label\na.wav,cat\nb.wav,dog\n./a.wav,dog\n")  # one file, two labels: a folder task refuses
    with pytest.raises(ValueError, match=r"lines 2 and 4: './a.wav' is listed with labels 'cat' and 'dog'; list each "
                                         r"file once \(several labels: separate them with ';' on one line\)"):
        csv_manifest(path)

    bad = tmp_path / "fsdd_bad"
    _copy_fsdd(fsdd_root, bad / "recordings", ["0_theo_0.wav"])
    shutil.copy(bad / "recordings" / "0_theo_0.wav", bad / "recordings" / "unnamed.wav")
    with pytest.raises(ValueError, match="unnamed.wav has no label"):
        fsdd(bad)

    _hear_folder(fsdd_root, tmp_path / "hear", ["0", "1", "2"], extra_unlabelled=True)
    with pytest.raises(ValueError, match="9_theo_0.wav has no label"):
        hear_task(tmp_path / "hear")


def test_class_with_no_examples_raises(fsdd_root, tmp_path):
    root = tmp_path / "by_label"
    _copy_fsdd(fsdd_root, root / "zero", ["0_theo_0.wav"])
    (root / "seven").mkdir()
    with pytest.raises(ValueError, match="class 'seven' has no examples"):
        label_folder(root)

    _hear_folder(fsdd_root, tmp_path / "hear", ["0", "1", "2", "3"])
    with pytest.raises(ValueError, match=r"\['3'\] have no examples"):
        hear_task(tmp_path / "hear")


def test_task_validation_and_specs(fsdd_root):
    with pytest.raises(ValueError, match="outside the class list"):
        Task("t", ["a", "b", "c"], [("x",), ("y",), ("z",)], ["x", "y"], False, ["0", "1", "2"])
    with pytest.raises(ValueError, match="at least 3 folds"):
        Task("t", ["a", "b"], [("x",), ("x",)], ["x"], False, ["0", "1"])
    with pytest.raises(ValueError, match="unknown task kind"):
        parse_task_spec("mnist:/data")
    with pytest.raises(ValueError, match="needs a path"):
        parse_task_spec("esc50")
    assert [t.name for t in parse_task_spec(f"fsdd:{fsdd_root}")] == ["fsdd-digit", "fsdd-speaker"]


def test_class_folders_follow_linked_folders_and_keep_broken_links(fsdd_root, tmp_path):
    """A class folder may hold symbolic links to folders of recordings (a dataset assembled from links): they are
    followed (rglob did not, and those recordings were silently missing), a link back up is not a loop forever, and
    an audio-named link to nothing stays a file of the task, so the evaluation reports it unreadable."""
    rec = fsdd_root / "recordings"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for k in range(3):
        shutil.copy(rec / f"1_theo_{k}.wav", elsewhere)
    root = tmp_path / "digits"
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        shutil.copy(rec / f"{label}_george_0.wav", root / label)
    (root / "1" / "theo").symlink_to(elsewhere, target_is_directory=True)
    (root / "1" / "up").symlink_to(root / "1", target_is_directory=True)
    (root / "0" / "gone.wav").symlink_to(tmp_path / "nothing.wav")
    task = label_folder(root)
    names = sorted(str(p.relative_to(root)) for p in task.files)
    assert names == ["0/0_george_0.wav", "0/gone.wav", "1/1_george_0.wav", "1/theo/1_theo_0.wav",
                     "1/theo/1_theo_1.wav", "1/theo/1_theo_2.wav"], names
    (root / "2").symlink_to(tmp_path / "no-such-class", target_is_directory=True)  # a class link to nothing: said
    with pytest.warns(UserWarning, match="2: symbolic link\\(s\\) to nothing, left out"):
        assert len(label_folder(root)) == 6
    (root / "2").unlink()
    (root / "1" / "theo_again").symlink_to(elsewhere, target_is_directory=True)  # the same recordings twice: once
    assert len(label_folder(root)) == 6
    (root / "0" / "ones").symlink_to(elsewhere, target_is_directory=True)  # ...and in another class: refused
    with pytest.raises(ValueError, match="are the same recording, reached through a symbolic link"):
        label_folder(root)


def test_a_manifest_fixed_split_in_any_case_and_a_misspelt_one(fsdd_root, tmp_path):
    """fold names Train / VALID / test are the fixed split (they were read as 3 cross-validation folds); a misspelt
    one (tset) beside train / valid / test is refused in one line (it was read as 4 folds)."""
    rec = fsdd_root / "recordings"

    def manifest(folds):
        path = tmp_path / "m.csv"
        path.write_text("path,label,fold\n" + "".join(f"{rec / f'{k % 2}_george_{k}.wav'},{k % 2},{fold}\n"
                                                       for k, fold in enumerate(folds)))
        return path

    task = csv_manifest(manifest(["Train", "VALID", "test", "train", "Valid", "TEST"]))
    assert task.split_mode == "fixed" and sorted(set(task.folds)) == ["test", "train", "valid"]
    with pytest.raises(ValueError, match="mixes split names \\(test, train, valid\\) with tset"):
        csv_manifest(manifest(["train", "valid", "tset", "train", "valid", "test"]))
    assert csv_manifest(manifest(["1", "2", "3", "1", "2", "3"])).split_mode == "folds"


def test_an_excel_manifest_and_a_hidden_folder_of_copies(fsdd_root, tmp_path):
    """A manifest saved by Excel as "CSV UTF-8" (a BOM before 'path') or with "path, label" headers is read (it was
    refused, naming a '\\ufeffpath' column); audio in a hidden folder below a class (Jupyter's .ipynb_checkpoints
    copies) is not an example (a copy landed in another fold than its recording)."""
    rec = fsdd_root / "recordings"
    for header, name in ((["path", "label"], "bom.csv"), (["path", " label"], "spaced.csv")):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8-sig" if name == "bom.csv" else "utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows((str(rec / f"{d}_jackson_{t}.wav"), str(d)) for d in range(3) for t in range(3))
        assert len(csv_manifest(path, n_folds=3)) == 9
    root = tmp_path / "task"
    for label in ("0", "1"):
        (root / label / ".ipynb_checkpoints").mkdir(parents=True)
        for t in range(3):
            shutil.copy(rec / f"{label}_jackson_{t}.wav", root / label)
        shutil.copy(rec / f"{label}_jackson_0.wav", root / label / ".ipynb_checkpoints")
    task = label_folder(root, n_folds=3)
    assert len(task) == 6 and not any(".ipynb_checkpoints" in str(p) for p in task.files)
