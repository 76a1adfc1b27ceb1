"""`doppel-torch match TARGET.wav`: read the target, run `match` with a progress bar under Ctrl-C / SIGTERM, keep
the best so far on disk while it runs, write the result and say how to continue."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from pathlib import Path

import click
import torch

from doppel_torch import runlock
from doppel_torch.matching.files import RESULT_FILES, prepare_target, read_theta_json, write_result, write_theta_json
from doppel_torch.matching.search import (AROUND_SPREAD, PITCH_SCANS, SCANNED_PITCH_STEP, SNAPSHOT_SECONDS,
                                          _planned_scans, default_backend, describe_columns, fit_columns, match,
                                          scan_steps, starts_around, starts_refitting)
from doppel_torch.options import SEED, FolderPath, NumberRange
from doppel_torch.synths.base import BACKENDS, SYNTHS

DEFAULT_DURATION = 1.0  # `doppel-torch match` matches the target's first seconds, at most this many by default
MIN_DURATION = 0.05  # and at least this many (a shorter file is padded)
TARGET_MARGIN_S = 0.05  # read past the matched seconds, so that resampling sees the samples beyond the cut
QUIET_PEAK = 2.0 ** -15  # one step of 16-bit audio (-90 dBFS): a target whose peak is below it is silence


def _read_target(path: Path, duration: float | None) -> tuple[torch.Tensor, int, int, float]:
    """The target file's mono samples (its first `duration` seconds or DEFAULT_DURATION, and a margin), rate,
    channel count (averaged) and whole length in seconds, or a usage error of TARGET in one line saying what to
    do."""
    import soundfile as sf

    from doppel_torch.audio import AudioReadError, read_audio

    def refuse(message: str):
        return click.BadParameter(message, param_hint="TARGET")

    if not path.exists():
        raise refuse(f"{path}: no such file (give the path of a wav, flac or ogg file)")
    if path.is_dir():
        raise refuse(f"{path} is a folder: give one audio file")
    if not path.is_file():  # a pipe (<(...), /dev/stdin) or a device: read twice below, a FIFO hung
        raise refuse(f"{path} is not a regular file (a pipe or a device): save the audio to a file and give that")
    try:
        channels, rate = read_audio(path, max_seconds=(duration or DEFAULT_DURATION) + TARGET_MARGIN_S)
        info = sf.info(str(path))
    except (AudioReadError, sf.SoundFileError, RuntimeError) as err:
        said = str(err) if isinstance(err, AudioReadError) else f"{path}: {err}"  # its own message names the file
        raise refuse(f"cannot read {said} (give a wav, flac or ogg file)") from None
    if not torch.isfinite(channels).all():
        raise refuse(f"{path}: the audio contains NaN or infinite samples (fix or re-export the file: there is no "
                     "sound to match there)")
    seconds = info.frames / info.samplerate if info.frames > 0 else channels.shape[1] / rate
    return channels.mean(dim=0), rate, channels.shape[0], seconds


def _load_target(path: Path, audio: torch.Tensor, rate: int, synth, channels: int = 1,
                 seconds: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """The target as (synth.n_samples,) float32 at the synth's rate, and what was done to it."""
    audio, notes = prepare_target(audio, rate, synth, seconds)
    peak = float(audio.abs().max())
    if peak < QUIET_PEAK:  # 1e-7 noise was matched to a loss of 6069 (found from outside)
        level = "every sample is 0" if peak == 0.0 else f"its peak, {peak:.2g}, is below one 16-bit step"
        mono = f" once its {channels} channels are averaged to mono (they cancel)" if channels > 1 else ""
        raise click.BadParameter(f"{path}: the target is silent over the first {synth.duration:g} s{mono} "
                                 f"({level}): nothing to match (check the file, or --duration)", param_hint="TARGET")
    return audio, notes


