"""The paper's task suite: each dataset's own layout and the HEAR task format, written as tiny synthetic stand-ins
(short sines per class, plus noise), found under one data root and run end to end by `doppel-torch eval --suite`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from doppel_torch.eval.cli import eval_command
from doppel_torch.eval.metrics import mean_average_precision, score
from doppel_torch.eval.suite import PAPER_SUITE, find_suite
from doppel_torch.eval.tasks import (
    FSD50K_TOO_LONG, Task, _hear_subsample, crema_d, fsd50k, hear_kfolds, hear_str2int, libricount, nsynth_pitch,
    parse_task_spec, vivae, vocal_imitation,
)

SR = 16000


def _wav(path, label_index: int, k: int, seconds: float = 0.25) -> None:
    """A sine whose pitch encodes the class (so a probe can learn it), with a little seeded noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(1000 * label_index + k)
    x = 0.5 * np.sin(2 * np.pi * 220.0 * 2 ** (label_index / 2) * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(path, x.astype(np.float32), SR)


def make_esc50_hear(root):
    """ESC-50 as hear-preprocess writes it: tasks/esc50-v2.0.0-full/ with fold00..04."""
    task = root / "tasks" / "esc50-v2.0.0-full"
    task.mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps(dict(
        task_name="esc50", version="v2.0.0", embedding_type="scene", prediction_type="multiclass",
        split_mode="presplit_kfold", nfolds=5, evaluation=["top1_acc", "mAP", "d_prime", "aucroc"],
        splits=[f"fold{k:02d}" for k in range(5)])))
    (task / "labelvocabulary.csv").write_text("idx,label\n0,Dog\n1,Rain\n")
    for k in range(5):
        labels = {}
        for c, name in enumerate(("Dog", "Rain")):
            for j in range(2):
                fname = f"{k}-{c}{j}.wav"
                _wav(task / "16000" / f"fold{k:02d}" / fname, c, 10 * k + j)
                labels[fname] = [name]
        (task / f"fold{k:02d}.json").write_text(json.dumps(labels))


def make_us8k(root):
    base = root / "UrbanSound8K"
    rows = []
    for fold in (1, 2, 3):
        for c, name in enumerate(("dog_bark", "siren")):
            for j in range(2):
                fname = f"{fold}{c}{j}-{c}-0-{j}.wav"
                _wav(base / "audio" / f"fold{fold}" / fname, c, 10 * fold + j)
                rows.append([fname, f"{fold}{c}{j}", 0, 1, 1, fold, c, name])
    (base / "metadata").mkdir(parents=True)
    with open(base / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)


def make_vivae(root, speakers=(1, 2, 3)):
    for s in speakers:
        for c, emotion in enumerate(("achievement", "fear")):
            for j in range(2):
                _wav(root / "VIVAE" / "full_set" / f"S{s:02d}_{emotion}_{('low', 'peak')[j]}_{j + 1:02d}.wav", c, s + j)


def make_nsynth(root, per_split=None):
    """nsynth/nsynth-{split}/examples.json + audio/; pitches 20 and 109 lie outside HEAR's 21-108 and are dropped."""
    per_split = per_split or {"train": 4, "valid": 2, "test": 2}
    for split, n in per_split.items():
        folder = root / "nsynth" / f"nsynth-{split}"
        examples = {}
        for c, pitch in enumerate((60, 67, 20, 109)):
            for j in range(n):
                note = f"keyboard_acoustic_{split[:2]}{j:03d}-{pitch:03d}-100"
                examples[note] = dict(note_str=note, pitch=pitch, velocity=100, instrument_family_str="keyboard")
                if pitch in (60, 67):
                    _wav(folder / "audio" / f"{note}.wav", c, j)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "examples.json").write_text(json.dumps(examples))


def make_crema_d(root):
    for actor in range(1001, 1006):
        for c, emotion in enumerate(("ANG", "SAD")):
            _wav(root / "CREMA-D" / "AudioWAV" / f"{actor}_DFA_{emotion}_XX.wav", c, actor)


