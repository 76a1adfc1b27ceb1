"""The command line as users call it: `doppel-torch info` and `doppel-torch sample`."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner

from doppel_torch.cli import main


def test_info_lists_synths_and_parameters():
    runner = CliRunner()
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    for name, count in (("voice", 78), ("voicefm", 130), ("parametric", 340)):
        assert name in result.output and str(count) in result.output
    result = runner.invoke(main, ["info", "--synth", "voicefm"])
    assert result.exit_code == 0
    assert "mod_matrix/mod[6,5]" in result.output and "vco_4/mod_depth" in result.output
    # each parameter's unit, the one theta.json and to_human use
    assert re.search(r"keyboard/midi_f0 +0 +127 +1 +linear +MIDI note\n", result.output), result.output
    # a user's patch: the names `match --fit` takes
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "subtractive.py"
    for extra in ([], ["--groups"]):
        result = runner.invoke(main, ["info", "--patch", str(example), *extra])
        assert result.exit_code == 0 and "subtractive" in result.output, result.output
    assert "parameters in theta's order" in result.output or "--groups" in extra
    both = runner.invoke(main, ["info", "--synth", "voice", "--patch", str(example)])
    assert both.exit_code == 2 and "give --synth or --patch, not both" in both.output


def test_sample_writes_pairs_and_picture(tmp_path):
    out = tmp_path / "pairs"
    result = CliRunner().invoke(
        main, ["sample", "--synth", "voice", "--delta", "0.25", "--pairs", "3", "--out", str(out), "--duration", "0.5"]
    )
    assert result.exit_code == 0, result.output
    wavs = sorted(out.glob("pair_*.wav"))
    assert [w.name for w in wavs] == [f"pair_{i:02d}_{v}.wav" for i in range(3) for v in "ab"]
    assert len(list(out.glob("sweep_*.wav"))) == 3 * 6
    audio, rate = sf.read(wavs[0])
    assert rate == 16000 and audio.shape == (8000,) and abs(audio).max() > 0
    png = out / "samples.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "wrote 24 wav files" in result.output
    # again with fewer pairs into the same folder: the earlier run's extra pairs go (samples.png no longer shows
    # them), the count is of this run's files, and a file of the user's stays
    (out / "mine.wav").write_bytes(b"")
    (out / "pair_03_my_take.wav").write_bytes(b"")  # named like ours, but no sample wrote it: it stays
    again = CliRunner().invoke(main, ["sample", "--pairs", "1", "--sweep", "0", "--duration", "0.5", "--out", str(out)])
    assert again.exit_code == 0 and "wrote 3 wav files" in again.output, again.output
    assert "removed 21 wav files of an earlier sample" in again.output
    assert sorted(w.name for w in out.glob("*.wav")) == ["mine.wav", "pair_00_a.wav", "pair_00_b.wav",
                                                          "pair_03_my_take.wav", "sweep_00_delta_0.wav"]


def test_a_sample_stopped_halfway_leaves_files_the_next_one_removes(tmp_path, monkeypatch):
    """Its files are listed before they are written: a sample stopped after 5 of its 24 files (Ctrl-C, a full disk)
    left them unlisted, so no later sample removed them (found from outside)."""
    import doppel_torch.viz as viz

    out, written = tmp_path / "s", []
    write_wav = viz.write_wav

    def fills_up(path, *args, **kwargs):
        if len(written) == 5:
            raise OSError(28, "No space left on device")
        written.append(path)
        return write_wav(path, *args, **kwargs)

    monkeypatch.setattr(viz, "write_wav", fills_up)
    out.mkdir()
    (out / "pair_02_a.wav").write_text("mine")  # named as the run would have, but it never got there: it stays
    full = CliRunner().invoke(main, ["sample", "--pairs", "3", "--duration", "0.25", "--out", str(out)])
    assert full.exit_code == 1 and "No space left on device" in full.output, full.output
    assert len(list(out.glob("*.wav"))) == 6
    monkeypatch.undo()
    again = CliRunner().invoke(main, ["sample", "--pairs", "1", "--sweep", "", "--duration", "0.25", "--out", str(out)])
    assert again.exit_code == 0 and "removed 3 wav files of an earlier sample" in again.output, again.output
    assert sorted(w.name for w in out.glob("*.wav")) == ["pair_00_a.wav", "pair_00_b.wav", "pair_02_a.wav"]
    (out / "pair_00_b.wav").unlink()
    (out / "pair_00_b.wav").mkdir()  # a folder where a file goes is said so, not "free some space"
    blocked = CliRunner().invoke(main, ["sample", "--pairs", "1", "--sweep", "", "--duration", "0.25", "--out",
                                        str(out)])
    assert blocked.exit_code == 1 and ("pair_00_b.wav: Is a directory (a folder has a name the samples take: move "
                                       "it") in blocked.output
    assert "free some space" not in blocked.output, blocked.output


def test_sample_noise_modes(tmp_path):
    """--noise per_view renders the two views of a delta = 0 pair with different noise; shared does not."""
    views = {}
    for mode in ("shared", "per_view"):
        out = tmp_path / mode
        args = ["sample", "--synth", "voice", "--delta", "0", "--pairs", "2", "--sweep", "", "--noise", mode,
                "--out", str(out), "--duration", "0.25"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        views[mode] = max(abs(sf.read(out / f"pair_{i:02d}_a.wav")[0] - sf.read(out / f"pair_{i:02d}_b.wav")[0]).max()
                          for i in range(2))
    # identical up to float32 rounding of the batched torch reference (the rows sit at different batch positions)
    # and 16-bit wav quantisation; with noise per view the views differ by their noise
    assert views["shared"] < 2e-4 and views["per_view"] > 1e-2, views


def test_sample_augmented_with_reverb(tmp_path, shared_dir):
    out = tmp_path / "aug"
    args = ["sample", "--pairs", "2", "--out", str(out), "--augment", "--ir-dir", str(shared_dir / "data" / "rirs"),
            "--sweep", "0,0.5", "--synth", "voicefm"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "pair_00_a_clean.wav").exists() and (out / "pair_00_a.wav").exists()
    clean, _ = sf.read(out / "pair_00_a_clean.wav")
    augmented, _ = sf.read(out / "pair_00_a.wav")
    assert clean.shape == augmented.shape
    assert (out / "samples.png").exists()


def test_bad_arguments_get_clear_messages(tmp_path):
    runner = CliRunner()
    cases = [
        (["sample", "--synth", "vox", "--out", str(tmp_path)], "'vox' is not one of"),
        (["sample", "--delta", "-0.1", "--out", str(tmp_path)], "--delta"),
        (["sample", "--delta", "nan", "--out", str(tmp_path)], "--delta"),
        (["sample", "--pairs", "0", "--out", str(tmp_path)], "--pairs"),
        (["sample"], "Missing option '--out'"),
        (["info", "--synth", "nope"], "'nope' is not one of"),
        (["sample", "--sweep", "0,x", "--out", str(tmp_path)], "comma-separated"),
        (["sample", "--sweep", "0,2", "--out", str(tmp_path)], "[0, 1]"),
        (["sample", "--ir-dir", str(tmp_path / "missing"), "--augment", "--out", str(tmp_path)], "does not exist"),
        (["sample", "--ir-dir", str(tmp_path), "--out", str(tmp_path)], "use it with --augment"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_sample_renders_a_user_patch(tmp_path):
    """`--patch FILE.py` renders a patch no backend knows (the README's subtractive example) on the cpu kernel."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "subtractive.py"
    out = tmp_path / "sub"
    result = CliRunner().invoke(main, ["sample", "--patch", str(example), "--backend", "cpu", "--pairs", "2",
                                       "--sweep", "", "--duration", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out / "pair_00_a.wav")
    assert rate == 16000 and audio.shape == (8000,) and abs(audio).max() > 0
    needs_args = tmp_path / "needs_args.py"
    needs_args.write_text("def patch(x):\n    return x\n")
    for bad, message in ((str(tmp_path / "none.py"), "does not exist"), (f"{example}:nope", "has no 'nope'"),
                         ("no_such_module_here", "cannot import patch module"),
                         (str(needs_args), "patch() failed: TypeError")):
        result = CliRunner().invoke(main, ["sample", "--patch", bad, "--out", str(out)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "folder.py").mkdir()
    for bad, message in (("", "give a patch: a .py file or an importable module"),
                         (str(tmp_path / "folder.py"), "is a folder"), (str(exits), "failed to run: SystemExit: 3")):
        result = CliRunner().invoke(main, ["info", "--patch", bad])
        assert result.exit_code == 2 and message in result.output, result.output
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["sample", "--pairs", "1", "--out", str(dangling)])
    assert result.exit_code == 1 and "is a link to" in result.output and "which does not exist" in result.output


def test_sample_png_has_a_colour_bar_and_says_view_a_is_the_sweep_column(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, *a, **k: (saved.append(fig), real(fig, path, *a, **k)))
    result = CliRunner().invoke(main, ["sample", "--pairs", "1", "--sweep", "0,0.25", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [fig] = saved
    assert "view a = the sweep's delta 0.25 column (the same sound)" in fig._suptitle.get_text()
    [bar] = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel().startswith("dB below the panel's peak")
    # ... and it is: the wav of view a equals the sweep's wav at the same delta.
    view_a, _ = sf.read(tmp_path / "pair_00_a.wav")
    sweep, _ = sf.read(tmp_path / "sweep_00_delta_0.25.wav")
    assert (view_a == sweep).all()


def _bash_blocks(text: str) -> list[str]:
    blocks = text.split("```bash\n")[1:]
    return [b.split("```", 1)[0] for b in blocks]


def test_readme_commands_run_from_the_venv_and_ci_runs_the_readme_test_command():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    setup_and_use = readme.split("## Set-up", 1)[1].split("## Synthesizers", 1)[0]
    commands = [line for block in _bash_blocks(setup_and_use) for line in block.splitlines() if line.strip()]
    assert len(commands) >= 12
    for line in commands:  # nothing bare: set-up never activates the venv
        if line.startswith("#"):
            continue
        for word in ("doppel-torch", "torchrun", "pip", "python"):
            assert not line.startswith(word + " "), line
    setup, test = _bash_blocks(readme)[:2]
    assert "pip install -e . &&" in setup and "[test]" not in setup  # the main job's install only
    test_command = test.strip()
    assert test_command == '.venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest -q'
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


@pytest.mark.slow
def test_readme_setup_job_runs_as_written(tmp_path):
    """The set-up block's training command, as written (the cpu-smoke preset, 27 steps; ~20-60 s on 2 cores)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    setup = _bash_blocks((REPO / "README.md").read_text())[0].strip()
    command = setup.split(" && ")[-1]
    assert command == ".venv/bin/doppel-torch train --synth voice --preset cpu-smoke"
    exe = Path(sys.executable).parent / "doppel-torch"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e . installs it)")
    result = subprocess.run([str(exe), *command.split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "done: step 27 (epoch 3.00)" in result.stdout
    assert (tmp_path / "runs" / "doppel" / "last.pt").is_file()


def test_python_dash_m_runs_the_command():
    """`python -m doppel_torch` is the `doppel-torch` command."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "doppel_torch", "match", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Usage: doppel-torch match" in done.stdout, done.stderr


def test_the_command_spins_briefly_unless_the_user_chose():
    """The console script sets GOMP_SPINCOUNT=1000 before torch loads (entry._openmp_defaults), keeping a user's own
    wait policy or count: a command's OpenMP threads then soon sleep at barriers instead of spinning on a shared
    machine."""
    import subprocess
    import sys

    from doppel_torch.entry import _openmp_defaults

    for env, expected in (({}, {"GOMP_SPINCOUNT": "1000"}), ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE"}),
                          ({"GOMP_SPINCOUNT": "5"}, {"GOMP_SPINCOUNT": "5"})):
        _openmp_defaults(env)
        assert env == expected
    # it can only work if nothing before it loads torch: the console script's module does not
    probe = "import sys, doppel_torch.entry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    """The console script's entry point imports the command (torch, a second or two) itself, so a Ctrl-C during
    those imports exits 130 with one line, not an import traceback; importing the entry point imports no torch."""
    import subprocess
    import sys
    import types

    from doppel_torch import entry

    code = "import sys, doppel_torch.entry; assert 'torch' not in sys.modules and 'click' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    starting = types.ModuleType("doppel_torch.cli")  # the command's module, interrupted while it is imported

    def interrupted(name):
        raise KeyboardInterrupt

    starting.__getattr__ = interrupted
    monkeypatch.setitem(sys.modules, "doppel_torch.cli", starting)
    import warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets its one-line form
    term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            entry.main()
    finally:
        signal.signal(signal.SIGTERM, term)
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted by SIGINT while starting: nothing was done"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_command_without_its_own_handling_is_one_line(tmp_path, signum):
    """Ctrl-C or SIGTERM during delta-profile (no handling of its own): one line and 128 + the signal, as train and
    match, instead of click's "Aborted!" with status 1 (SIGINT) or a silent kill (SIGTERM)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "doppel_torch", "delta-profile", "--synth", "voice", "--n-theta",
                             "100000", "--duration", "0.05", "--no-progress", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)  # torch imported, the profile under way (a signal while starting is also one line, tested above)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1].startswith(f"interrupted by {name}"), err
    assert "Traceback" not in err and "Aborted!" not in err, err


def test_bad_outputs_devices_and_files_are_one_line_before_any_work(tmp_path):
    """What a new user's trial found printing tracebacks (some only after all the work): an --out that is a file,
    an unknown or absent --device, a NaN --lr, a checkpoint that is a text file, a --patch that is not a .py file,
    an unreadable impulse response. Each is one line now, checked before anything is computed."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    text_ckpt = tmp_path / "text.pt"
    text_ckpt.write_text("hello")
    text_wav = tmp_path / "text.wav"
    text_wav.write_text("x")
    irs = tmp_path / "irs"
    irs.mkdir()
    (irs / "bad.wav").write_text("x")
    for label in ("a", "b"):  # a folder task: two classes of three short sounds
        (tmp_path / "task" / label).mkdir(parents=True)
        for k in range(3):
            sf.write(tmp_path / "task" / label / f"{k}.wav", [0.1 * (k + 1)] * 1600, 16000)
    fsdd = ["-t", f"folder:{tmp_path / 'task'}", "--no-cache", "-q"]
    cases = [
        (["train", "--preset", "cpu-smoke", "--out", str(afile / "run")], "cannot create --out"),
        (["delta-profile", "--n-theta", "1", "--out", str(afile / "d")], "cannot create --out"),
        (["sample", "--pairs", "1", "--sweep", "", "--out", str(afile / "s")], "cannot create --out"),
        (["eval", *fsdd, "--out", str(afile / "e")], "cannot create --out"),
        (["eval", *fsdd, "--device", "bogus"], "unknown device 'bogus'"),
        (["eval", *fsdd, "--lr", "nan"], "must be a positive number"),
        (["eval", str(text_ckpt), *fsdd, "--out", str(tmp_path / "e")], "could not be loaded as a checkpoint"),
        (["train", "--resume", str(text_ckpt)], "could not be loaded as a checkpoint"),
        (["delta-profile", "--patch", str(text_wav), "--out", str(tmp_path / "d")], "is not a .py file"),
        (["delta-profile", "--seed", str(2**70), "--out", str(tmp_path / "d")], "Invalid value for '--seed'"),
        (["sample", "--seed", str(2**70), "--out", str(tmp_path / "s")], "Invalid value for '--seed'"),
        (["sample", "--seed", "ten", "--out", str(tmp_path / "s")], "'ten' is not an integer"),
        (["sample", "--out", ""], "must name a folder"),
        (["sample", "--duration", "nan", "--out", str(tmp_path / "s")], "Invalid value for '--duration': must be a "
                                                                          "number, not NaN"),
        (["delta-profile", "--out", " "], "must name a folder"),
        (["eval", *fsdd, "--out", ""], "must name a folder"),
        (["sample", "--start", str(2**63), "--out", str(tmp_path / "s")], "Invalid value for '--start'"),
        (["train", "--preset", "cpu-smoke", "--seed", str(2**70)], "must lie in [-2^63, 2^64)"),
        (["train", "--preset", "cpu-smoke", "--out", ""], "must name a folder"),
        (["train", "--preset", "cpu-smoke", "--ir-dir", str(irs)], "add --augment"),
        (["train", "--preset", "cpu-smoke", "--augment", "--ir-dir", str(irs), "--max-steps", "1", "--no-progress",
          "--no-tensorboard", "--out", str(tmp_path / "t")], "impulse response"),
    ]
    for args, expected in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and expected in result.output, (args, result.output)
        assert "Traceback" not in result.output and result.exception is None or isinstance(
            result.exception, SystemExit), (args, result.exception)


def test_the_commands_print_a_warning_as_one_line(monkeypatch):
    """`doppel-torch` and `python -m doppel_torch.train` show a warning as `warning: <message>`, without Python's
    file:line and the source line under it."""
    import warnings

    from doppel_torch.entry import _one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    _one_line_warnings()
    shown = warnings.formatwarning(UserWarning("resuming a run of world size 2 on 1 rank(s)"), UserWarning,
                                   "/x/loop.py", 149, "self.load(cfg.run.resume)")
    assert shown == "warning: resuming a run of world size 2 on 1 rank(s)\n"


def test_a_command_that_fails_leaves_no_empty_folder_behind(tmp_path):
    """--out folders a command made and left empty (it stopped on a bad --data found after the folder check) are
    removed at exit, parents made for them too; a folder the user made stays."""
    import subprocess
    import sys

    mine = tmp_path / "mine"
    mine.mkdir()
    for out in (tmp_path / "new" / "run", mine):
        done = subprocess.run([sys.executable, "-m", "doppel_torch", "train", "--preset", "cpu-smoke", "--data",
                               str(tmp_path / "nonexistent"), "--out", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode != 0 and "not a folder" in done.stderr, done.stderr
    assert not (tmp_path / "new").exists() and mine.is_dir()
