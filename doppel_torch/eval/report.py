"""Report of an evaluation run: a markdown table (extractors x tasks, mean +- std in %) and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from doppel_torch.files import write_text_whole


def markdown_table(report: dict) -> str:
    """Rows: feature extractors; columns: tasks with their metric (and macro F1 where the protocol reports it, as
    ``arch`` does); cells: mean +- std over folds and seeds (%). The first line names the probe protocol."""
    tasks = report["tasks"]
    names = list(report["extractors"])
    protocol = report["probe"].get("kind", "paper")
    with_f1 = protocol == "arch"
    columns = []  # (task, key of mean, key of std, header)
    for t, e in tasks.items():
        columns.append((t, "mean", "std", f"{t} ({e['metric']})"))
        if with_f1 and e["metric"] == "accuracy":
            columns.append((t, "f1_mean", "f1_std", f"{t} (macro F1)"))
    lines = [f"Probe protocol: {protocol}.", "", "| extractor | " + " | ".join(c[3] for c in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name in names:
        cells = []
        for t, mean, std, _ in columns:
            r = tasks[t]["results"].get(name)
            cells.append("-" if r is None or mean not in r else f"{100 * r[mean]:.1f} ± {100 * r[std]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chance = [tasks[t].get("chance", math.nan) if mean == "mean" else math.nan for t, mean, _, _ in columns]
    if any(not math.isnan(c) for c in chance):
        lines.append("| (chance) | " + " | ".join("-" if math.isnan(c) else f"{100 * c:.1f}" for c in chance) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The table plus the protocol and per-task details (files used, splits, unreadable files)."""
    p = report["probe"]
    cut, failed = report.get("interrupted"), report.get("failed")
    partial = ([f"**Partial report**: interrupted during task {cut['task']}; the tasks below finished, that one and "
                "any after it did not.", ""] if cut else [])
    if failed:
        why = failed["error"].removeprefix(f"task {failed['task']!r}: ")  # the error names the task too
        partial = [f"**Partial report**: task {failed['task']} could not be probed ({why}); the tasks below "
                   "finished, that one and any after it did not.", ""]
    out = [
        "# doppel-torch eval",
        "",
        *partial,
        f"Created {report['created']}. Probe: {p.get('description', p['kind'])}; "
        f"seeds {report['seeds']}. Cells: mean ± std (%) over splits x seeds.",
        "",
        markdown_table(report),
        "",
        "| extractor | key | embedding size |",
        "|---|---|---|",
    ]
    out += [f"| {n} | `{e['key']}` | {e['embedding_size']} |" for n, e in report["extractors"].items()]
    out.append("")
    for name, entry in report["tasks"].items():
        out.append(f"## {name}")
        out.append(
            f"{entry['n_used']} of {entry['n_files']} files"
            + (f" (drawn by --max-files from the task's {entry['drawn_from']})" if entry.get("drawn_from") else "")
            + f", {len(entry['classes'])} classes, "
            f"{len(entry['splits'])} split(s): {', '.join(entry['splits'])}."
        )
        if entry["dropped_classes"]:
            out.append(f"Classes without readable files, left out: {entry['dropped_classes']}.")
        if entry.get("unseen_in_training"):
            lacking = entry["unseen_in_training"].items()
            out.append("Test classes the split's training side lacks (no probe gets them right): "
                       + "; ".join(f"split {split}: {', '.join(map(str, classes))}" for split, classes in lacking) + ".")
        if entry["unreadable"]:
            out.append(f"Unreadable files ({len(entry['unreadable'])}):")
            out += [f"- `{u['path']}`: {u['error']}" for u in entry["unreadable"][:50]]
            if len(entry["unreadable"]) > 50:
                out.append(f"- ... and {len(entry['unreadable']) - 50} more (see the JSON report)")
        out.append("")
    return "\n".join(out)


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def write_report(report: dict, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    # NaN (the chance level of an mAP task, ...) as null: strict JSON readers refuse NaN
    # each whole or not at all: a full disk or a Ctrl-C mid-write left an empty eval.json over an earlier run's
    write_text_whole(json_path, json.dumps(_nan_to_none(report), indent=2, allow_nan=False) + "\n")
    write_text_whole(md_path, markdown_report(report) + "\n")
    return json_path, md_path