def make_fsd50k(root):
    base = root / "FSD50K"
    gt = base / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    labels = ["Bark", "Rain", "Bark,Rain"]
    dev, ev = [], []
    for i in range(12):
        split = "train" if i < 9 else "val"
        _wav(base / "FSD50K.dev_audio" / f"{i}.wav", i % 3, i)
        dev.append([i, labels[i % 3], "/m/x", split])
    dev.append([next(iter(FSD50K_TOO_LONG)), "Bark", "/m/x", "train"])  # listed, dropped as HEAR drops it
    for i in range(100, 106):
        _wav(base / "FSD50K.eval_audio" / f"{i}.wav", i % 3, i)
        ev.append([i, labels[i % 3], "/m/x"])
    for name, header, rows in (("dev.csv", ["fname", "labels", "mids", "split"], dev),
                               ("eval.csv", ["fname", "labels", "mids"], ev)):
        with open(gt / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def make_vocal_imitation(root):
    base = root / "VocalImitationSet"
    rows = []
    for c, ref in enumerate(("000Animal_dog.wav", "001Water_rain.wav")):
        for j in range(4):
            name = f"{c:03d}_{j}_imitation.wav"
            included = 1
            if j < 3:
                _wav(base / "vocal_imitations" / "included" / name, c, j)
            else:
                included = 0  # excluded imitations are left out
            rows.append([name, ref, included, f"p{j}"])
    with open(base / "vocal_imitations.txt", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["imitation_filename", "reference_filename", "included", "participant_id"])
        w.writerows(rows)


def make_libricount(root):
    for count in (0, 1, 2):
        for j in range(5):
            _wav(root / "LibriCount10-0dB" / "test" / f"{count}_{j:04x}-id.wav", count, j)


# ------------------------------------------------------------------------------------ the loaders


def test_vivae_folds_are_speakers(tmp_path):
    make_vivae(tmp_path)
    task = vivae(tmp_path / "VIVAE")
    assert task.classes == ["achievement", "fear"] and task.fold_names() == ["S01", "S02", "S03"]
    split = task.splits()[0]
    assert {task.folds[i] for i in split.test} == {"S01"} and {task.folds[i] for i in split.valid} == {"S02"}
    task.check_group_disjoint()


def test_nsynth_pitch_range_and_hear_5h_subsample(tmp_path):
    make_nsynth(tmp_path, {"train": 40, "valid": 6, "test": 6})
    task = nsynth_pitch(tmp_path / "nsynth")
    assert task.classes == ["60", "67"] and task.split_mode == "fixed" and task.name == "nsynth-pitch-5h"
    assert sorted(set(task.folds)) == ["test", "train", "valid"] and len(task) == 104  # under 5 h: all kept
    assert all(p.is_file() for p in task.files)
    # A 0.0125 h cap keeps int(45 s x 80/90 / 4 s) = 10 train files, chosen as hear-preprocess's SubsampleSplit
    # does: sorted stems, pandas sample(frac=1, random_state=str2int("SubsampleSplit(train)")).
    small = nsynth_pitch(tmp_path / "nsynth", hours=0.0125)
    train = sorted(p.stem for p, f in zip(small.files, small.folds) if f == "train")
    examples = json.loads((tmp_path / "nsynth" / "nsynth-train" / "examples.json").read_text())
    stems = sorted(k for k, v in examples.items() if 21 <= v["pitch"] <= 108)
    perm = np.random.RandomState(hear_str2int("SubsampleSplit(train)")).permutation(len(stems))
    assert train == sorted(stems[i] for i in perm[:10])


def test_crema_d_libricount_vocal_imitation_fsd50k(tmp_path):
    make_crema_d(tmp_path)
    task = crema_d(tmp_path / "CREMA-D")
    assert task.classes == ["ANG", "SAD"] and task.fold_names() == [f"fold{k:02d}" for k in range(5)]
    for fold in task.fold_names():  # HEAR's retry rule: every fold holds every label
        assert {task.labels[i][0] for i in range(len(task)) if task.folds[i] == fold} == {"ANG", "SAD"}

    make_libricount(tmp_path)
    task = libricount(tmp_path / "LibriCount10-0dB")
    assert task.classes == ["0", "1", "2"] and len(task.fold_names()) == 5 and len(task) == 15

    make_vocal_imitation(tmp_path)
    task = vocal_imitation(tmp_path / "VocalImitationSet")
    assert len(task) == 6 and task.metric == "mAP" and not task.multilabel and len(task.fold_names()) == 3
    assert task.classes == ["000Animal_dog.wav", "001Water_rain.wav"] and all(p.is_file() for p in task.files)

    make_fsd50k(tmp_path)
    task = fsd50k(tmp_path / "FSD50K")
    assert task.multilabel and task.metric == "mAP" and len(task) == 18  # the too-long file is dropped
    assert [task.folds.count(s) for s in ("train", "valid", "test")] == [9, 3, 6]
    assert task.targets().sum() == 24  # 6 of the 18 clips carry both labels

    with pytest.raises(ValueError, match="has no emotion code"):
        _wav(tmp_path / "CREMA-D" / "AudioWAV" / "1001_DFA_XYZ_XX.wav", 0, 0)
        crema_d(tmp_path / "CREMA-D")
    assert [t.name for t in parse_task_spec(f"libricount:{tmp_path / 'LibriCount10-0dB'}")] == ["libricount"]


def test_hear_splits_match_hear_preprocess():
    """Against folds and a subsample drawn by hear-preprocess's own code (data/hear_splits.json, written by
    data/make_hear_splits.py, which runs its ExtractMetadata.split_k_folds; kfold0 and kfold4 need HEAR's retry seeds)."""
    golden = json.loads((Path(__file__).parent / "data" / "hear_splits.json").read_text())
    cases = [v for k, v in golden.items() if k.startswith("kfold")]
    assert len(cases) == 5
    for case in cases:
        assert hear_kfolds(case["keys"], [(c,) for c in case["labels"]], case["n_folds"]) == case["folds"]
    sub = golden["subsample"]
    assert _hear_subsample(sub["stems"], sub["split"], len(sub["kept"])) == set(sub["kept"])
    with pytest.raises(ValueError, match="cannot fill"):
        hear_kfolds(["a", "b"], [("x",), ("x",)], 3)
    with pytest.raises(ValueError, match="no HEAR fold seed"):
        hear_kfolds([f"k{i}" for i in range(6)], [("x",)] * 5 + [("y",)], 3, retries=50)


def test_map_of_a_single_label_task_ranks_softmax_probabilities():
    target = torch.tensor([0, 1, 2, 1])
    perfect = torch.nn.functional.one_hot(target, 3).float() * 5
    assert score(perfect, target, False, "mAP") == pytest.approx(1.0)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.5, 0.9], [1.0, 2.0, 0.0]])
    expected = mean_average_precision(torch.softmax(logits, 1), torch.nn.functional.one_hot(target, 3).float())
    assert score(logits, target, False, "mAP") == pytest.approx(expected)
    assert score(logits, target, False) == pytest.approx(0.75)  # accuracy by default


