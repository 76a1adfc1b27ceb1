r"""Train a ResNet18 on audio doppelgangers: the paper's recipe by default; presets and options override it.

    doppel-torch train --synth voice --preset cpu-smoke        # 27 steps, ~10-20 s on 2 CPU cores
    doppel-torch train --synth voicefm                         # the paper's recipe on one GPU
    torchrun --standalone --nproc_per_node 8 -m doppel_torch.train --synth voicefm
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        -m doppel_torch.train --synth voicefm                  # run on each node
    doppel-torch train --resume runs/doppel                    # continue an interrupted run
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from doppel_torch.pairs import MAX_DELTA, NOISE_MODES
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
        # The run continues in the folder the user named (--out, else the checkpoint's own folder), never in the
        # run.out_dir stored inside the checkpoint; and a --max-steps cap of an earlier invocation does not carry
        # over (it would make every resume run 0 steps).
        overrides.setdefault("run.out_dir", str(resume_folder(resume)))
        base.run.max_steps = None
        overrides["run.resume"] = resume
        config = base.with_overrides(overrides)
    else:
        config = make_config(preset or "paper", overrides)
    # --set values may legitimately be None (e.g. optim.lr=none), so apply them one by one.
    for key, value in sets.items():
        d = config.to_dict()
        section, _, name = key.partition(".")
        if section not in d or name not in d[section]:
            raise ValueError(f"--set {key}: unknown config field")
        d[section][name] = value
        config = TrainConfig.from_dict(d)
    return config


@click.command("train", help=__doc__.split("\n\n")[0] + "\n\nExamples:\n\n\b\n" + __doc__.split("\n\n")[1])
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None, help="Starting config [paper].")
@click.option("--synth", type=click.Choice(SYNTHS), default=None, help="Synthesizer architecture [voice].")
@click.option(
    "--delta", type=float, default=None,
    help=f"Perturbation scale, 0 to {MAX_DELTA:g} (the rule of `sample` too): theta_k = clip(theta + delta z_k, eps, 1) [0.25].",
)
@click.option(
    "--noise", type=click.Choice(NOISE_MODES), default=None,
    help="Synth noise source of the pairs: one row shared by all sounds (the paper's), per view, or per sound [shared].",
)
@click.option(
    "--backend", type=click.Choice(BACKENDS), default=None, help="Synth backend [auto: triton on CUDA, cpu (native) on CPU]."
)
@click.option("--duration", type=float, default=None, help="Seconds per sound [1.0].")
@click.option("--sounds-per-epoch", type=int, default=None, help="Sounds per epoch, train + validation [100000].")
@click.option("--val-fraction", type=float, default=None, help="Validation share of each epoch's sounds [0.1].")
@click.option("--augment/--no-augment", default=None, help="Apply the paper's augmentation chain [off].")
@click.option(
    "--ir-dir", type=click.Path(exists=True, file_okay=False), default=None, help="Impulse responses for reverb."
)
@click.option("--data", type=click.Path(), default=None, help="Train on real audio: a folder of wav/flac/ogg files.")
@click.option("--jitter/--no-jitter", default=None, help="Real data: two different segments per clip [on].")
@click.option("--mix-layers", type=int, default=None, help="Real data: segments layered into each view [1].")
@click.option("--num-workers", type=int, default=None, help="Real data: DataLoader workers [2].")
@click.option("--width", type=int, default=None, help="ResNet18 first-stage width [64].")
@click.option("--embed-dim", type=int, default=None, help="Embedding dimension [512].")
@click.option("--batch-size", type=int, default=None, help="Pairs per rank per step [768].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [0.12 x global batch / 256].")
@click.option(
    "--epochs", type=int, default=None,
    help="Epochs [200]. With --resume, more epochs extend the run: the LR milestones move to the same fractions "
    "of the new total and the LR becomes what that schedule gives at the current epoch (printed).",
)
@click.option("--weight-decay", type=float, default=None, help="SGD weight decay [1e-6].")
@click.option("--momentum", type=float, default=None, help="SGD momentum [0.9].")
@click.option("--seed", type=int, default=None, help="Seed of data and initialisation [0].")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Device [auto: CUDA if present].")
@click.option(
    "--precision", type=click.Choice(PRECISIONS), default=None, help="auto = bf16 autocast on CUDA, fp32 on CPU."
)
@click.option("--channels-last/--no-channels-last", default=None, help="Channels-last memory format [on].")
@click.option("--compile/--no-compile", default=None, help="torch.compile the encoder [off].")
@click.option(
    "--sync-batchnorm/--no-sync-batchnorm", default=None, help="SyncBatchNorm across GPUs [off, as the paper]."
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
    help="Steps between logged training metrics (CSV, TensorBoard; a printed line with --no-progress) [50].",
)
@click.option("--val-every", type=int, default=None, help="Epochs between validations [1].")
@click.option("--val-batches", type=int, default=None, help="Cap on validation batches [all].")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints [1000].")
@click.option("--examples", type=int, default=None, help="Audio/spectrogram examples written at validation [4].")
@click.option("--progress/--no-progress", default=None, help="Progress bar [on].")
@click.option("--tensorboard/--no-tensorboard", default=None, help="TensorBoard logs [on].")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE", help="Override any config field.")
def train(preset: str | None, resume: str | None, sets: tuple[str, ...], **options: Any) -> None:
    from doppel_torch.train.distributed import cleanup
    from doppel_torch.train.loop import NonFiniteLoss, Trainer

    try:
        config = resolve_config(preset, resume, options, _parse_set(sets))
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        try:
            trainer = Trainer(config, log=click.echo)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        summary = trainer.fit()
    except NonFiniteLoss as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        cleanup()
    if summary["status"] == "interrupted":
        sys.exit(128 + int(summary["signal"]))
