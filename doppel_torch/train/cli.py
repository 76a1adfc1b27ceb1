r"""Train a ResNet18 on audio doppelgangers: the default recipe, a preset (--preset paper: the released code) and options.

    doppel-torch train --synth voice --preset cpu-smoke        # 27 steps, ~10-20 s on 2 CPU cores
    doppel-torch train --synth voicefm                         # the default recipe on one GPU
    doppel-torch train --synth voicefm --preset paper --ir-dir rirs/   # the paper's released code, exactly
    torchrun --standalone --nproc_per_node 8 -m doppel_torch.train --synth voicefm
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        -m doppel_torch.train --synth voicefm                  # run on each node
    doppel-torch train --resume runs/doppel                    # continue an interrupted run
"""

from __future__ import annotations

import errno
import gc
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from doppel_torch.delta.spec import MAX_DELTA
from doppel_torch.options import out_folder, out_of_memory, say
from doppel_torch.pairs import NOISE_MODES
from doppel_torch import runlock
from doppel_torch.train.config import BACKENDS, DEVICES, PRECISIONS, PRESETS, SYNTHS, TrainConfig, make_config

# CLI option name -> dotted config field.
OPTION_FIELDS = {
    "synth": "data.synth",
    "delta": "data.delta",
    "noise": "data.noise",
    "backend": "data.backend",
    "duration": "data.duration",
    "sounds_per_epoch": "data.sounds_per_epoch",
    "val_fraction": "data.val_fraction",
    "augment": "data.augment",
    "augment_group": "data.augment_group",
    "ir_dir": "data.ir_dir",
    "data": "data.data",
    "jitter": "data.jitter",
    "mix_layers": "data.mix_layers",
    "num_workers": "data.num_workers",
    "width": "model.width",
    "embed_dim": "model.embed_dim",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "epochs": "optim.epochs",
    "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "seed": "run.seed",
    "device": "run.device",
    "precision": "run.precision",
    "channels_last": "run.channels_last",
    "compile": "run.compile",
    "sync_batchnorm": "run.sync_batchnorm",
    "out": "run.out_dir",
    "max_steps": "run.max_steps",
    "log_every": "run.log_every",
    "val_every": "run.val_every",
    "val_batches": "run.val_batches",
    "checkpoint_every": "run.checkpoint_every",
    "keep_every": "run.keep_every",
    "examples": "run.examples",
    "progress": "run.progress",
    "tensorboard": "run.tensorboard",
}


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    """--set section.field=value (value parsed as int, float, bool, None or string)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected section.field=value, got {item!r}", param_hint="--set")
        lowered = raw.strip().lower()
        value: Any
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        out[key.strip()] = value
    return out


def resume_folder(resume: str) -> Path:
    """The run folder of a --resume argument: the folder itself, or the folder holding the checkpoint file."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def _name_options(message: str, options: dict[str, Any], sets: dict[str, Any]) -> str:
    """A config error as the user typed it: the first field that one of their options set (and no --set of the same
    field) is named by its option too ("--batch-size (optim.batch_size) must be >= 2" after --batch-size 0)."""
    for option, field in OPTION_FIELDS.items():
        if options.get(option) is not None and field not in sets and re.search(rf"{re.escape(field)}\b", message):
            # the whole field: data.augment is not data.augment_group (found from outside)
            return re.sub(rf"{re.escape(field)}\b", f"--{option.replace('_', '-')} ({field})", message, count=1)
    return message


# errors of writing the run's files (a full disk, a quota, a folder gone read-only): one line, not a traceback
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG}
RUN_FILES = ("last.pt", "metrics.csv")  # a folder holding either holds a run that a new one would overwrite