# ------------------------------------------------------------------------------------ the suite end to end


def test_find_suite_reports_where_it_looked(tmp_path):
    make_vivae(tmp_path)
    found, missing = find_suite("paper", tmp_path)
    assert [e.name for e, *_ in found] == ["vivae"] and len(missing) == 7
    assert missing[0] == (
        f"task ESC (esc50): not found (looked for {tmp_path}/esc50-v2.0.0-full/task_metadata.json, "
        f"{tmp_path}/tasks/esc50-v2.0.0-full/task_metadata.json, {tmp_path}/ESC-50-master/meta/esc50.csv, "
        f"{tmp_path}/ESC-50/meta/esc50.csv or {tmp_path}/esc50/meta/esc50.csv)")
    assert [e.column for e in PAPER_SUITE] == ["ESC", "US8K", "VIV", "NSyn", "C-D", "FSD", "VI", "LCount"]
    # a dataset that is there but cannot be used is left out with its reason; the others still run (an empty
    # VIVAE folder stopped the whole suite)
    make_crema_d(tmp_path)
    for wav in (tmp_path / "VIVAE" / "full_set").glob("*.wav"):
        wav.unlink()
    found, missing = find_suite("paper", tmp_path)
    assert [e.name for e, *_ in found] == ["crema-d"], [e.name for e, *_ in found]
    assert any(line.startswith(f"task VIV (vivae): {tmp_path / 'VIVAE'} is there but cannot be used") for line in missing)


