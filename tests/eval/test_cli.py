"""`doppel-torch eval` end to end on real FSDD audio: report files, baselines, cache, bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from doppel_torch.eval.cli import eval_command

QUICK = ["--max-files", "60", "--seeds", "0,1", "--max-epochs", "10", "--patience", "3", "-q"]


def test_eval_fsdd_end_to_end(tiny_checkpoint, fsdd_root, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [str(tiny_checkpoint), "--task", f"fsdd:{fsdd_root}", "--out", str(out), "--cache-dir", str(cache), *QUICK]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    run_name = tiny_checkpoint.parent.name
    assert list(report["extractors"]) == [run_name, "random-init", "log-mel"]
    assert report["run"]["tasks"] == [f"fsdd:{fsdd_root}"] and report["run"]["max_files"] == 60  # to run it again
    assert report["run"]["versions"]["torch"] == torch.__version__ and report["run"]["device"] == "cpu"
    assert report["extractors"]["random-init"]["key"] == "random-init-seed0-d64-w8"  # same architecture
    assert set(report["tasks"]) == {"fsdd-digit", "fsdd-speaker"}
    for name, n_splits in (("fsdd-digit", 6), ("fsdd-speaker", 5)):
        entry = report["tasks"][name]
        assert entry["n_used"] == 60 and entry["unreadable"] == [] and len(entry["splits"]) == n_splits
        for res in entry["results"].values():
            assert res["n"] == 2 * n_splits and len(res["runs"]) == 2 * n_splits
            assert 0.0 <= res["mean"] <= 1.0 and res["std"] >= 0.0
    md = (out / "eval.md").read_text()
    assert "| extractor | fsdd-digit (accuracy) | fsdd-speaker (accuracy) |" in md
    assert f"| {run_name} |" in result.output and "| log-mel |" in result.output

    # Rerun with seed 0 only: every embedding comes from the cache and the probes reproduce seed 0's scores.
    n_cached = len(list(cache.rglob("*.npy")))
    assert n_cached > 0
    again = CliRunner().invoke(eval_command, args + ["--out", str(tmp_path / "out2"), "--seeds", "0"])
    assert again.exit_code == 0, again.output
    assert len(list(cache.rglob("*.npy"))) == n_cached
    report2 = json.loads((tmp_path / "out2" / "eval.json").read_text())
    for name in report["tasks"]:
        for ext in report["extractors"]:
            first = [r["score"] for r in report["tasks"][name]["results"][ext]["runs"] if r["seed"] == 0]
            assert [r["score"] for r in report2["tasks"][name]["results"][ext]["runs"]] == first


def test_unreadable_file_is_reported_not_fatal(tiny_checkpoint, fsdd_root, tmp_path):
    root = tmp_path / "digits"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for s in ("george", "jackson", "lucas", "theo"):
            shutil.copy(fsdd_root / "recordings" / f"{d}_{s}_0.wav", root / f"d{d}")
    (root / "d1" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (root / "d0" / "._0_george_0.wav").write_bytes(b"\x00\x05\x16\x07")  # macOS's AppleDouble: not a recording
    args = [str(tiny_checkpoint), "--task", f"folder:{root}", "--out", str(tmp_path / "out"), "--no-cache",
            "--no-baselines", *QUICK]
    result = CliRunner().invoke(eval_command, args)  # output holds stderr too (click 8.1 and 8.2+)
    assert result.exit_code == 0, result.output
    assert "warning: digits: 1 unreadable file(s)" in result.output
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["digits"]
    assert entry["n_files"] == 13 and entry["n_used"] == 12
    assert entry["unreadable"][0]["path"].endswith("broken.wav")
    # The reason names no file object ("Error opening <_io.BytesIO object at 0x...>"), only soundfile's reason.
    error = entry["unreadable"][0]["error"]
    assert "BytesIO" not in error and error.startswith("Error in WAV/W64/RF64 file. Malformed"), error
    assert "BytesIO" not in result.output and f"{root / 'd1' / 'broken.wav'}: {error}" in result.output
    assert "broken.wav" in (tmp_path / "out" / "eval.md").read_text()
    import numpy as np
    import soundfile as sf

    sf.write(root / "d2" / "nan.wav", np.full(800, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    result = CliRunner().invoke(eval_command, args)  # its embedding would be NaN: left out like an unreadable file
    assert result.exit_code == 0 and "2 unreadable file(s)" in result.output, result.output
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["digits"]
    assert entry["n_used"] == 12 and {"path": str(root / "d2" / "nan.wav"), "error": "NaN or infinite samples"} in \
        entry["unreadable"], entry["unreadable"]


def test_bad_inputs_give_clear_errors(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(eval_command, [str(tiny_checkpoint), "--task", f"esc50:{tmp_path / 'nope'}", "-q"])
    assert result.exit_code == 2 and "ESC-50 folder" in result.output and "does not exist" in result.output
    result = runner.invoke(eval_command, [str(tiny_checkpoint), "--task", "mnist:/x", "-q"])
    assert result.exit_code == 2 and "unknown task kind 'mnist'" in result.output
    empty_class = tmp_path / "labels"
    (empty_class / "cat").mkdir(parents=True)
    result = runner.invoke(eval_command, [str(tiny_checkpoint), "--task", f"folder:{empty_class}", "-q"])
    assert result.exit_code == 2 and "class 'cat' has no examples" in result.output
    result = runner.invoke(eval_command, [str(tmp_path / "missing.pt"), "--task", "fsdd"])
    assert result.exit_code == 2 and "does not exist" in result.output
    # usage errors, each refused before any work (found from outside: exit 1, some after every file was embedded)
    for extra, message in ((["--seeds", str(10**20)], "seeds must lie in [0, 2^63)"),
                           (["--max-files", "0"], "Invalid value for '--max-files'"),
                           (["--batch-size", "0"], "Invalid value for '--batch-size'"),
                           (["--random-init-seed", str(10**20)], "Invalid value for '--random-init-seed'")):
        result = runner.invoke(eval_command, [str(tiny_checkpoint), "--task", "mnist:/x", "-q", *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    result = runner.invoke(eval_command, [str(text), "--task", "fsdd", "-q"])
    assert result.exit_code == 2 and "Invalid value for CHECKPOINTS" in result.output, result.output


def test_a_cache_it_cannot_write_is_read_and_one_it_cannot_create_goes_unused(tiny_checkpoint, fsdd_root, tmp_path,
                                                                              monkeypatch):
    """A shared, read-only cache (simulated: root writes through any mode) is read and not added to; a --cache-dir
    that cannot be created (a file in the way) is skipped; each in one warning line, and the evaluation runs (both
    were refused before any work)."""
    from doppel_torch.eval.cache import EmbeddingCache

    cache = tmp_path / "cache"
    args = [str(tiny_checkpoint), "--task", f"fsdd-digit:{fsdd_root}", "--no-baselines", "--max-files", "30",
            "--seeds", "0", "--max-epochs", "3", "-q"]
    first = CliRunner().invoke(eval_command, args + ["--cache-dir", str(cache), "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 30
    entries[0].unlink()  # one embedding to compute again: not written back
    hits = []
    real_get = EmbeddingCache.get
    monkeypatch.setattr(EmbeddingCache, "unwritable", lambda self: "Read-only file system")
    monkeypatch.setattr(EmbeddingCache, "get", lambda self, *a, **k: hits.append(1) or real_get(self, *a, **k))
    shared = CliRunner().invoke(eval_command, args + ["--cache-dir", str(cache), "--out", str(tmp_path / "b")])
    assert shared.exit_code == 0, shared.output
    assert f"warning: cannot write in --cache-dir {cache} (Read-only file system): reading" in shared.output
    assert len(hits) == 30 and len(list(cache.rglob("*.npy"))) == 29 and "Traceback" not in shared.output
    monkeypatch.undo()
    (tmp_path / "afile").write_text("x")
    blocked = CliRunner().invoke(eval_command, args + ["--cache-dir", str(tmp_path / "afile" / "c"), "--out",
                                                       str(tmp_path / "c")])
    assert blocked.exit_code == 0, blocked.output
    assert "warning: cannot create --cache-dir" in blocked.output and "without the embedding cache" in blocked.output
    assert json.loads((tmp_path / "c" / "eval.json").read_text())["tasks"]["fsdd-digit"]["n_used"] == 30


def test_a_test_class_the_training_side_lacks_is_warned_about(tiny_checkpoint, fsdd_root, tmp_path):
    """A manifest whose digit 2 lives in fold 1 only: the split testing on fold 1 trains on fold 3, which never shows
    a 2; the report lists it per split and the command says so in one line."""
    rows = ["path,label,fold"]
    for d, folds in ((0, (1, 2, 3)), (1, (1, 2, 3)), (2, (1, 1))):
        for k, fold in enumerate(folds):
            rows.append(f"{fsdd_root / 'recordings' / f'{d}_george_{k}.wav'},{d},{fold}")
    manifest = tmp_path / "digits.csv"
    manifest.write_text("\n".join(rows) + "\n")
    args = [str(tiny_checkpoint), "--task", f"csv:{manifest}", "--out", str(tmp_path / "out"), "--no-cache",
            "--no-baselines", "--seeds", "0", "--max-epochs", "3", "-q"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]["digits"]
    assert entry["unseen_in_training"] == {"1": ["2"]}, entry["unseen_in_training"]
    assert "Test classes the split's training side lacks (no probe gets them right): split 1: 2." in (
        tmp_path / "out" / "eval.md").read_text()
    assert ("warning: digits: in 1 of its 3 split(s) the test side has classes the training side lacks (split 1: 2)"
            in result.output), result.output


def test_a_fixed_split_without_valid_is_refused_before_embedding(tiny_checkpoint, fsdd_root, tmp_path, monkeypatch):
    """A manifest of train / test folds only (the paper probe stops early on "valid"): one line, before any audio is
    embedded (it was refused after every file of the task had been embedded)."""
    import importlib

    evaluation = importlib.import_module("doppel_torch.eval.evaluate")
    monkeypatch.setattr(evaluation, "extract_features", lambda *a, **k: pytest.fail("embedded before refusing"))
    rows = ["path,label,fold"] + [f"{fsdd_root / 'recordings' / f'{d}_george_{k}.wav'},{d},{'train' if k else 'test'}"
                                  for d in range(2) for k in range(3)]
    manifest = tmp_path / "fixed.csv"
    manifest.write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(eval_command, [str(tiny_checkpoint), "--task", f"csv:{manifest}", "--no-cache",
                                               "--no-baselines", "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "split test: empty train, valid or test set (4, 0, 2 files)" in result.output, result.output


def test_nothing_to_evaluate_is_a_usage_error():
    result = CliRunner().invoke(eval_command, ["--task", "fsdd", "--no-baselines"])
    assert result.exit_code == 2 and "nothing to evaluate" in result.output


def test_probe_protocols_are_named_in_the_report(tiny_checkpoint, fsdd_root, tmp_path):
    args = [str(tiny_checkpoint), "--task", f"fsdd-digit:{fsdd_root}", "--no-baselines", "--max-files", "60",
            "--seeds", "0", "--cache-dir", str(tmp_path / "cache"), "-q"]
    result = CliRunner().invoke(eval_command, args + ["--probe", "arch", "--max-epochs", "5", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "Probe protocol: arch." in result.output
    assert "| extractor | fsdd-digit (accuracy) | fsdd-digit (macro F1) |" in result.output
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert report["probe"]["kind"] == "arch" and report["probe"]["max_epochs"] == 5
    assert report["probe"]["standardize"] is False and "AdamW" in report["probe"]["description"]
    assert "f1_mean" in report["tasks"]["fsdd-digit"]["results"][tiny_checkpoint.parent.name]
    assert "Probe: arch (linear, AdamW" in (tmp_path / "a" / "eval.md").read_text()
    result = CliRunner().invoke(eval_command, args + ["--probe", "linear", "--max-epochs", "3", "--out", str(tmp_path / "l")])
    assert result.exit_code == 0 and "Probe protocol: paper." in result.output
    result = CliRunner().invoke(eval_command, args + ["--probe", "mlp-grid"])
    assert result.exit_code == 2 and "'mlp-grid' was replaced by 'hear'" in result.output
    result = CliRunner().invoke(eval_command, args + ["--probe", "arch", "--patience", "3"])
    assert result.exit_code == 2 and "without early stopping" in result.output


def test_ctrl_c_keeps_the_finished_tasks(tiny_checkpoint, fsdd_root, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the console script raises as one) during the second task: the first task's results
    are written, the report says which task was cut, and the command stops as an interrupt (no report of it as done)."""
    import importlib

    evaluation = importlib.import_module("doppel_torch.eval.evaluate")  # the package's `evaluate` is the function
    real = evaluation._evaluate_task

    def cut_second(task, *args):
        if task.name == "fsdd-speaker":
            raise KeyboardInterrupt
        return real(task, *args)

    monkeypatch.setattr(evaluation, "_evaluate_task", cut_second)
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--task", f"fsdd:{fsdd_root}", "--out", str(out), "--no-cache", "--no-baselines",
            *QUICK]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 1 and "wrote the 1 finished task(s)" in result.output, result.output  # click: Abort
    report = json.loads((out / "eval.json").read_text())
    assert list(report["tasks"]) == ["fsdd-digit"] and report["interrupted"] == dict(task="fsdd-speaker",
                                                                                     finished=["fsdd-digit"])