class _Signals:
    """Ctrl-C and SIGTERM (a scheduler, `timeout`, `kill`) while the command runs: the first one stops the descent
    (KeyboardInterrupt: `match` returns the best so far); any further one, while `match` finishes and the files are
    written (a second or so), is noted and waits, so none of them is left unwritten. The first one received sets
    the exit status, 128 + its number, as `doppel-torch train`. A signal the process was started with ignored (a
    background job's SIGINT, nohup) stays ignored."""

    def __init__(self):
        self.received: list[int] = []
        self.holding = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def hold(self) -> None:
        """From here on a signal is only noted: `match` has returned and the files are being written."""
        self.holding = True

    def _on_signal(self, signum, frame):
        self.received.append(signum)
        if self.holding or len(self.received) > 1:
            click.echo("\nwriting the result; it stops once the files are written", err=True)
            return
        raise KeyboardInterrupt


@click.command("match")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--synth", "synth_name", type=click.Choice(list(SYNTHS)), default=None,
              help="A shipped synthesizer (default: voice; or --patch).")
@click.option("--patch", "patch_spec", default=None, metavar="FILE.py[:NAME] | MODULE[:NAME]",
              help="Match with your own Patch instead of --synth (see examples/subtractive.py).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Rendering backend; it must be differentiable. Default: the fastest differentiable one on "
                   "the device ('cpu' on the CPU, 'triton' on CUDA; see doppel_torch.matching.default_backend).")
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available).")
@click.option("--restarts", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Random starting points, optimised together in one batch.")
@click.option("--steps", type=click.IntRange(0, 100_000), default=200, show_default=True,
              help="Adam steps (0: only score the starting points).")
@click.option("--lr", type=NumberRange(min=0.0, min_open=True, max=10.0), default=0.05, show_default=True,
              help="Adam learning rate on the logits of theta.")
@click.option("--candidates", type=click.IntRange(0, 65_536), default=0, show_default=True,
              help="Score this many random thetas first and start from the best --restarts of them (0: none).")
@click.option("--init", "init_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="THETA.json",
              help="Continue from an earlier match: its theta.json (the same synth) is restart 0, the other "
                   f"restarts start {AROUND_SPREAD:g} around it (with --fit: they draw the fitted parameters at "
                   "random).")
@click.option("--fit", "fit", multiple=True, metavar="PATTERN",
              help="With --init: fit only these parameters and keep the others at --init's values. A name as "
                   "`doppel-torch info --synth NAME` (or --patch FILE.py) lists it, a module (adsr_1: all its parameters) or a shell "
                   "pattern ('lfo_*'); repeat --fit for more. Restart 0 starts at --init, the others draw the fitted "
                   "parameters at random.")
@click.option("--pitch-step", type=NumberRange(min=0.0, min_open=True, max=1.0), default=1.0, show_default=True,
              help="The pitch parameters' step as a fraction of the others' (0.05 refines a start near the answer).")
@click.option("--pitch-scans", type=click.IntRange(0, 100), default=None,
              help=f"Grid searches of the pitch parameters, each opening an equal share of the steps (0: none). "
                   f"Default: {PITCH_SCANS} from random starts, 0 with --init.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Keys the starting points and the noise.")
@click.option("--duration", type=NumberRange(min=MIN_DURATION, max=30.0), default=None,
              help=f"Seconds matched: a longer target is cut, a shorter one padded with silence. Default: the "
                   f"target's length, at most {DEFAULT_DURATION:g} s, at least {MIN_DURATION:g} s.")
@click.option("--out", "out_dir", type=FolderPath(path_type=Path), required=True,
              help="Folder for theta.json, match.wav, target.wav and match.png (created if missing).")
@click.option("--overwrite", is_flag=True,
              help="Replace the earlier match that --out holds (without it that is refused; --init on its theta.json "
                   "continues it instead).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar with the best loss, the rate and the time left.")
def match_command(target, synth_name, patch_spec, backend, device, restarts, steps, lr, candidates, init_path, fit,
                  pitch_step, pitch_scans, seed, duration, out_dir, overwrite, progress) -> None:
    """Fit a synth's parameters to TARGET (an audio file) by gradient descent on a multi-resolution spectral loss.

    All restarts run in one batch; the best one is written: theta.json (every parameter by name, normalised
    and in human units), match.wav, target.wav (the target as matched) and match.png (target vs match
    spectrograms). Ctrl-C or SIGTERM stops early, writes the best found so far and exits 130 / 143; while it
    runs, theta.json holds the best so far (rewritten every 10 s), so --init out/theta.json continues even a
    killed run. An --out that holds an earlier match is kept unless --overwrite (or --init on its theta.json).
    """
    from doppel_torch.options import device_option, out_folder
    from doppel_torch.synths.base import synth_from_options

    device = device_option(device)
    if backend is None:
        backend = default_backend(device)
    samples, rate, channels, seconds = _read_target(target, duration)
    if duration is None:  # the target's length (no padding to score), capped; at least --duration's minimum
        duration = max(MIN_DURATION, min(DEFAULT_DURATION, seconds))
    try:
        synth = synth_from_options(synth_name, patch_spec, default="voice", backend=backend, duration=duration)
    except (RuntimeError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    if not synth._backend.differentiable:
        raise click.UsageError(f"--backend {backend} is not differentiable yet and match needs gradients: use "
                               f"--backend {default_backend(device)} (or leave --backend out)")
    audio, notes = _load_target(target, samples, rate, synth, channels, seconds)
    if 0 < candidates <= restarts:
        raise click.UsageError(f"--candidates {candidates} picks the best --restarts ({restarts}) of that many random "
                               "starts: give more than --restarts, or 0")
    init = None
    if fit and init_path is None:
        raise click.UsageError("--fit keeps the other parameters at the values of --init THETA.json: give one (an "
                               "earlier match's theta.json, or one you wrote)")
    if init_path is not None:
        if candidates:
            raise click.UsageError("--candidates picks random starts and --init starts around a theta: give one")
        try:
            theta = read_theta_json(init_path, synth)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--init") from None
        try:
            columns = fit_columns(synth, fit) if fit else None
        except ValueError as err:
            message = str(err).removeprefix("fit: ")
            if patch_spec is not None:
                message = message.replace("--patch FILE.py (your patch's file)", f"--patch {shlex.quote(patch_spec)}")
            raise click.BadParameter(message, param_hint="--fit") from None
        if columns is None:
            init = starts_around(theta, restarts, seed).to(device)
        else:
            init = starts_refitting(theta, columns, restarts, seed).to(device)
    if channels > 1:
        notes.insert(0, f"averaged its {channels} channels to mono")
    # match's own count, written down (theta.json) and carried on (the continue line)
    asked, pitch_scans = pitch_scans, _planned_scans(synth, pitch_scans, init is not None, columns if fit else None,
                                                     steps)[0]
    if asked is not None and asked != pitch_scans:
        notes.append(_fewer_scans(asked, pitch_scans, steps, fit))
    out_folder(out_dir)
    _check_result_names(out_dir)
    lock = runlock.try_lock(out_dir)
    if lock is None:
        raise click.UsageError(f"--out {out_dir} is being written by another run ({runlock.holder(out_dir)}): wait "
                               "for it to finish, or choose another --out")
    try:
        _replace_earlier_match(out_dir, target, init_path, overwrite)
        for note in notes:
            click.echo(f"note: {note}")
        _announce(synth, target, backend, device, restarts, steps, init, init_path, fit, columns if fit else None,
                  seed)
        meta = {"target": str(target), "seed": seed, "lr": lr, "pitch_step": pitch_step, "pitch_scans": pitch_scans,
                **({"init": str(init_path)} if init is not None else {}), **({"fit": list(fit)} if fit else {}),
                "notes": notes}
        _run_match(synth, audio.to(device), target, out_dir, init, fit, patch_spec, meta, restarts, steps, lr, seed,
                   candidates, pitch_step, pitch_scans, progress)
    finally:
        lock.release()


def _announce(synth, target, backend, device, restarts, steps, init, init_path, fit, columns, seed) -> None:
    """The line that says what is matched, with what and from where."""
    if fit:
        starts = (f"fitting {len(columns)} of the {synth.num_params} parameters ({describe_columns(synth, columns)}), "
                  f"the others kept at {init_path}, seed {seed}")
    else:
        starts = f"around {init_path}" if init is not None else f"seed {seed}"
    click.echo(f"matching {synth.duration:g} s of {target} with {synth.patch.name} ({synth.num_params} parameters, "
               f"backend={backend}, {device}): {restarts} restarts x {steps} steps, {starts}")


def _fewer_scans(asked: int, planned: int, steps: int, fit) -> str:
    """Why a match makes fewer pitch scans than --pitch-scans asked (found from outside: it said nothing)."""
    if steps == 0:
        return f"--pitch-scans {asked}: --steps 0 makes no scan"
    if planned == min(asked, steps):
        return f"--pitch-scans {asked}: at most one a step, so {planned} in {steps} steps"
    what = "none of the --fit parameters sets a pitch" if fit else "the patch has no oscillator's pitch to scan"
    return f"--pitch-scans {asked}: {what}, so no scan"


def _check_result_names(out_dir: Path) -> None:
    """Before any work: a result's name in --out taken by something that is not a file (a folder) was found only
    when the result was written (found from outside)."""
    for name in RESULT_FILES.values():
        path = out_dir / name
        if path.exists() and not path.is_file():
            raise click.UsageError(f"--out {out_dir}: {name} there is not a file, and the result is written under "
                                   "that name: move it away, or choose another --out")


def _replace_earlier_match(out_dir: Path, target: Path, init_path: Path | None, overwrite: bool) -> None:
    """--out holding an earlier match: refused unless --overwrite (a rerun replaced a better result without a word,
    found from outside) or --init is its theta.json (continuing it: the continued match starts from its best).
    Where it is replaced, its sounds and picture go now, before any work, so that a run killed before its result is
    whole leaves no mixture of two matches (its theta.json goes with the first snapshot or the result); the target
    itself stays where it is one of them (continuing a match of its own target.wav)."""
    previous = out_dir / RESULT_FILES["json"]
    if not previous.is_file():
        return
    continuing = init_path is not None and init_path.resolve() == previous.resolve()
    if not continuing:
        try:
            doc = json.loads(previous.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError, RecursionError):
            doc = None
        doc = doc if isinstance(doc, dict) and "theta" in doc else None
        was = (doc or {}).get("target")
        if not overwrite:
            loss = (doc or {}).get("loss")
            what = ", ".join(([str(was)] if was is not None else [])
                             + ([f"loss {loss:.4f}"] if isinstance(loss, (int, float)) else [])
                             + (["unfinished"] if (doc or {}).get("partial") else []))
            held = (f"an earlier match{f' ({what})' if what else ''}" if doc is not None
                    else "a theta.json that is not a match's")
            go_on = f", continue it with --init {previous}" if doc is not None else ""
            raise click.UsageError(f"--out {out_dir} holds {held}: add --overwrite to replace it{go_on}, or choose "
                                   "another --out")
        if was is not None and was != str(target):
            click.echo(f"note: replacing the match of {was} in {out_dir}")
    keep = target.resolve()
    for key in ("wav", "target", "png"):
        path = out_dir / RESULT_FILES[key]
        for old in (path, path.with_name(f".{path.name}.tmp")):  # and what a killed write left
            try:
                if old.resolve() != keep and (old.is_file() or old.is_symlink()):
                    old.unlink()
            except OSError as err:
                raise click.ClickException(f"cannot replace {old} ({err.strerror or err}): remove it, or choose "
                                           "another --out") from None


def _pitch_options(asked: int, done: int, pitch_step: float) -> str:
    """The continue line's pitch options after `done` of `asked` scans: the scans left (an --init run does none
    unless told), and the pitch step the descent goes on with: finer after a later scan, and after the first where
    one is left (the continued run does that one at its start, as a later scan)."""
    words = f" --pitch-scans {asked - done}" if asked > done else ""
    finer = done >= 2 or (done == 1 and asked > done)
    step = min(pitch_step, SCANNED_PITCH_STEP) if finer else pitch_step
    return words + (f" --pitch-step {step:g}" if step != 1.0 else "")


def _given(*names: str) -> list[str]:
    """The options among `names` (click parameter names) that this command line set, as they would be written."""
    ctx = click.get_current_context()
    words = []
    for name in names:
        if ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                              click.core.ParameterSource.ENVIRONMENT):
            value = ctx.params[name]
            words.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    return words


def _run_match(synth, audio, target, out_dir, init, fit, patch_spec, meta, restarts, steps, lr, seed, candidates,
               pitch_step, pitch_scans, progress) -> None:
    """The descent, the result's files and the exit status of `match_command` (its --out held); audio: the target
    on the device."""
    from doppel_torch.options import out_of_memory

    snapshot_failed = []

    def snapshot(taken: int, theta: torch.Tensor, loss: float) -> None:
        done = sum(step < taken for step in scan_steps(steps, pitch_scans))
        again = {"pitch_scans_done": done,  # what a killed run's continue line would have said (found from outside)
                 "continue": continue_line(steps - taken, done)}
        try:
            write_theta_json(out_dir / "theta.json", synth, theta.cpu(), loss, taken, extra={**meta, **again},
                             partial=True)
        except OSError as err:  # the match goes on; the final write says so again if it still cannot write
            if not snapshot_failed:
                snapshot_failed.append(err)
                click.echo(f"\nwarning: cannot write the snapshot {out_dir / 'theta.json'} "
                           f"({err.strerror or err}); the match goes on", err=True)

    def continue_line(steps_left: int, scans_done: int) -> str:
        """The whole command that goes on from a theta.json with `scans_done` of the scans and steps_left to go."""
        which = f"--patch {shlex.quote(patch_spec)}" if patch_spec else f"--synth {synth.patch.name}"
        again = "".join(f" --fit {shlex.quote(f)}" for f in fit)
        kept = "".join(f" {w}" for w in _given("restarts", "lr", "seed", "backend", "device"))
        kept += _pitch_options(pitch_scans, scans_done, pitch_step)
        named = str(target) if not str(target).startswith("-") else f"./{target}"  # not read as an option
        return (f"doppel-torch match {shlex.quote(named)} {which} --duration {synth.duration:g}{kept} --steps "
                f"{steps_left} --init {shlex.quote(str(out_dir / RESULT_FILES['json']))}{again} --out "
                f"{shlex.quote(str(out_dir))}")

    with _Signals() as signals:
        try:
            result = match(synth, audio, restarts=restarts, steps=steps, lr=lr, seed=seed,
                           candidates=candidates or None, init=init, fit=list(fit) or None,
                           pitch_step=pitch_step, pitch_scans=pitch_scans, progress=progress, snapshot=snapshot,
                           snapshot_seconds=SNAPSHOT_SECONDS)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        except (MemoryError, RuntimeError) as err:
            if not out_of_memory(err):
                raise
            raise click.ClickException(f"out of memory for {restarts} restarts of {synth.duration:g} s: use fewer "
                                       "--restarts or a shorter --duration") from None
        except KeyboardInterrupt:
            click.echo("interrupted before the first step: nothing to write", err=True)
            sys.exit(128 + (signals.received[0] if signals.received else signal.SIGINT))
        signals.hold()
        try:
            left = {"continue": continue_line(steps - result.steps, result.pitch_scans)} if result.interrupted else {}
            paths = write_result(result, synth, audio, out_dir,
                                 meta={**meta, "pitch_scans_done": result.pitch_scans, **left})
        except OSError as err:
            best = ", ".join(f"{v:.6g}" for v in result.theta.tolist())
            raise click.ClickException(f"cannot write the result in {out_dir} ({err.strerror or err}); the best "
                                       f"theta (loss {result.loss:.4f}) was: [{best}]") from None
        found = (result.restart_losses < 0.1 * result.initial_losses.median()).sum().item()
        status = f"interrupted after {result.steps} steps: " if result.interrupted else ""
        click.echo(f"{status}best spectral loss {result.loss:.4f} (restart {result.best_restart}), from starting "
                   f"points of median loss {float(result.initial_losses.median()):.4f}; {found} of {restarts} "
                   f"restarts ended below a tenth of that; {result.seconds:.1f} s")
        click.echo(f"wrote {paths['json']}, {paths['wav']}, {paths['target']} and {paths['png']}")
        if result.interrupted:
            click.echo(f"continue with: {continue_line(steps - result.steps, result.pitch_scans)}")
    if signals.received:  # stopped by a signal: say so in the exit status too (128 + its number, as train)
        sys.exit(128 + signals.received[0])