def test_eval_suite_paper_end_to_end(tiny_checkpoint, fsdd_root, tmp_path):
    """Seven of the eight tasks (ESC-50 in the HEAR format, six in their own layouts, VIVAE absent) plus FSDD."""
    data = tmp_path / "data"
    for make in (make_esc50_hear, make_us8k, make_nsynth, make_crema_d, make_fsd50k, make_vocal_imitation,
                 make_libricount):
        make(data)
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--suite", "paper", "--data-root", str(data), "--task", f"fsdd-digit:{fsdd_root}",
            "--max-files", "60", "--seeds", "0", "--max-epochs", "3", "--patience", "2", "--out", str(out),
            "--no-cache", "-q"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert f"task VIV (vivae): not found (looked for {data}/VIVAE/full_set or {data}/vivae/full_set)" in result.output
    assert f"task ESC (esc50): 20 files, HEAR at {data}/tasks/esc50-v2.0.0-full" in result.output
    report = json.loads((out / "eval.json").read_text())
    names = ["esc50", "us8k", "nsynth-pitch-5h", "crema-d", "fsd50k", "vocal-imitation", "libricount",
             "fsdd-digit"]
    assert list(report["tasks"]) == names
    metrics = [report["tasks"][n]["metric"] for n in names]
    assert metrics == ["accuracy"] * 4 + ["mAP", "mAP", "accuracy", "accuracy"]
    splits = [len(report["tasks"][n]["splits"]) for n in names]
    assert splits == [5, 3, 1, 5, 1, 3, 5, 6]
    for n in names:
        for res in report["tasks"][n]["results"].values():
            assert res["n"] == len(report["tasks"][n]["splits"]) and 0.0 <= res["mean"] <= 1.0
    header = ("| extractor | ESC (acc) | US8K (acc) | VIV (acc) | NSyn (acc) | C-D (acc) | FSD (mAP) | VI (mAP) | "
              "LCount (acc) | fsdd-digit (acc) |")
    assert header in result.output
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in result.output.splitlines() if line.startswith("| ")}
    for name in (tiny_checkpoint.parent.name, "random-init", "log-mel"):
        assert rows[f"| {name}"][2] == "–" and "±" in rows[f"| {name}"][0]  # VIVAE absent, ESC-50 probed
    assert rows["| (paper: Voice (δ = 0.25))"][:8] == ["58.90", "66.71", "39.45", "32.20", "48.24", "24.12", "9.15",
                                                         "52.95"]
    suite = report["suite"]
    assert [t["format"] for t in suite["tasks"]] == ["HEAR", "own layout", None] + ["own layout"] * 5
    assert suite["missing"] == [line for line in result.output.splitlines() if "not found" in line]
    md = (out / "eval.md").read_text()
    assert "## Suite paper" in md and header in md and "task VIV (vivae): not found" in md


def test_suite_bad_inputs(tmp_path):
    runner = CliRunner()
    result = runner.invoke(eval_command, ["--suite", "paper", "-q"])
    assert result.exit_code == 2 and "--suite and --data-root go together" in result.output
    result = runner.invoke(eval_command, ["-q"])
    assert result.exit_code == 2 and "no task" in result.output
    result = runner.invoke(eval_command, ["--suite", "paper", "--data-root", str(tmp_path), "-q"])
    assert result.exit_code == 1 and "no usable task of suite 'paper' under" in result.output
    assert "task LCount (libricount): not found" in result.output
    result = runner.invoke(eval_command, ["--suite", "paper", "--data-root", str(tmp_path / "nope"), "-q"])
    assert result.exit_code == 2 and "--data-root" in result.output and "does not exist" in result.output


def test_max_files_keeps_every_fold_of_a_many_class_task():
    """--max-files below the number of (fold, class) cells: every fold keeps files, in proportion to its size,
    and the classes kept are the same on every side (a fixed split of 200 classes, as FSD50K's, drawn to 30)."""
    files = [f"/x/{i}.wav" for i in range(1200)]
    labels = [(f"c{i % 200:03d}",) for i in range(1200)]
    folds = ["train"] * 800 + ["valid"] * 200 + ["test"] * 200
    task = Task("t", files, labels, sorted({ls[0] for ls in labels}), False, folds, "fixed").sample(30, seed=1)
    assert [task.folds.count(s) for s in ("train", "valid", "test")] == [20, 5, 5]
    by_split = {s: {ls[0] for ls, f in zip(task.labels, task.folds) if f == s} for s in ("train", "valid", "test")}
    assert by_split["valid"] <= by_split["train"] and by_split["test"] <= by_split["train"]
    # ESC-50's shape: 5 folds x 50 classes, 100 files -> 20 per fold, the same 20 classes in each
    files = [f"/x/{i}.wav" for i in range(2000)]
    labels = [(f"c{i // 5 % 50:02d}",) for i in range(2000)]
    folds = [f"fold{i % 5 + 1}" for i in range(2000)]
    task = Task("esc", files, labels, sorted({ls[0] for ls in labels}), False, folds).sample(100)
    assert len(task.fold_names()) == 5 and len(task.classes) == 20
    assert all(task.folds.count(f) == 20 for f in task.fold_names())
