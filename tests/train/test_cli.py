"""`doppel-torch train` as users call it: options, printed config, bad options, SIGTERM."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from doppel_torch.train import checkpoint as ckpt_io
from doppel_torch.train.cli import train

from tests.conftest import REPO

TINY_ARGS = [
    "--width", "4", "--embed-dim", "16", "--batch-size", "4", "--device", "cpu", "--precision", "fp32",
    "--no-channels-last", "--no-progress", "--no-tensorboard", "--examples", "0", "--num-workers", "0",
    "--log-every", "1",
]  # fmt: skip


def test_cli_runs_prints_config_and_saves_it(tmp_path, audio_dir):
    args = ["--data", str(audio_dir), "--sounds-per-epoch", "40", "--max-steps", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(train, ["--preset", "cpu-smoke", *args, *TINY_ARGS, "--set", "optim.momentum=0.5"])
    assert result.exit_code == 0, result.output
    assert "no CUDA device: training on CPU" in result.output
    assert "momentum = 0.5" in result.output and "done: step 2" in result.output
    config = ckpt_io.load_checkpoint(tmp_path)["config"]
    assert config["optim"]["momentum"] == 0.5 and config["model"]["width"] == 4
    # Resuming takes the checkpoint's config; only the options given now change it.
    result = CliRunner().invoke(train, ["--resume", str(tmp_path), "--max-steps", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and ckpt_io.load_checkpoint(tmp_path)["step"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--delta", "-1"], "--delta (data.delta) must be a finite number >= 0"),
        (["--mix-layers", "2"], "needs real data: pass --data PATH"),
        (["--data", "/nonexistent/folder"], "not a folder"),
        (["--set", "optim.nope=1"], "unknown config field"),
        (["--set", "optim.epochs"], "expected section.field=value"),
        (["--duration", "0.5"], "raise --duration"),
        (["--synth", "moog"], "Invalid value for '--synth'"),
        (["--delta", "1e9"], "--delta (data.delta) must be a finite number >= 0 and <= 1"),
        (["--batch-size", "0"], "--batch-size (optim.batch_size) (per rank) must be >= 2"),
        (["--set", "optim.batch_size=abc"], "optim.batch_size must be an integer, got 'abc'"),
        (["--set", "run.progress=3"], "run.progress must be true or false, got 3"),
        (["--set", "optim.lr=fast"], "optim.lr must be a number or none, got 'fast'"),
        # found from outside: --lr inf trained to NaN and reported "done"; the others were tracebacks
        (["--lr", "inf"], "--lr (optim.lr) must be finite, got inf"),
        (["--weight-decay", "inf"], "--weight-decay (optim.weight_decay) must be finite, got inf"),
        (["--duration", "inf"], "--duration (data.duration) must be finite, got inf"),
        (["--sounds-per-epoch", str(10**20)], "--sounds-per-epoch (data.sounds_per_epoch) must lie below 2^63"),
        (["--augment", "--augment-group", "0"], "--augment-group (data.augment_group) must be >= 1"),
        (["--data", ""], "--data (data.data) must name a folder, got ''"),
        (["--width", str(2**62)], "--width (model.width) must be in [1, 4096]"),  # a storage-size traceback
        (["--batch-size", str(10**9)], "raise it to at least 1111111111"),  # counted up one by one for minutes  # an unset $DATA: it read the cwd's files
    ],
)
def test_bad_options_give_clear_errors(tmp_path, args, message):
    # A small run, so an option wrongly accepted fails the test in a second instead of training for hours.
    small = ["--sounds-per-epoch", "40", "--max-steps", "1"]
    result = CliRunner().invoke(train, [*TINY_ARGS, *small, "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_delta_rule_is_stated_in_help_for_train_and_sample():
    from doppel_torch.synths.cli import sample

    for command in (train, sample):
        text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
        assert "Perturbation scale, 0 to 1" in text, text


def test_triton_backend_without_cuda_is_a_one_line_error(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the triton backend can run")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    result = CliRunner().invoke(train, [*TINY_ARGS, "--out", str(tmp_path), "--backend", "triton", "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert "Error: --backend triton cannot run here: backend='triton' needs a CUDA GPU" in result.output
    assert not isinstance(result.exception, RuntimeError)


def test_preset_with_resume_is_refused(tmp_path):
    ckpt_io.save_checkpoint(tmp_path / "last.pt", {"config": {}})
    result = CliRunner().invoke(train, ["--preset", "cpu-smoke", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--preset cannot be combined with --resume" in result.output


@pytest.mark.parametrize(
    "signum, workers",
    [(signal.SIGTERM, "0"), (signal.SIGINT, "1")],  # SIGINT goes to the whole process group, as Ctrl-C does
)
def test_signal_writes_a_checkpoint_and_exits(tmp_path, audio_dir, signum, workers):
    args = ["--data", str(audio_dir), "--sounds-per-epoch", "100000", "--out", str(tmp_path)]
    pythonpath = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "doppel_torch.train", *args, *TINY_ARGS, "--num-workers", workers],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    metrics = tmp_path / "metrics.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # header + one logged step
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 128 + signum, text[-2000:]
    assert f"received {signal.Signals(signum).name}" in text and "interrupted: step" in text
    assert f"--resume {tmp_path} continues it" in text  # how to go on, in the last lines
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    with open(metrics) as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert ckpt["step"] >= 1 and ckpt["step"] == max(logged)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _metric_rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


REAL = ["--sounds-per-epoch", "40", "--epochs", "1"]  # 9 steps of 4 pairs per epoch


def test_resume_extends_steps_and_epochs_without_duplicate_rows(tmp_path, audio_dir):
    run = ["--data", str(audio_dir), *REAL, *TINY_ARGS]
    out = tmp_path / "run"
    result = CliRunner().invoke(train, [*run, "--out", str(out), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    # --no-progress prints one line per --log-every steps.
    assert "step 1/2 (epoch 0.11): loss" in result.output and "step 2/2 (epoch 0.22): loss" in result.output
    # The same cap again: nothing to do, and no second validation row for step 2.
    result = CliRunner().invoke(train, ["--resume", str(out), "--max-steps", "2"])
    assert result.exit_code == 0 and "nothing to do: the run is at step 2 of 2" in result.output, result.output
    # Without --max-steps the stored cap does not carry over: the run goes on to its last epoch.
    result = CliRunner().invoke(train, ["--resume", str(out)])
    assert result.exit_code == 0 and "done: step 9 (epoch 1.00)" in result.output, result.output
    # More epochs extend a finished run, and the new LR schedule is printed.
    result = CliRunner().invoke(train, ["--resume", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "optim.epochs 1 -> 3" in result.output and "LR milestones now at epochs [2, 2, 2]" in result.output
    assert "done: step 27 (epoch 3.00)" in result.output
    ckpt = ckpt_io.load_checkpoint(out)
    assert ckpt["epoch"] == 3 and ckpt["config"]["optim"]["epochs"] == 3
    # Epoch 1 of 3 is before the new milestones: back to the peak lr, then three decays by the end.
    assert "lr 0.001875 from epoch 1 (it was 1.875e-06)" in result.output
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.12 * 4 / 256 * 0.001)
    val_steps = [int(r["step"]) for r in _metric_rows(out) if r["kind"] == "val"]
    assert val_steps == [2, 9, 18, 27]
    train_steps = [int(r["step"]) for r in _metric_rows(out) if r["kind"] == "train"]
    assert train_steps == list(range(1, 28))
    # Fewer epochs than already done: a one-line refusal.
    result = CliRunner().invoke(train, ["--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 2 and "the run has done 3 epochs already" in result.output, result.output


def test_resume_with_another_recipe_is_a_one_line_error(tmp_path, audio_dir):
    out = tmp_path / "run"
    result = CliRunner().invoke(train, ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(out), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(train, ["--resume", str(out), "--lr", "0.5", "--width", "8"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "cannot resume" in error[0], result.output
    assert "optim.lr: checkpoint None, now 0.5" in error[0] and "model.width: checkpoint 4, now 8" in error[0]


def test_resume_from_another_folder_with_data_moved_and_fewer_workers(tmp_path, audio_dir, monkeypatch):
    """Found from outside: --data given relative was stored as typed, so --resume from another folder failed ("--data
    mvdata: not a folder", an option never given), the same folder given absolute was "the recipe differs", and
    so was --num-workers 0 on a smaller machine. Where the data are is no recipe; synthetic to real data is."""
    import shutil

    shutil.copytree(audio_dir, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(train, ["--data", "mine", *REAL, *TINY_ARGS, "--out", "run", "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    assert ckpt_io.load_checkpoint(tmp_path / "run")["config"]["data"]["data"] == str(tmp_path / "mine")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = CliRunner().invoke(train, ["--resume", str(tmp_path / "run"), "--max-steps", "2", "--no-progress"])
    assert again.exit_code == 0 and "resumed from" in again.output, again.output
    shutil.move(tmp_path / "mine", tmp_path / "moved")
    lost = CliRunner().invoke(train, ["--resume", str(tmp_path / "run"), "--max-steps", "3", "--no-progress"])
    assert lost.exit_code == 2 and "is not a folder here: pass --data PATH where it is now" in lost.output
    moved = CliRunner().invoke(train, ["--resume", str(tmp_path / "run"), "--max-steps", "3", "--no-progress",
                                       "--data", str(tmp_path / "moved"), "--num-workers", "1"])
    assert moved.exit_code == 0 and ckpt_io.load_checkpoint(tmp_path / "run")["step"] == 3, moved.output
    synthetic = CliRunner().invoke(train, [*REAL, *TINY_ARGS, "--out", str(tmp_path / "syn"), "--max-steps", "1"])
    assert synthetic.exit_code == 0, synthetic.output
    real = CliRunner().invoke(train, ["--resume", str(tmp_path / "syn"), "--data", str(tmp_path / "moved")])
    assert real.exit_code == 2 and "data.data: checkpoint None" in real.output, real.output


def test_resume_writes_to_the_named_folder_and_removes_leftovers(tmp_path, audio_dir):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    result = CliRunner().invoke(train, ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(run), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    ckpt = ckpt_io.load_checkpoint(run)
    ckpt["config"]["run"]["out_dir"] = str(elsewhere)  # a checkpoint copied from another machine or folder
    ckpt_io.save_checkpoint(run / "last.pt", ckpt)
    leftover = run / ".last.pt.k1ll9abc.tmp"  # what kill -9 during a checkpoint write leaves
    leftover.write_bytes(b"half a checkpoint")
    kept = run / ".epoch-0008.pt.__vq42b7.tmp"  # or during a kept epoch file's (they stayed: found from outside)
    kept.write_bytes(b"half a checkpoint")
    result = CliRunner().invoke(train, ["--resume", str(run), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert not elsewhere.exists()
    assert ckpt_io.load_checkpoint(run)["step"] == 2 and not leftover.exists() and not kept.exists()
    assert f"removed {leftover}" in result.output and f"removed {kept}" in result.output
    # --out names another folder: the run continues there.
    other = tmp_path / "other"
    result = CliRunner().invoke(train, ["--resume", str(run / "last.pt"), "--out", str(other), "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    assert ckpt_io.load_checkpoint(other)["step"] == 3 and ckpt_io.load_checkpoint(run)["step"] == 2
    assert not elsewhere.exists()
    with open(other / "metrics.csv", newline="") as f:  # the run's history came along (it began bare)
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["kind"] == "train"]
    assert steps == [1, 2, 3], steps


def test_two_process_run_resumed_in_one_process_keeps_its_epoch(tmp_path, audio_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    # World size 2, batch 4 per rank: 36 training sounds -> 4 steps per epoch; stop 2 steps into epoch 2.
    args = ["--data", str(audio_dir), "--sounds-per-epoch", "40", "--epochs", "2", *TINY_ARGS, "--out", str(out),
            "--max-steps", "6"]  # fmt: skip
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "doppel_torch.train", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))  # fmt: skip
    for p in procs:
        text, _ = p.communicate(timeout=240)
        assert p.returncode == 0, text.decode()[-3000:]
    ckpt = ckpt_io.load_checkpoint(out)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6 and ckpt["epoch"] == 1
    # One process: 9 steps per epoch; 2 of 4 steps into epoch 2 is step 9 + 4 here.
    with pytest.warns(UserWarning, match="its step 6 .* is step 13 here"):
        result = CliRunner().invoke(train, ["--resume", str(out), "--max-steps", "14"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "at step 13 (epoch 1)" in result.output
    assert "done: step 14 (epoch 1.56)" in result.output
    epochs = [float(r["epoch"]) for r in _metric_rows(out)]
    assert epochs == sorted(epochs), epochs
    assert ckpt_io.load_checkpoint(out)["epoch"] == 1


def _capture_figures(monkeypatch):
    """Record every matplotlib figure saved (the PNGs a person opens), to read its titles, labels and colour bar."""
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved.append((str(path), fig))
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_logmel_png_has_axes_units_colour_bar_and_step(tmp_path, audio_dir, monkeypatch):
    saved = _capture_figures(monkeypatch)
    args = ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(tmp_path), "--max-steps", "2", "--examples", "2"]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    [(path, fig)] = [(p, f) for p, f in saved if p.endswith("logmel.png")]
    assert path.endswith("step_0000002/logmel.png")
    assert fig._suptitle.get_text() == "validation log-mel examples, step 2 (epoch 0.22)"
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "log(mel + 0.01)"
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    assert {ax.get_xlabel() for ax in panels} == {"", "time (s)"}
    assert {ax.get_ylabel() for ax in panels} == {"", "mel band\n(125-7500 Hz)"}
    assert panels[0].get_xlim() == pytest.approx((0.0, 0.96))


def test_a_new_run_never_overwrites_another(tmp_path, monkeypatch):
    """A folder holding a run (last.pt or metrics.csv): a new run named there explicitly is refused with one line,
    before any work; in the default folder it goes to the next free runs/doppel-N and says so; a resumed run
    continues in its own folder, and is refused in another run's."""
    from doppel_torch.train.cli import claim_run_folder
    from doppel_torch.train.config import make_config

    started = tmp_path / "started"  # a run stopped while it started: metrics.csv's header alone is no run
    started.mkdir()
    (started / "metrics.csv").write_text("kind,step\n")
    result = CliRunner().invoke(train, [*TINY_ARGS, "--max-steps", "1", "--out", str(started)])
    assert result.exit_code == 0 and (started / "last.pt").is_file(), result.output
    held = tmp_path / "held"
    held.mkdir()
    (held / "metrics.csv").write_text("kind,step\ntrain,1\n")
    before = (held / "metrics.csv").read_text()
    result = CliRunner().invoke(train, [*TINY_ARGS, "--max-steps", "1", "--out", str(held)])
    # metrics.csv and no last.pt: a run stopped before its first checkpoint, so --resume is no way on
    assert result.exit_code == 2 and "stopped before its first checkpoint" in result.output, result.output
    assert "--resume" not in result.output and (held / "metrics.csv").read_text() == before
    result = CliRunner().invoke(train, ["--resume", str(held)])  # and --resume says the same, not "pass a .pt file"
    assert result.exit_code == 2 and "holds a run that stopped before its first checkpoint" in result.output
    (held / "last.pt").write_bytes(b"")
    result = CliRunner().invoke(train, [*TINY_ARGS, "--max-steps", "1", "--out", str(held)])
    assert result.exit_code == 2 and f"--out {held} holds another run" in result.output, result.output
    assert f"--resume {held} continues it" in result.output and (held / "metrics.csv").read_text() == before
    monkeypatch.chdir(tmp_path)
    for folder in ("runs/doppel", "runs/doppel-2"):
        os.makedirs(folder)
        (tmp_path / folder / "last.pt").write_bytes(b"")

    def claim(*args, **kwargs):
        config, lock = claim_run_folder(*args, **kwargs)
        lock.release()
        return config

    assert claim(make_config("cpu-smoke", {}), None, explicit=False).run.out_dir == "runs/doppel-3"
    assert claim(make_config("cpu-smoke", {"run.out_dir": "fresh"}), None, True).run.out_dir == "fresh"
    resumed = make_config("cpu-smoke", {"run.out_dir": "runs/doppel"})
    assert claim(resumed, "runs/doppel/last.pt", explicit=False).run.out_dir == "runs/doppel"
    # (the run in it, if it is the one meant, goes on with --resume runs/doppel-2: a repeated branch command's case)
    refused = (r"--out runs/doppel-2 holds another run \(last.pt / metrics.csv\): --resume runs/doppel-2 continues it, "
               r"or choose another --out")
    with pytest.raises(Exception, match=refused):
        claim_run_folder(make_config("cpu-smoke", {"run.out_dir": "runs/doppel-2"}), "runs/doppel", explicit=True)


def test_one_run_writes_a_folder_at_a_time(tmp_path, monkeypatch):
    """The run lock: a folder another process is writing is refused when named and skipped when it is the default;
    a killed holder leaves no lock behind (flock goes with its process)."""
    from doppel_torch import runlock
    from doppel_torch.train.cli import claim_run_folder
    from doppel_torch.train.config import make_config

    busy = tmp_path / "busy"
    lock = runlock.try_lock(busy)
    try:
        assert runlock.try_lock(busy) is None  # flock: a second open file of the same process is refused too
        result = CliRunner().invoke(train, [*TINY_ARGS, "--max-steps", "1", "--out", str(busy)])
        assert result.exit_code == 2 and f"--out {busy} is being written by another run (pid {os.getpid()} on" \
            in result.output, result.output
        (busy / "metrics.csv").write_text("kind,step\n")  # a run under way: not "--resume continues it"
        result = CliRunner().invoke(train, [*TINY_ARGS, "--max-steps", "1", "--out", str(busy)])
        assert result.exit_code == 2 and "is being written by another run" in result.output, result.output
        monkeypatch.chdir(tmp_path)
        other = runlock.try_lock("runs/doppel")
        config, mine = claim_run_folder(make_config("cpu-smoke", {}), None, explicit=False)
        assert config.run.out_dir == "runs/doppel-2" and (tmp_path / "runs/doppel-2/.run.lock").exists()
        mine.release()
        other.release()
        assert not (tmp_path / "runs/doppel/.run.lock").exists()
    finally:
        lock.release()
    code = ("import os, signal, sys; from doppel_torch.runlock import try_lock; "
            "assert try_lock(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(busy)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL and (busy / ".run.lock").exists()
    again = runlock.try_lock(busy)
    assert again is not None
    again.release()


def test_an_older_checkpoint_does_not_overwrite_its_run(tmp_path, audio_dir):
    """--resume run/epoch-0001.pt in its own folder, behind run/last.pt: refused (it would replace last.pt and cut
    metrics.csv); with --out elsewhere it goes on there. A finished run resumed into another --out has nothing to do
    and writes nothing there."""
    run = tmp_path / "run"
    args = ["--data", str(audio_dir), *REAL, "--epochs", "2", *TINY_ARGS, "--keep-every", "1"]
    assert CliRunner().invoke(train, [*args, "--out", str(run)]).exit_code == 0
    last, rows = (run / "last.pt").read_bytes(), _metric_rows(run)
    result = CliRunner().invoke(train, ["--resume", str(run / "epoch-0001.pt"), "--max-steps", "12"])
    assert result.exit_code == 2 and "is at step 9, behind" in result.output, result.output
    assert (run / "last.pt").read_bytes() == last and _metric_rows(run) == rows
    branch = CliRunner().invoke(train, ["--resume", str(run / "epoch-0001.pt"), "--epochs", "3",
                                        "--out", str(tmp_path / "branch")])
    assert branch.exit_code == 0 and ckpt_io.load_checkpoint(tmp_path / "branch")["step"] == 27, branch.output
    # the branch is a run of its own: its checkpoint copied into the first run's folder is refused there, although
    # it is further on (it replaced that run's last.pt: found from outside)
    (run / "from-branch.pt").write_bytes((tmp_path / "branch" / "last.pt").read_bytes())
    result = CliRunner().invoke(train, ["--resume", str(run / "from-branch.pt"), "--epochs", "4"])
    assert result.exit_code == 2 and "is of another run than" in result.output, result.output
    assert (run / "last.pt").read_bytes() == last and _metric_rows(run) == rows
    idle = CliRunner().invoke(train, ["--resume", str(run), "--out", str(tmp_path / "idle")])
    assert idle.exit_code == 0 and "nothing to do" in idle.output, idle.output
    # the folder made for the run holds nothing (the command's exit removes it: options.out_folder)
    assert f"checkpoint: {run / 'last.pt'}" in idle.output and not any((tmp_path / "idle").iterdir())


def test_a_damaged_checkpoint_is_refused(tmp_path):
    """torch.load does not check the zip's CRCs: four changed bytes of weights loaded as NaN and evaluated at chance.
    The checksum saved with the tensors finds any change; a checkpoint without one (older) is checked for NaN."""
    path = ckpt_io.save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.full((1000,), 0.5)}, "step": 1,
                                                          "config": {}})
    assert ckpt_io.load_checkpoint(path)["step"] == 1
    data = bytearray(path.read_bytes())
    at = data.index(torch.tensor([0.5]).numpy().tobytes())
    data[at : at + 4] = torch.tensor([float("nan")]).numpy().tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: its contents do not match the checksum"):
        ckpt_io.load_checkpoint(path)
    # a changed byte outside the tensors (the config: a resume trained on with another value, without a word)
    path = ckpt_io.save_checkpoint(tmp_path / "cfg.pt", {"model": {}, "step": 1, "config": {"tag": "seedXYZ"}})
    path.write_bytes(path.read_bytes().replace(b"seedXYZ", b"seedXYW"))
    with pytest.raises(ValueError, match="is damaged"):
        ckpt_io.load_checkpoint(path)
    old = tmp_path / "old.pt"
    torch.save({"format": ckpt_io.FORMAT, "model": {"w": torch.tensor([1.0, float("nan")])}, "step": 1, "config": {}},
               old)
    with pytest.raises(ValueError, match=r"non-finite values \(w has NaN"):
        ckpt_io.load_checkpoint(old)
    torch.save({"format": ckpt_io.FORMAT, "model": {}, "optimizer": {"state": {0: {"m": torch.tensor([float("inf")])}}},
                "step": 1, "config": {}}, old)
    with pytest.raises(ValueError, match=r"its optimizer state has NaN or infinite values"):
        ckpt_io.load_checkpoint(old)


