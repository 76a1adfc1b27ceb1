"""`doppel-torch train` as users call it: options, printed config, bad options, SIGTERM."""

from __future__ import annotations

import csv
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
        (["--delta", "-1"], "delta must be a finite number >= 0"),
        (["--mix-layers", "2"], "needs real data: pass --data PATH"),
        (["--data", "/nonexistent/folder"], "not a folder"),
        (["--set", "optim.nope=1"], "unknown config field"),
        (["--set", "optim.epochs"], "expected section.field=value"),
        (["--duration", "0.5"], "raise --duration"),
        (["--synth", "moog"], "Invalid value for '--synth'"),
    ],
)
def test_bad_options_give_clear_errors(tmp_path, args, message):
    result = CliRunner().invoke(train, [*TINY_ARGS, "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


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
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    with open(metrics) as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    assert ckpt["step"] >= 1 and ckpt["step"] == max(logged)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