def _holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run: a checkpoint, or metrics of at least one step (a run stopped while it started
    leaves metrics.csv's header alone, which held the folder against the same command run again)."""
    if not any((folder / name).exists() for name in RUN_FILES):
        return False
    if (folder / "last.pt").exists():
        return True
    try:
        with open(folder / "metrics.csv") as fh:
            return sum(1 for _ in zip(range(2), fh)) > 1
    except OSError:
        return True


def _held(out: Path) -> click.UsageError:
    return click.UsageError(f"--out {out} is being written by another run ({runlock.holder(out)}): wait for it to "
                            "end, or choose another --out")


def _one_line_write_errors(args) -> None:
    """A background writer's OSError (TensorBoard's event thread on a full disk printed ~17 lines before the run's
    own one-line error) as one line; any other thread exception as Python prints it."""
    if issubclass(args.exc_type, OSError):
        error = args.exc_value
        name = args.thread.name if args.thread is not None else "a background thread"
        click.echo(f"warning: a background writer ({name}, e.g. TensorBoard's) could not write: "
                   f"{getattr(error, 'strerror', None) or error}", err=True)
        return
    threading.__excepthook__(args)


def _check_not_behind(resume: str, out: Path) -> None:
    """Refuse to continue, in a folder whose last.pt holds a run, a checkpoint file other than that last.pt which is
    of another run (a copy brought in) or behind it (an older epoch-NNNN.pt): either would replace the run's last.pt
    and rewrite its metrics.csv (found from outside)."""
    chosen, last = Path(resume), out / "last.pt"
    if chosen.is_dir() or not last.is_file() or chosen.resolve() == last.resolve():
        return
    from doppel_torch.train.checkpoint import load_checkpoint

    try:
        theirs, mine = load_checkpoint(last), load_checkpoint(chosen)
        ahead, step = int(theirs["step"]), int(mine["step"])
    except (ValueError, FileNotFoundError, KeyError):
        return  # a damaged last.pt is no run to keep; a damaged --resume file is refused when it is read
    other = theirs.get("run_id") is not None and mine.get("run_id") != theirs.get("run_id")
    if other or ahead > step:
        why = "is of another run than" if other else f"is at step {step}, behind"
        raise click.UsageError(f"--resume {resume} {why} {last} (step {ahead}): continuing it in {out} would "
                               f"overwrite that run; give --out NEW to go on from {chosen.name} in a new folder, or "
                               f"--resume {out} to continue the run")


def claim_run_folder(config: TrainConfig, resume: str | None,
                     explicit: bool) -> tuple[TrainConfig, runlock.RunLock | None]:
    """The folder this invocation writes, and its run lock (`runlock`; None on the ranks that write nothing).

    Never a folder that holds another run or that another run is writing: a resumed run continues in its own
    folder (unless --resume names an older checkpoint than the folder's last.pt); a new run whose folder holds a
    run, or is locked, goes to the next free `<folder>-2`, `-3`, ... when the folder was the default, and is refused
    (one line saying what to do) when the user named it. Before, a second `doppel-torch train` replaced the first
    run's last.pt, cut its metrics.csv and mixed both runs' examples and TensorBoard curves (found from outside).
    Every rank picks the same folder from what is on disk; only rank 0 takes the lock, and under torchrun a locked
    folder is refused rather than skipped (the other ranks could not know)."""
    out = Path(config.run.out_dir)
    writer = os.environ.get("RANK", "0") == "0"
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if resume is not None and out.resolve() == resume_folder(resume).resolve():
        _check_not_behind(resume, out)
        lock = runlock.try_lock(out) if writer else None
        if writer and lock is None:
            raise _held(out)
        return config, lock
    if _holds_run(out):
        if explicit or resume is not None:
            if writer and runlock.is_locked(out):
                raise _held(out)
            if not (out / "last.pt").exists():
                raise click.UsageError(f"--out {out} holds a run that stopped before its first checkpoint (metrics.csv, "
                                       "no last.pt): there is nothing in it to continue; delete that folder to start "
                                       "over in it, or choose another --out")
            raise click.UsageError(f"--out {out} holds another run (last.pt / metrics.csv): --resume {out} continues "
                                   "it, or choose another --out (or delete that folder to start over in it)")
    elif not writer:
        return config, None
    else:
        lock = runlock.try_lock(out)
        if lock is not None:
            return config, lock
        if explicit or resume is not None or not alone:
            raise _held(out)
    k = 1
    while True:  # the first <out>-k without a run that this process can lock (the other ranks: without a run)
        k += 1
        fresh = Path(f"{out}-{k}")
        if _holds_run(fresh):
            continue
        lock = runlock.try_lock(fresh) if writer else None
        if lock is not None or not writer:
            break
        if not alone:
            raise _held(fresh)
    if writer:
        if runlock.is_locked(out):
            busy = "is being written by another run"
        elif (out / "last.pt").exists():
            busy = f"holds a run (--resume {out} continues it)"
        else:
            busy = "holds a run that stopped before its first checkpoint"
        click.echo(f"note: {out} {busy}: this one writes {fresh}")
    return config.with_overrides({"run.out_dir": str(fresh)}), lock


def resolve_config(
    preset: str | None, resume: str | None, options: dict[str, Any], sets: dict[str, Any]
) -> TrainConfig:
    """Preset (or the resumed checkpoint's config) + explicit options + --set overrides -> a validated config."""
    overrides = {OPTION_FIELDS[k]: v for k, v in options.items() if v is not None}
    if resume is not None:
        if preset is not None:
            raise ValueError("--preset cannot be combined with --resume: a resumed run keeps its checkpoint's config")
        from doppel_torch.train.checkpoint import load_checkpoint

        base = TrainConfig.from_dict(load_checkpoint(resume)["config"])
        for field, option in (("data", "data"), ("ir_dir", "ir_dir")):  # a run started elsewhere, or data moved
            kept = getattr(base.data, field)
            if kept is not None and options.get(option) is None and f"data.{field}" not in sets \
                    and not Path(kept).is_dir():
                where = "" if Path(kept).is_absolute() else " (relative to the folder the run was started in)"
                raise ValueError(f"the run's {field.replace('_', '-')} folder {kept}{where} is not a folder here: "
                                 f"pass --{option.replace('_', '-')} PATH where it is now")
        # The run continues in the folder the user named (--out, else the checkpoint's own folder), never in the
        # run.out_dir stored inside the checkpoint; and a --max-steps cap of an earlier invocation does not carry
        # over (it would make every resume run 0 steps).
        overrides.setdefault("run.out_dir", str(resume_folder(resume)))
        base.run.max_steps = None
        overrides["run.resume"] = resume
        config = base.with_overrides(overrides)
    else:
        config = make_config(preset or "default", overrides)
    # --set values may legitimately be None (e.g. optim.lr=none), so apply them one by one.
    for key, value in sets.items():
        d = config.to_dict()
        section, _, name = key.partition(".")
        if section not in d or name not in d[section]:
            raise ValueError(f"--set {key}: unknown config field")
        d[section][name] = value
        config = TrainConfig.from_dict(d)
    # folders as absolute paths (a link kept a link, ~ expanded), so that --resume from another folder finds them
    # (found from outside)
    for field in ("data", "ir_dir"):
        value = getattr(config.data, field)
        if isinstance(value, str) and value.strip():
            value = os.path.expanduser(value)
            setattr(config.data, field, os.path.abspath(value) if Path(value).exists() else value)
    return config

_DEFAULT = TrainConfig()
_PAPER = make_config("paper")


def _number(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-") if 0 < abs(v) < 1e-3 else f"{v:g}"


def _default(name: str, shown: str | None = None) -> str:
    """'[default]' for a help text, read from the config so that help cannot drift from it; '[default; --preset
    paper: value]' where the paper preset differs. `shown` replaces the default's printed value."""
    section, _, key = name.partition(".")
    value, paper = getattr(getattr(_DEFAULT, section), key), getattr(getattr(_PAPER, section), key)

    def text(v: Any) -> str:
        return {True: "on", False: "off", None: "none"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else _number(v) if isinstance(v, float) else str(v)

    out = shown if shown is not None else text(value)
    return f"[{out}; --preset paper: {text(paper)}]" if paper != value else f"[{out}]"


@click.command("train", help=__doc__.split("\n\n")[0] + "\n\nExamples:\n\n\b\n" + __doc__.split("\n\n")[1])
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None, help="Starting config: default (the field defaults; the one used when --preset is not given), paper (the "
    "released training code: the '--preset paper' values below), cpu-smoke (a small CPU run).")
@click.option("--synth", type=click.Choice(SYNTHS), default=None, help=f"Synthesizer architecture {_default('data.synth')}.")
@click.option(
    "--delta", type=str, default=None, metavar="SPEC",
    help=f"Perturbation scale, 0 to {MAX_DELTA:g} (the rule of `sample` too): theta_k = clip(theta + delta z_k, eps, 1) "
    f"{_default('data.delta')}; or a per-parameter spec: equal-effect:0.25 (equal log-mel effect per parameter), "
    "0.25+keep:pitch=0.02 (groups: doppel-torch info --groups), equal-effect:0.25+keep:pitch=0.02.",
)
@click.option(
    "--noise", type=click.Choice(NOISE_MODES), default=None,
    help=f"Synth noise source of the pairs: one row shared by all sounds (the paper's), per view, or per sound {_default('data.noise')}.",
)
@click.option(
    "--backend", type=click.Choice(BACKENDS), default=None, help="Synth backend [auto: triton on CUDA, cpu (native) on CPU]."
)
@click.option("--duration", type=float, default=None, help=f"Seconds per sound {_default('data.duration')}.")
@click.option("--sounds-per-epoch", type=int, default=None, help=f"Sounds per epoch, train + validation {_default('data.sounds_per_epoch')}.")
@click.option("--val-fraction", type=float, default=None, help=f"Validation share of each epoch's sounds {_default('data.val_fraction')}.")
@click.option("--augment/--no-augment", default=None, help=f"Apply the paper's augmentation chain (HPF, LPF, pitch, shift, reverb with --ir-dir) {_default('data.augment')}.")
@click.option(
    "--ir-dir", type=click.Path(exists=True, file_okay=False), default=None, help="Impulse responses for reverb."
)
@click.option("--data", type=click.Path(), default=None, help="Train on real audio: a folder of wav/flac/ogg files.")
@click.option("--jitter/--no-jitter", default=None, help=f"Real data: two different segments per clip {_default('data.jitter')}.")
@click.option("--mix-layers", type=int, default=None, help=f"Real data: segments layered into each view {_default('data.mix_layers')}.")
@click.option("--num-workers", type=int, default=None, help=f"Real data: DataLoader workers {_default('data.num_workers')}.")
@click.option("--width", type=int, default=None, help=f"ResNet18 first-stage width {_default('model.width')}.")
@click.option("--embed-dim", type=int, default=None, help=f"Embedding dimension {_default('model.embed_dim')}.")
@click.option("--batch-size", type=int, default=None, help=f"Pairs per rank per step {_default('optim.batch_size')}.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [0.12 x global batch / 256].")
@click.option(
    "--epochs", type=int, default=None,
    help=f"Epochs {_default('optim.epochs')}. With --resume, more epochs extend the run: the LR milestones move to the same fractions "
    "of the new total and the LR becomes what that schedule gives at the current epoch (printed).",
)
@click.option("--weight-decay", type=float, default=None, help=f"SGD weight decay {_default('optim.weight_decay')}.")
@click.option("--momentum", type=float, default=None, help=f"SGD momentum {_default('optim.momentum')} (the released code has none; README: why the default differs).")
@click.option("--seed", type=int, default=None, help=f"Seed of data and initialisation {_default('run.seed')}.")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Device [auto: CUDA if present].")
@click.option(
    "--precision", type=click.Choice(PRECISIONS), default=None, help=f"auto = bf16 autocast on CUDA, fp32 on CPU {_default('run.precision')}."
)
@click.option("--channels-last/--no-channels-last", default=None, help=f"Channels-last memory format {_default('run.channels_last')}.")
@click.option("--compile/--no-compile", default=None, help=f"torch.compile the encoder {_default('run.compile')}.")
@click.option(
    "--sync-batchnorm/--no-sync-batchnorm", default=None, help=f"SyncBatchNorm across GPUs (multi-GPU CUDA runs) {_default('run.sync_batchnorm')}."
)
@click.option(
    "--out", type=click.Path(file_okay=False), default=None,
    help="Run folder [runs/doppel; with --resume, the checkpoint's folder].",
)
@click.option("--resume", type=click.Path(exists=True), default=None, help="Checkpoint file or run folder to continue.")
@click.option(
    "--max-steps", type=int, default=None,
    help="Stop after this many optimizer steps in total (counted from step 0; not kept by a later --resume).",
)
@click.option(
    "--log-every", type=int, default=None,
    help=f"Steps between logged training metrics (CSV, TensorBoard; a printed line with --no-progress) {_default('run.log_every')}.",
)
@click.option("--val-every", type=int, default=None, help=f"Epochs between validations {_default('run.val_every')}.")
@click.option("--val-batches", type=int, default=None, help="Cap on validation batches [all].")
@click.option("--checkpoint-every", type=int, default=None, help=f"Steps between writes of last.pt {_default('run.checkpoint_every')}.")
@click.option(
    "--keep-every", type=int, default=None,
    help=f"Also keep a checkpoint epoch-NNNN.pt every this many epochs (0: only last.pt) {_default('run.keep_every')}.",
)
@click.option(
    "--augment-group", type=int, default=None,
    help=f"Sounds of a batch that share one augmentation draw (1: per sound) {_default('data.augment_group')}.",
)
@click.option("--examples", type=int, default=None, help=f"Audio/spectrogram examples written at validation {_default('run.examples')}.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [on].")
@click.option("--tensorboard/--no-tensorboard", default=None, help="TensorBoard logs [on].")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE", help="Override any config field.")
def train(preset: str | None, resume: str | None, sets: tuple[str, ...], **options: Any) -> None:
    from doppel_torch.train.data import NoAudioLeft
    from doppel_torch.train.distributed import cleanup, peer_gone
    from doppel_torch.train.loop import NonFiniteLoss, Trainer

    parsed: dict[str, Any] = {}
    try:
        parsed = _parse_set(sets)
        config = resolve_config(preset, resume, options, parsed)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(_name_options(str(exc), options, parsed)) from None
    config, lock = claim_run_folder(config, resume,
                                    explicit=options.get("out") is not None or "run.out_dir" in parsed)
    out_folder(config.run.out_dir)  # before the model is built: a run folder that cannot take files costs nothing
    trainer = None
    threading.excepthook = _one_line_write_errors
    try:
        try:
            trainer = Trainer(config, log=say)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        summary = trainer.fit()
        if summary["status"] == "interrupted":  # stopped by a signal and saved: a further one has nothing to stop
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        last = Path(config.run.out_dir) / "last.pt"
        kept = (f"{last} holds the last checkpoint written; when there is room, --resume {config.run.out_dir} "
                "continues from it") if last.is_file() else "no checkpoint was written"
        raise click.ClickException(f"could not write {exc.filename or config.run.out_dir}: {exc.strerror}; the run "
                                   f"stopped ({kept})") from None
    except (NonFiniteLoss, NoAudioLeft) as exc:  # before RuntimeError, their base (found from outside: a traceback)
        # from a DataLoader worker the message holds the worker's traceback: its last line is the message
        raise click.ClickException(str(exc).strip().splitlines()[-1].split(f"{type(exc).__name__}: ")[-1]) from None
    except (MemoryError, RuntimeError) as exc:
        if trainer is not None and trainer.env.distributed and peer_gone(exc):
            # torchrun stops the others when one process dies: their step cannot finish, nor its checkpoint
            last = Path(config.run.out_dir) / "last.pt"
            kept = (f"{last} holds the last checkpoint written (--resume {config.run.out_dir} continues from it)"
                    if last.is_file() else "no checkpoint was written")
            reason = str(exc).strip().splitlines()[-1].split("] ")[-1][:120]
            click.echo(f"rank {trainer.env.rank}: another process of this run is gone ({reason}), so this process "
                       f"stops where it is and saves nothing; {kept}", err=True)
            signum = trainer._stop_signal
            sys.exit(128 + signum if signum else 1)
        if not out_of_memory(exc):
            raise
        raise click.ClickException(f"out of memory ({config.optim.batch_size} sounds of {config.data.duration:g} s a "
                                   f"batch, model width {config.model.width}): lower --batch-size, --duration or "
                                   "--width") from None
    finally:
        # The DDP model holds the process group: drop it first, so destroy_process_group joins gloo's threads now
        # rather than at interpreter exit (where a rank was seen to abort once: "terminate called without an
        # active exception").
        del trainer
        gc.collect()
        cleanup()
        if lock is not None:
            lock.release()
        threading.excepthook = threading.__excepthook__
    if summary["status"] == "interrupted":
        sys.exit(128 + int(summary["signal"]))
