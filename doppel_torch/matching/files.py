"""The target in and the result out: `prepare_target` (resample, pad, cut), theta.json (`write_theta_json`,
`read_theta_json`: every parameter by name, normalised and in human units) and `write_result` (theta.json,
match.wav, target.wav, match.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from doppel_torch.files import write_text_whole
from doppel_torch.matching.search import MatchResult

RESULT_FILES = {"json": "theta.json", "wav": "match.wav", "target": "target.wav", "png": "match.png"}  # write_result's


def prepare_target(audio: torch.Tensor, sample_rate: int, synth,
                   seconds: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """Mono audio (N,) at `sample_rate` -> (synth.n_samples,) float32 at synth.sample_rate, and what was done to it
    (resampled, padded with silence, cut), one sentence each; `seconds`: the whole file's length, where `audio` is
    only its beginning."""
    from doppel_torch.functional import resample

    notes = []
    audio = audio.to(torch.float32)
    if int(sample_rate) != synth.sample_rate:
        audio = resample(audio, int(sample_rate), synth.sample_rate)
        notes.append(f"resampled from {sample_rate} Hz to {synth.sample_rate} Hz")
    n, have = synth.n_samples, audio.shape[0]
    if have < n:
        audio = torch.nn.functional.pad(audio, (0, n - have))
        notes.append(f"the target is {have / synth.sample_rate:.3f} s, shorter than the {synth.duration:g} s matched: "
                     f"padded with {(n - have) / synth.sample_rate:.3f} s of silence")
    elif have > n:
        audio = audio[:n]
        length = seconds if seconds is not None else have / synth.sample_rate
        if length > synth.duration:
            notes.append(f"the target is {length:.3f} s: matching its first {synth.duration:g} s (--duration)")
    return audio.contiguous(), notes


def describe_theta(synth, theta: torch.Tensor) -> list[dict]:
    """One entry per parameter: name, normalised value, value in human units and the unit's name."""
    human = synth.to_human(theta.detach().to(torch.float64).clamp(synth.eps, 1.0))
    return [
        {"name": name, "value": float(u), "human": float(h), "unit": unit}
        for name, unit, u, h in zip(synth.param_names, synth.param_units, theta.tolist(), human.tolist())
    ]


def write_theta_json(path: Path, synth, theta: torch.Tensor, loss: float, steps: int, *, extra: dict | None = None,
                     partial: bool = False) -> None:
    """theta.json: the synth, the loss, every parameter by name (normalised and in human units) and theta, written
    whole or not at all (a temporary file renamed over it). partial: a snapshot taken while the match still runs."""
    doc = {
        **(extra or {}),
        "synth": synth.patch.name,
        "sample_rate": synth.sample_rate,
        "duration_s": synth.duration,
        "backend": synth.backend,
        "loss": loss,
        "steps": steps,
        **({"partial": True} if partial else {}),
        "params": describe_theta(synth, theta),
        "theta": [float(v) for v in theta],
    }
    write_text_whole(path, json.dumps(doc, indent=1) + "\n")


