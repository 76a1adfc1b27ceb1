"""Task suites: the paper's Table 1 found under one data folder, in the HEAR task format or each dataset's layout.

    found, missing = find_suite("paper", "~/data")   # found: [(SuiteTask, Task, where)], missing: one line each
    doppel-torch eval runs/doppel/last.pt --suite paper --data-root ~/data

`PAPER_SUITE` lists the eight tasks of the paper's Table 1 in its column order (ESC, US8K, VIV, NSyn, C-D, FSD,
VI, LCount), each with its metric and where its protocol comes from: the HEAR 2021 tasks (ESC-50, NSynth pitch
5h, CREMA-D, FSD50K, Vocal Imitation, LibriCount) with HEAR's splits and primary scores, the ARCH tasks
(UrbanSound8K, VIVAE) with ARCH's folds. For each task the HEAR task folder (``DIR/<hear name>/`` or
``DIR/tasks/<hear name>/``, as hear-preprocess writes it) is used if present, else the dataset's own layout
(``DIR/ESC-50-master/``, ...; see the loaders in `doppel_torch.eval.tasks`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from doppel_torch.eval.tasks import (
    Task, crema_d, esc50, fsd50k, hear_task, libricount, nsynth_pitch, urbansound8k, vivae, vocal_imitation,
)


@dataclass(frozen=True)
class SuiteTask:
    """One column of a suite table.

    Args:
        column: the paper's column header (``ESC``).
        name: the task's name in reports (``esc50``).
        metric: ``accuracy`` or ``mAP``.
        protocol: where its split and metric come from, in words.
        hear: the HEAR task folder name, or None where HEAR has no such task.
        layouts: (folder under the data root, a path inside it that marks the layout) pairs, tried in order.
        loader: reads the dataset's own layout from that folder.
        paper: Table 1's scores (%) for the reference rows, by row name.
    """

    column: str
    name: str
    metric: str
    protocol: str
    hear: str | None
    layouts: tuple[tuple[str, str], ...]
    loader: Callable[[Path], Task]
    paper: dict[str, float]


# The paper's Table 1 rows printed under a suite table for reference (the paper's linear probes, full data).
PAPER_ROWS = ("Random Init.", "Voice (δ = 0.25)")


def _paper(random_init: float, voice: float) -> dict[str, float]:
    return dict(zip(PAPER_ROWS, (random_init, voice)))


PAPER_SUITE: tuple[SuiteTask, ...] = (
    SuiteTask("ESC", "esc50", "accuracy", "HEAR esc50-v2.0.0-full: the 5 official folds", "esc50-v2.0.0-full",
              (("ESC-50-master", "meta/esc50.csv"), ("ESC-50", "meta/esc50.csv"), ("esc50", "meta/esc50.csv")),
              esc50, _paper(22.45, 58.90)),
    SuiteTask("US8K", "us8k", "accuracy", "ARCH: the 10 official folds", None,
              (("UrbanSound8K", "metadata/UrbanSound8K.csv"), ("urbansound8k", "metadata/UrbanSound8K.csv")),
              urbansound8k, _paper(55.03, 66.71)),
    SuiteTask("VIV", "vivae", "accuracy", "ARCH: one fold per speaker (11)", None,
              (("VIVAE", "full_set"), ("vivae", "full_set")), vivae, _paper(33.81, 39.45)),
    SuiteTask("NSyn", "nsynth-pitch-5h", "accuracy",
              "HEAR nsynth_pitch-v2.2.3-5h: pitches 21-108, NSynth's split, 5 h subsample",
              "nsynth_pitch-v2.2.3-5h",
              (("nsynth", "nsynth-train/examples.json"), ("NSynth", "nsynth-train/examples.json"),
               (".", "nsynth-train/examples.json")),
              nsynth_pitch, _paper(36.20, 32.20)),
    SuiteTask("C-D", "crema-d", "accuracy", "HEAR tfds_crema_d-1.0.0-full: 5 folds by file",
              "tfds_crema_d-1.0.0-full",
              (("CREMA-D", "AudioWAV"), ("crema-d", "AudioWAV"), ("crema_d", "AudioWAV")),
              crema_d, _paper(38.91, 48.24)),
    SuiteTask("FSD", "fsd50k", "mAP", "HEAR fsd50k-v1.0-full: dev train / dev val / eval", "fsd50k-v1.0-full",
              (("FSD50K", "FSD50K.ground_truth/dev.csv"), ("fsd50k", "FSD50K.ground_truth/dev.csv"),
               (".", "FSD50K.ground_truth/dev.csv")),
              fsd50k, _paper(9.03, 24.12)),
    SuiteTask("VI", "vocal-imitation", "mAP", "HEAR vocal_imitation-v1.1.3-full: 3 folds by file, mAP",
              "vocal_imitation-v1.1.3-full",
              (("VocalImitationSet", "vocal_imitations.txt"), ("vocal_imitation", "vocal_imitations.txt")),
              vocal_imitation, _paper(2.43, 9.15)),
    SuiteTask("LCount", "libricount", "accuracy", "HEAR libricount-v1.0.0-hear2021-full: 5 folds by file",
              "libricount-v1.0.0-hear2021-full",
              (("LibriCount10-0dB", "test"), ("LibriCount", "test"), ("libricount", "test")),
              libricount, _paper(44.91, 52.95)),
)
SUITES = {"paper": PAPER_SUITE}


def _looked_for(entry: SuiteTask, root: Path) -> list[Path]:
    paths = []
    if entry.hear:
        paths += [root / entry.hear / "task_metadata.json", root / "tasks" / entry.hear / "task_metadata.json"]
    paths += [root / folder / marker for folder, marker in entry.layouts]
    return [Path(str(p).replace("/./", "/")) for p in paths]


def locate(entry: SuiteTask, root: Path) -> tuple[Path, str] | None:
    """(folder, ``"HEAR"`` or ``"own layout"``) of the first layout of `entry` present under `root`, or None."""
    if entry.hear:
        for folder in (root / entry.hear, root / "tasks" / entry.hear):
            if (folder / "task_metadata.json").is_file():
                return folder, "HEAR"
    for folder, marker in entry.layouts:
        if (root / folder / marker).exists():
            return (root / folder).resolve() if folder == "." else root / folder, "own layout"
    return None


def find_suite(suite: str, data_root: Path | str) -> tuple[list[tuple[SuiteTask, Task, Path, str]], list[str]]:
    """The tasks of `suite` present under `data_root`, in the suite's column order.

    Returns (found: (entry, task, folder, format) per task present, missing: one line per task not run: an absent
    one says where it looked, one whose layout is present but cannot be read (an empty audio folder, a bad metadata
    file) says why, so that one broken dataset does not stop the other seven.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; give the folder that holds the datasets")
    found, missing = [], []
    for entry in SUITES[suite]:
        where = locate(entry, root)
        if where is None:
            looked = [str(p) for p in _looked_for(entry, root)]
            missing.append(f"task {entry.column} ({entry.name}): not found (looked for "
                           f"{', '.join(looked[:-1])} or {looked[-1]})")
            continue
        folder, fmt = where
        try:
            task = hear_task(folder) if fmt == "HEAR" else entry.loader(folder)
            if task.multilabel and entry.metric != "mAP":
                raise ValueError(f"{folder}: task {entry.name} is multi-label, the suite scores it by {entry.metric}")
        except (ValueError, OSError) as err:
            missing.append(f"task {entry.column} ({entry.name}): {folder} is there but cannot be used, so it is "
                           f"left out: {err}")
            continue
        found.append((entry, dataclasses.replace(task, name=entry.name, metric=entry.metric), folder, fmt))
    return found, missing


def suite_summary(suite: str, data_root: Path | str, found, missing: list[str]) -> dict:
    """The JSON-ready record of which suite tasks ran from where (``report["suite"]``)."""
    ran = {entry.name: (folder, fmt) for entry, _, folder, fmt in found}
    return dict(
        name=suite, data_root=str(Path(data_root).expanduser().resolve()),
        tasks=[dict(column=e.column, name=e.name, metric=e.metric, protocol=e.protocol,
                    folder=str(ran[e.name][0]) if e.name in ran else None,
                    format=ran[e.name][1] if e.name in ran else None)
               for e in SUITES[suite]],
        missing=list(missing),
    )


def _cell(result: dict | None) -> str:
    return "–" if result is None else f"{100 * result['mean']:.1f} ± {100 * result['std']:.1f}"


def suite_table(report: dict) -> str:
    """One markdown table in the suite's column order (absent tasks as –), extra tasks after it; rows: the
    extractors, then Table 1's reference rows. Cells: mean ± std (%) over splits x seeds."""
    entries = SUITES[report["suite"]["name"]]
    suite_names = {e.name for e in entries}
    extra = [t for t in report["tasks"] if t not in suite_names]
    metric_short = {"accuracy": "acc", "mAP": "mAP"}
    header = [f"{e.column} ({metric_short[e.metric]})" for e in entries]
    header += [f"{t} ({metric_short[report['tasks'][t]['metric']]})" for t in extra]
    lines = [f"Probe protocol: {report['probe'].get('kind', 'paper')}.", "",
             "| extractor | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]
    for name in report["extractors"]:
        cells = [_cell(report["tasks"].get(e.name, {}).get("results", {}).get(name)) for e in entries]
        cells += [_cell(report["tasks"][t]["results"].get(name)) for t in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chance = [report["tasks"].get(e.name, {}).get("chance", math.nan) for e in entries]
    chance += [report["tasks"][t].get("chance", math.nan) for t in extra]
    if any(not math.isnan(c) for c in chance):
        lines.append("| (chance) | " + " | ".join("–" if math.isnan(c) else f"{100 * c:.1f}" for c in chance) + " |")
    for row in PAPER_ROWS:
        cells = [f"{e.paper[row]:.2f}" for e in entries] + ["–"] * len(extra)
        lines.append(f"| (paper: {row}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def suite_markdown(report: dict) -> str:
    """The suite section of eval.md: the table, then where each task was read from or looked for."""
    s = report["suite"]
    out = [f"## Suite {s['name']} ({s['data_root']})", "", suite_table(report), ""]
    for t in s["tasks"]:
        if t["folder"]:
            out.append(f"- {t['column']} ({t['name']}, {t['metric']}): {t['format']} at `{t['folder']}`; "
                       f"protocol {t['protocol']}.")
    out += [f"- {line}" for line in s["missing"]]
    return "\n".join(out)
