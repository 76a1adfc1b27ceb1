"""`doppel-torch eval`: probes of trained encoders on tasks from disk (protocols paper, hear, arch), baselines beside.

    doppel-torch eval runs/exp/last.pt --task fsdd --task esc50:/data/ESC-50-master --out eval-results
    doppel-torch eval runs/a/last.pt runs/b/last.pt --task csv:my_manifest.csv --probe hear
    doppel-torch eval runs/exp/last.pt --suite paper --data-root /data --task fsdd

Task specs are KIND[:PATH]: fsdd (digit + speaker), fsdd-digit, fsdd-speaker, esc50, us8k, vivae, nsynth-pitch-5h,
crema-d, fsd50k, vocal-imitation, libricount, hear, folder, csv. `--suite paper` adds every task of the paper's
Table 1 found under --data-root (see `doppel_torch.eval.suite`) and prints the table in the paper's column order.
Writes eval.json and eval.md into --out and prints the table. Embeddings are cached on disk per
checkpoint content and audio file content (--cache-dir), so a rerun only fits the probes.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from doppel_torch.eval.cache import EmbeddingCache
from doppel_torch.eval.embed import Embedder
from doppel_torch.eval.evaluate import EvaluationFailed, EvaluationInterrupted, evaluate
from doppel_torch.eval.probe import PROBE_CHOICES, RENAMED, ProbeConfig
from doppel_torch.eval.report import markdown_table, write_report
from doppel_torch.eval.suite import SUITES, find_suite, suite_markdown, suite_summary, suite_table
from doppel_torch.eval.tasks import parse_task_spec
from doppel_torch.options import FolderPath, device_option, out_folder, say

DEFAULT_CACHE = Path("~/.cache/doppel_torch/embeddings")  # beside the cpu kernel's builds


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise click.BadParameter(f"seeds must be comma-separated integers, got {text!r}", param_hint="--seeds") from e
    if not seeds:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    if not all(0 <= s < 2**63 for s in seeds):  # torch's seeds: a larger one failed after every file was embedded
        raise click.BadParameter(f"seeds must lie in [0, 2^63), got {text!r}", param_hint="--seeds")
    if len(set(seeds)) < len(seeds):  # a repeated seed repeats its runs and narrows the std without information
        raise click.BadParameter(f"seeds must differ, got {text!r}", param_hint="--seeds")
    return seeds


def _checkpoint_names(paths: tuple[str, ...]) -> list[str]:
    """Short names for the report: the run folder's name (for .../run/last.pt) or the file stem."""
    names = []
    for p in map(Path, paths):
        base = p.name if p.is_dir() else (p.parent.name if p.stem in ("last", "best") and p.parent.name else p.stem)
        name, k = base, 2
        while name in names or name in ("random-init", "log-mel"):
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _run_facts(task_specs, suite, data_root, max_files, device) -> dict:
    """What eval.json needs besides its results to be read, or run, again: the tasks as given and the folder they
    were given in ($DOPPEL_SHARED too: `--task fsdd` reads it), --max-files, the device and the versions."""
    import platform

    import torch

    import doppel_torch

    return dict(tasks=list(task_specs), suite=suite, data_root=data_root, cwd=os.getcwd(),  # paths as typed
                doppel_shared=os.environ.get("DOPPEL_SHARED"), max_files=max_files, device=device,
                versions=dict(doppel_torch=doppel_torch.__version__, torch=torch.__version__,
                              python=platform.python_version()))