def test_a_task_that_cannot_be_probed_keeps_the_finished_ones(tiny_checkpoint, fsdd_root, tmp_path):
    """Found from outside: a later task whose files were all unreadable threw away the finished tasks' probes (exit
    1, nothing written); now they are written, marked partial, and the error is the one line."""
    junk = tmp_path / "junk"
    for label in ("a", "b"):
        (junk / label).mkdir(parents=True)
        for k in range(3):
            (junk / label / f"{k}.wav").write_bytes(b"not audio")
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--task", f"fsdd:{fsdd_root}", "--task", f"folder:{junk}", "--out", str(out),
            "--no-cache", "--no-baselines", *QUICK]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 1 and "wrote the 2 finished task(s)" in result.output, result.output
    assert "Error: task 'junk': none of its 6 files could be read" in result.output, result.output
    report = json.loads((out / "eval.json").read_text())
    assert list(report["tasks"]) == ["fsdd-digit", "fsdd-speaker"] and report["failed"]["task"] == "junk"
    assert "**Partial report**: task junk could not be probed" in (out / "eval.md").read_text()


def test_max_files_too_small_for_two_classes_is_refused(tiny_checkpoint, fsdd_root, tmp_path):
    """--max-files 5 kept one digit in every fold: each probe, chance too, scored 100 %. Now one line before any
    work; a draw that keeps fewer files says how many of the task's files and classes it keeps."""
    args = [str(tiny_checkpoint), "--task", f"fsdd-digit:{fsdd_root}", "--no-baselines", "-q",
            "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(eval_command, [*args, "--max-files", "5"])
    assert result.exit_code != 0 and "leaves task fsdd-digit with 1 of its 10 classes" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o" / "eval.json").exists()
    result = CliRunner().invoke(eval_command, [*args, "--max-files", "2"])  # fewer files than 3 folds: says so
    assert result.exit_code != 0 and "give --max-files 3 or more" in result.output, result.output
    result = CliRunner().invoke(eval_command, [*args[:2], f"csv:{fsdd_root}", *args[3:]])  # a folder as csv:
    assert result.exit_code != 0 and "is a folder: give the .csv file" in result.output, result.output
    result = CliRunner().invoke(eval_command, [*args, "--max-files", "30", "--seeds", "0", "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "task fsdd-digit: 30 of 3000 files (--max-files), 5 of 10 classes" in result.output
    report = json.loads((tmp_path / "o" / "eval.json").read_text())["tasks"]["fsdd-digit"]
    assert report["n_files"] == 30 and report["drawn_from"] == 3000
    md = (tmp_path / "o" / "eval.md").read_text()
    assert "30 of 30 files (drawn by --max-files from the task's 3000), 5 classes" in md


def test_a_task_of_one_class_and_repeated_seeds_are_refused(tiny_checkpoint, fsdd_root, tmp_path):
    """One class (a folder with one class subfolder, or one whose other classes are all unreadable) scored 100 %,
    chance too; --seeds 0,0 doubled n and narrowed the std (found from outside)."""
    root = tmp_path / "half"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, s in enumerate(("george", "jackson", "lucas", "theo", "nicolas", "yweweler")):
        shutil.copy(fsdd_root / "recordings" / f"0_{s}_0.wav", root / "a")
        (root / "b" / f"bad{i}.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    args = [str(tiny_checkpoint), "--task", f"folder:{root}", "--out", str(tmp_path / "out"), "--no-cache",
            "--no-baselines", *QUICK]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 1 and "task 'half' is left with 1 class (a)" in result.output, result.output
    result = CliRunner().invoke(eval_command, [*args, "--seeds", "0,0"])
    assert result.exit_code == 2 and "seeds must differ" in result.output, result.output


def test_the_json_report_is_strict_json(tmp_path):
    """An mAP task's chance level is NaN: written as null (JSON has no NaN; strict readers refused the file)."""
    from doppel_torch.eval.report import write_report

    report = {"created": "now", "probe": {"kind": "paper"}, "seeds": [0], "extractors": {},
              "tasks": {"tags": {"metric": "mAP", "chance": float("nan"), "results": {}, "n_used": 1, "n_files": 1,
                                 "classes": ["x"], "splits": ["fold1"], "dropped_classes": [], "unreadable": []}}}
    json_path, _ = write_report(report, tmp_path)

    def refuse(name):
        raise ValueError(name)

    assert json.loads(json_path.read_text(), parse_constant=refuse)["tasks"]["tags"]["chance"] is None