def test_a_full_disk_is_one_line(tmp_path, audio_dir, monkeypatch):
    """torch.save over a full disk raises RuntimeError("[enforce fail at inline_container.cc]") from the OSError:
    the run stops with one line naming the file and what is kept, no traceback, no temporary file left."""
    def full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(ckpt_io.torch, "save", full)
    out = tmp_path / "run"
    result = CliRunner().invoke(train, ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"could not write {out / 'last.pt'}: No space left on device; the run stopped (no checkpoint was " \
        "written)" in result.output
    assert not list(out.glob(".last.pt.*")) and not (out / ".run.lock").exists()


def test_a_nan_loss_is_one_line(tmp_path, audio_dir, monkeypatch):
    """NonFiniteLoss (and NoAudioLeft) are RuntimeErrors: the out-of-memory clause re-raised them as a traceback
    before their own one-line handler was reached (found from outside, with --lr 1e30)."""
    from doppel_torch.train import loop

    real_loss = loop.losses.doppelganger_loss

    def poisoned(*args, **kwargs):
        total, align, uniform = real_loss(*args, **kwargs)
        return total * float("nan"), align, uniform

    monkeypatch.setattr(loop.losses, "doppelganger_loss", poisoned)
    result = CliRunner().invoke(train, ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Error: loss became nan" in result.output and "with a lower learning rate" in result.output, result.output


@pytest.mark.parametrize("case", ["log lines", "progress bar", "stderr too"])
def test_a_closed_stdout_does_not_stop_the_run(tmp_path, audio_dir, case):
    """`train ... | head`: the reader ends, the next line meets a closed pipe. Found from outside: click's EPIPE
    handling ended the run silently (exit 1, no checkpoint since the last one), through a log line, the validation
    line the bar wrote, or the bar itself where stderr went into the same pipe (`2>&1 | head`); now it goes on
    without printing there."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "doppel_torch", "train", "--data", str(audio_dir), *REAL, *TINY_ARGS,
            "--out", str(out)]  # the whole epoch: its validation line too
    if case != "log lines":
        args.append("--progress")
    merged = case == "stderr too"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -n 1` does
    err = "" if merged else proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and (merged or "stdout was closed" in err), err
    assert ckpt_io.load_checkpoint(out)["step"] == 9


def test_a_peer_process_gone_is_one_line(tmp_path, audio_dir, monkeypatch):
    """When torchrun's other process dies (killed, crashed), the survivors' next collective raises gloo's transport
    error: each says in one line that its step cannot finish and what is kept (it printed a raw traceback after
    "saving a checkpoint"). The error text is the one a real run raised (2 gloo ranks, one killed with SIGKILL)."""
    from doppel_torch.train import distributed
    from doppel_torch.train.loop import Trainer

    gone = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:9605: "
                        "Connection reset by peer")
    assert distributed.peer_gone(gone) and not distributed.peer_gone(RuntimeError("out of memory"))

    def fit(self):  # a run of 2 processes as the collective fails (the process group is set up as one)
        monkeypatch.setattr(distributed.DistEnv, "distributed", property(lambda env: True))
        raise gone

    monkeypatch.setattr(Trainer, "fit", fit)
    out = tmp_path / "run"
    result = CliRunner().invoke(train, ["--data", str(audio_dir), *REAL, *TINY_ARGS, "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert ("rank 0: another process of this run is gone (Read error [127.0.0.1]:9605: Connection reset by peer), "
            "so this process stops where it is and saves nothing; no checkpoint was written") in result.output, \
        result.output


def test_fewer_sounds_than_a_batch_is_refused(tmp_path):
    result = CliRunner().invoke(train, [*TINY_ARGS, "--sounds-per-epoch", "4", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--sounds-per-epoch (data.sounds_per_epoch) 4 leaves 2 training sounds" in \
        result.output and "raise it to at least 6" in result.output, result.output