def _open_cache(cache_dir: str) -> EmbeddingCache | None:
    """The embedding cache at --cache-dir. One it cannot write (a shared, read-only one) is read and not added to; one
    it cannot create goes unused: each said in one line, as the cache only saves time."""
    cache = EmbeddingCache(cache_dir)
    why = cache.unwritable()
    if why is None:
        return cache
    if cache.root.is_dir():
        click.echo(f"warning: cannot write in --cache-dir {cache.root} ({why}): reading the embeddings cached there, "
                   "adding none", err=True)
        cache.write_failed = True
        return cache
    click.echo(f"warning: cannot create --cache-dir {cache.root} ({why}): going on without the embedding cache "
               "(--cache-dir FOLDER keeps one elsewhere)", err=True)
    return None


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, type=click.Path(exists=True))
@click.option("--task", "-t", "task_specs", multiple=True, metavar="KIND[:PATH]",
              help="Task to probe (repeatable): fsdd, fsdd-digit, fsdd-speaker, esc50:PATH, us8k:PATH, "
                   "vivae:PATH, nsynth-pitch-5h:PATH, crema-d:PATH, fsd50k:PATH, vocal-imitation:PATH, "
                   "libricount:PATH (each the dataset's own folder), hear:PATH, folder:PATH, csv:PATH. fsdd without a "
                   "PATH reads $DOPPEL_SHARED/data/fsdd (default: the shared/ folder beside the checkout); fsdd:PATH "
                   "reads PATH/recordings/ (or PATH itself).")