def read_theta_json(path: Path, synth) -> torch.Tensor:
    """theta (m,) from a theta.json that `doppel-torch match` wrote for this synth; ValueError saying what is wrong."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, or a pipe (whose read hung: found from outside)
        raise ValueError(f"{path} is not a file (give the theta.json of an earlier `doppel-torch match --out`)")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # -sig: an editor's byte-order mark too
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (give the theta.json of an earlier `doppel-torch match --out`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        raise ValueError(f"{path}: not a theta.json ({reason})") from None
    theta = doc.get("theta") if isinstance(doc, dict) else None
    if not isinstance(theta, list) or not all(_a_float(v) is not None for v in theta):
        raise ValueError(f"{path}: no \"theta\" list of numbers in it (give the theta.json of an earlier match)")
    theta = [_a_float(v) for v in theta]
    params = doc.get("params", [])
    if not isinstance(params, list):
        raise ValueError(f"{path}: \"params\" must be the list of parameters an earlier match wrote")
    names = [p.get("name") for p in params if isinstance(p, dict)]
    if len(theta) != synth.num_params:
        if doc.get("synth") == synth.patch.name:  # the right synth, an edited list
            raise ValueError(f"{path}: its theta has {len(theta)} values, {synth.patch.name} has {synth.num_params} "
                             "parameters (was the file edited?)")
        raise ValueError(f"{path} holds a theta of {doc.get('synth', 'another synth')} ({len(theta)} parameters), "
                         f"not of {synth.patch.name} ({synth.num_params}): pass the same --synth / --patch")
    if names and names != synth.param_names:
        k = next((i for i, (a, b) in enumerate(zip(names, synth.param_names)) if a != b),
                 min(len(names), len(synth.param_names)))
        got, want = (seq[k] if k < len(seq) else None for seq in (names, synth.param_names))
        raise ValueError(f"{path}: its parameter names are not {synth.patch.name}'s (parameter {k} is {got!r}, "
                         f"expected {want!r}): pass the same --synth / --patch, and keep the file's \"params\" as "
                         "the match wrote them")
    bad = next((i for i, v in enumerate(theta) if not (math.isfinite(v) and 0.0 <= v <= 1.0)), None)
    if bad is not None:
        raise ValueError(f"{path}: theta must lie in [0, 1] (normalised values); entry {bad} "
                         f"({synth.param_names[bad]}) is {theta[bad]!r}")
    # The match writes "theta" and each parameter's "value" and "human" from one tensor: a field that disagrees was
    # edited by hand. --init reads "theta" alone, so an edit elsewhere would be ignored without a word.
    remedy = ("--init reads \"theta\", the normalised values: edit it (synth.to_unit maps human values to it) and "
              "drop that parameter's \"value\" and \"human\" fields, or make them agree")
    edited = next((p.get("name") for p, v in zip(params, theta)
                   if isinstance(p, dict) and "value" in p and p["value"] != v), None)
    if edited is not None:
        raise ValueError(f"{path}: {edited}'s \"value\" differs from its entry in \"theta\"; {remedy}")
    theta = torch.tensor(theta, dtype=torch.float32)
    if len(params) == len(theta):
        for p, h in zip(params, describe_theta(synth, theta)):
            w = p.get("human") if isinstance(p, dict) else None
            if w is not None and not (_a_float(w) is not None
                                      and math.isclose(_a_float(w), h["human"], rel_tol=1e-5, abs_tol=1e-9)):
                raise ValueError(f"{path}: {h['name']}'s \"human\" value is not what its \"theta\" entry maps to; "
                                 f"{remedy}")
    return theta


def _a_float(value) -> float | None:
    """A JSON number as a float; None for anything else, and for an integer too large for one (10**400 raised
    OverflowError, found from outside)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def write_result(result: MatchResult, synth, target: torch.Tensor, out_dir: str | Path, *,
                 meta: dict | None = None) -> dict[str, Path]:
    """theta.json, match.wav, target.wav (the target as matched: resampled, padded) and match.png in `out_dir`."""
    from doppel_torch.viz import save_spectrogram_grid, write_wav

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        **(meta or {}),
        "seconds": round(result.seconds, 3),
        "interrupted": result.interrupted,
        "best_restart": result.best_restart,
        "restart_losses": [float(v) for v in result.restart_losses],  # in restart order: best_restart indexes them
        "initial_losses": [float(v) for v in result.initial_losses],
    }
    paths = {key: out / name for key, name in RESULT_FILES.items()}
    write_theta_json(paths["json"], synth, result.theta, result.loss, result.steps, extra=doc)
    # both in float, as scored: 16-bit quantisation noise lies above the log term's floor (LOG_EPS), so a PCM_16
    # target.wav scored 4.62 against match.wav where the match had scored 5.80 (found from outside); nor is either
    # clipped
    write_wav(paths["wav"], result.audio, synth.sample_rate, subtype="FLOAT")
    write_wav(paths["target"], target, synth.sample_rate, subtype="FLOAT")
    save_spectrogram_grid([[target, result.audio]], synth.sample_rate, paths["png"], col_labels=["target", "match"],
                          title=f"{synth.patch.name} match: spectral loss {result.loss:.4f} after {result.steps} "
                                f"steps, {len(result.restart_losses)} restarts")
    return paths