@click.option("--suite", type=click.Choice(sorted(SUITES)), default=None,
              help="Run every task of a suite found under --data-root: paper = Table 1's ESC-50, UrbanSound8K, "
                   "VIVAE, NSynth pitch 5h, CREMA-D, FSD50K, Vocal Imitation, LibriCount, each as a HEAR task "
                   "folder (DIR/esc50-v2.0.0-full/, DIR/tasks/...) or in its own layout (DIR/ESC-50-master/, "
                   "DIR/UrbanSound8K/, DIR/VIVAE/, DIR/nsynth/, DIR/CREMA-D/, DIR/FSD50K/, DIR/VocalImitationSet/, "
                   "DIR/LibriCount10-0dB/); absent tasks are skipped with a line saying where it looked.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="Folder holding the datasets of --suite.")
@click.option("--out", "out_dir", type=FolderPath(), default="eval-results", show_default=True,
              help="Folder for eval.json and eval.md.")
@click.option("--probe", "probe_kind", type=click.Choice(PROBE_CHOICES + tuple(RENAMED)), default="paper",
              show_default=True, metavar="[paper|hear|arch]",
              help="Probe protocol. paper: the paper's linear probe (Adam lr 1e-3, batch 32, early stopping, "
                   "patience 20, max 200 epochs; 'linear' is an alias); hear: hear-eval-kit's MLP grid (8 of its 16 "
                   "points drawn with seed 42, selected on the first split); arch: ARCH's linear protocol (AdamW, "
                   "warm-up + linear decay, 200 epochs, 80/20 train/valid of the non-test folds, best epoch by "
                   "validation loss; adds macro F1). Each is documented with its source lines in "
                   "doppel_torch/eval/probe.py.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Probe seeds, comma-separated.")
@click.option("--max-epochs", type=click.IntRange(1, 100_000), default=None,
              help="Epoch cap of every probe fit [the protocol's: paper 200, hear 500, arch 200].")
@click.option("--patience", type=click.IntRange(1, 100_000), default=None,
              help="Early stopping: validation checks without improvement [paper 20, hear 20; arch has none].")
@click.option("--lr", type=float, default=None, help="Learning rate [paper 1e-3, arch 1e-3; hear: its grid's].")
@click.option("--batch-size", type=click.IntRange(1, 2**20), default=None, help="Probe batch size [paper 32, hear 1024, arch 32].")
@click.option("--standardize/--no-standardize", default=None,
              help="Z-score the embeddings with training-split statistics before the probe [paper: on; hear, arch: "
                   "off, as the kits].")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also probe a random-init ResNet18 and pooled log-mel features.")
@click.option("--random-init-seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the random-init baseline (same architecture as the first checkpoint).")
@click.option("--max-files", type=click.IntRange(min=1), default=None,
              help="Use at most this many files of each task, for quick runs: each fold keeps a share proportional "
                   "to its size, drawn round-robin over the classes (deterministic). Default: every file.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=str(DEFAULT_CACHE), show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--device", default=None, help="Device for the encoders (default: cuda if available, else cpu).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_command(checkpoints, task_specs, suite, data_root, out_dir, probe_kind, seeds, max_epochs, patience, lr,
                 batch_size, standardize, baselines, random_init_seed, max_files, cache_dir, no_cache, device, quiet):
    """Probe the encoders of CHECKPOINTS (files or run folders) on each --task and --suite task; print a table
    and write JSON + markdown reports. Without CHECKPOINTS, only the baselines are probed."""
    seeds_list = _parse_seeds(seeds)
    if not checkpoints and not baselines:
        raise click.UsageError("nothing to evaluate: give CHECKPOINTS, or keep the baselines on")
    if not task_specs and not suite:
        raise click.UsageError("no task: give --task KIND[:PATH] (repeatable) or --suite paper --data-root DIR")
    if (suite is None) != (data_root is None):
        raise click.UsageError("--suite and --data-root go together: --suite paper --data-root DIR")
    if probe_kind in RENAMED:
        raise click.BadParameter(f"{probe_kind!r} was replaced by {RENAMED[probe_kind]!r} (the kit's grid as its "
                                 "source defines it)", param_hint="--probe")
    if lr is not None and not 0.0 < lr < float("inf"):
        raise click.BadParameter(f"must be a positive number, got {lr}", param_hint="--lr")
    device = str(device_option(device))
    checkpoint_paths = {name: str(Path(p).resolve()) for name, p in zip(_checkpoint_names(checkpoints), checkpoints)}
    out_folder(out_dir)  # before any probe is fit: a folder that cannot take the report costs nothing
    run_facts = _run_facts(task_specs, suite, data_root, max_files, device)
    cache = None if no_cache else _open_cache(cache_dir)
    try:
        try:
            config = ProbeConfig(protocol=probe_kind, lr=lr, batch_size=batch_size, max_epochs=max_epochs,
                                 patience=patience, standardize=standardize)
        except ValueError as err:  # options that do not go together (--probe arch --patience 3)
            raise click.UsageError(str(err)) from None
        # the checkpoints first: a bad one is refused before any task folder is read; either is a usage error
        try:
            embedders = {name: Embedder.from_checkpoint(path, device=device) for name, path in checkpoint_paths.items()}
        except (ValueError, FileNotFoundError) as err:
            raise click.BadParameter(str(err), param_hint="CHECKPOINTS") from None
        try:
            tasks = [t for spec in task_specs for t in parse_task_spec(spec)]
        except (ValueError, FileNotFoundError) as err:
            raise click.BadParameter(str(err), param_hint="--task") from None
        if suite:
            found, missing = find_suite(suite, data_root)
            for line in missing:
                click.echo(line, err=True)
            for entry, task, folder, fmt in found:
                click.echo(f"task {entry.column} ({entry.name}): {len(task)} files, {fmt} at {folder}", err=True)
            if not found and not tasks:
                raise ValueError(f"no usable task of suite {suite!r} under {data_root} (see the lines above)")
            tasks = [task for _, task, _, _ in found] + tasks
        if max_files is not None:
            if max_files < 1:
                raise ValueError("--max-files must be >= 1")
            for t in tasks:  # a file a fold: cross-validation needs 3 folds (test, valid, train)
                if t.split_mode == "folds" and max_files < 3 < len(t):
                    raise click.UsageError(f"--max-files {max_files} leaves task {t.name} fewer than the 3 folds "
                                     "cross-validation needs (test, valid, train): give --max-files 3 or more")
            whole, tasks = tasks, [t.sample(max_files, seed=0) for t in tasks]
            for before, task in zip(whole, tasks):
                if len(task) == len(before):
                    continue
                if len(task.classes) < 2:  # every probe would score 100 %, chance too (found from outside)
                    raise click.UsageError(f"--max-files {max_files} leaves task {task.name} with {len(task.classes)} of "
                                     f"its {len(before.classes)} classes (a small draw keeps the same classes in "
                                     "every fold): a probe needs 2 or more, raise --max-files")
                click.echo(f"task {task.name}: {len(task)} of {len(before)} files (--max-files), "
                           f"{len(task.classes)} of {len(before.classes)} classes", err=True)
        if baselines:
            # Same architecture as the (first) trained encoder, so the baseline isolates the training;
            # the paper's ResNet18 (512-d, width 64) when there is no checkpoint.
            first = next(iter(embedders.values())).encoder if embedders else None
            embedders["random-init"] = Embedder.random_init(
                random_init_seed, embed_dim=first.embed_dim if first else 512, width=first.width if first else 64,
                device=device,
            )
            embedders["log-mel"] = Embedder.log_mel(device=device)
        report = evaluate(embedders, tasks, config, seeds_list, cache, progress=not quiet)
    except EvaluationFailed as failed:  # keep the finished tasks, then say why the next one could not be probed
        report = {**failed.report, "checkpoints": checkpoint_paths, "run": run_facts}
        json_path, md_path = write_report(report, out_dir)
        click.echo(f"wrote the {len(report['tasks'])} finished task(s) to {json_path} and {md_path}", err=True)
        raise click.ClickException(str(failed)) from None
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    except EvaluationInterrupted as stop:  # keep the finished tasks, then stop as any Ctrl-C (exit 130 / 143)
        report = stop.report
        cut = report["interrupted"]["task"]
        if report["tasks"]:
            report["checkpoints"] = checkpoint_paths
            report["run"] = run_facts
            json_path, md_path = write_report(report, out_dir)
            click.echo(f"\ninterrupted during task {cut}: wrote the {len(report['tasks'])} finished task(s) to "
                       f"{json_path} and {md_path}" + ("" if no_cache else " (their embeddings are cached: a rerun "
                                                       "embeds only what was not)"), err=True)
        else:
            earlier = (" (the eval.json there is an earlier run's)" if (Path(out_dir) / "eval.json").exists()
                       else "")
            click.echo(f"\ninterrupted during task {cut}, the first: no task finished, nothing written to "
                       f"{out_dir}{earlier}", err=True)
        raise KeyboardInterrupt from None
    report["checkpoints"] = checkpoint_paths
    report["run"] = run_facts
    for name, entry in report["tasks"].items():
        if entry["unreadable"]:
            click.echo(f"warning: {name}: {len(entry['unreadable'])} unreadable file(s) left out, e.g. "
                       f"{entry['unreadable'][0]['path']}: {entry['unreadable'][0]['error']}", err=True)
        if entry.get("unseen_in_training"):
            split, classes = next(iter(entry["unseen_in_training"].items()))
            shown = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
            click.echo(f"warning: {name}: in {len(entry['unseen_in_training'])} of its {len(entry['splits'])} "
                       f"split(s) the test side has classes the training side lacks (split {split}: {shown}): no "
                       "probe gets those right (more files per class, or each class in several folds, avoids it)",
                       err=True)
    if suite:
        report["suite"] = suite_summary(suite, data_root, found, missing)
    say(suite_table(report) if suite else markdown_table(report))  # first: a report that cannot be
    try:                                                                    # written is not lost
        json_path, md_path = write_report(report, out_dir)
        if suite:
            with open(md_path, "a") as f:
                f.write("\n" + suite_markdown(report) + "\n")
    except OSError as err:
        raise click.ClickException(f"cannot write the report in {out_dir}: {err.strerror or err} (free some space or "
                                   "choose another --out; the table above is the result)") from None
    say(f"wrote {json_path} and {md_path}")
