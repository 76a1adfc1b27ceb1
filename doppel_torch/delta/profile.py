"""Delta profile: how far the log-mel of a sound moves when one parameter alone is perturbed.

For parameter j, delta d and sound i (theta_i ~ U(0, 1)^m, z_i ~ N(0, 1)^m, both keyed by (seed, i) as the
doppelganger pairs draw them; the pairs' one shared noise row):

    theta'_i   = theta_i with entry j replaced by clip(theta_ij + d z_ij, eps, 1)
    effect_ij  = mean over (frames, mels) of |logmel(synth(theta'_i)) - logmel(synth(theta_i))|   (natural log)
    effect_j(d) = median over i of effect_ij         (the profile's bars: the typical sound)
    mean_j(d)   = mean over i of effect_ij           (the expected change: what equal-effect equalises)

The median is 0 for parameters that most patches never hear (voicefm: the decay and sustain of ADSRs whose
attack outlasts the note, 8 of 130 parameters at n = 8 patches): equalising medians would give them the largest
delta however much they matter where they do, so `equal_effect_deltas` equalises the mean.
measured by finite differences at a grid of deltas (`PROFILE_GRID`) on any backend (the fast one: "cpu").
The log-mel is the training frontend's (VGGish: log(mel + 0.01)), so an effect is in the units the encoder sees.
Deterministic from its seed. `equal_effect_deltas` inverts a profile for `equal-effect:D` (see `delta.spec`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from doppel_torch import rng
from doppel_torch.delta.spec import MAX_DELTA, param_groups
from doppel_torch.files import written_whole
from doppel_torch.frontend import LogMelFrontend

# Deltas of the profile; 0.25 (the paper's) is on it. Six points x 130 voicefm parameters x 128 patches = 100 k
# renders + log-mels (the log-mel costs ~4x the cpu render: 3.5 s vs 0.74 s for 448 voicefm sounds, one thread).
PROFILE_GRID = (0.01, 0.03, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Profile:
    """effects[j, g] / means[j, g] = median / mean log-mel change of parameter j perturbed alone by grid[g]."""

    names: list[str]
    modules: list[str]
    grid: tuple[float, ...]
    effects: torch.Tensor  # (m, G) float64, medians
    means: torch.Tensor  # (m, G) float64
    meta: dict[str, str] = field(default_factory=dict)

    def at(self, delta: float, statistic: str = "median") -> torch.Tensor:
        """(m,) median (or mean) effect of every parameter at one scalar delta (log-log interpolation)."""
        return torch.tensor([_forward(self.grid, row, delta) for row in self._monotone(statistic)], dtype=torch.float64)

    def _monotone(self, statistic: str) -> list[list[float]]:
        """Each parameter's curve made non-decreasing in delta (cumulative max), as a list of floats."""
        table = {"median": self.effects, "mean": self.means}[statistic]
        return torch.cummax(table, dim=1).values.tolist()


def _lerp_log(x0: float, x1: float, y0: float, y1: float, x: float) -> float:
    """y at x on the straight line through (x0, y0), (x1, y1) in log-log (linear where a y is 0)."""
    if y0 <= 0 or y1 <= 0:
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


def _forward(grid: Sequence[float], curve: Sequence[float], delta: float) -> float:
    if delta <= 0:
        return 0.0
    if delta <= grid[0]:
        return curve[0] * delta / grid[0]  # below the grid: the linear regime
    for k in range(1, len(grid)):
        if delta <= grid[k]:
            return _lerp_log(grid[k - 1], grid[k], curve[k - 1], curve[k], delta)
    return curve[-1]


def _inverse(grid: Sequence[float], curve: Sequence[float], target: float) -> float:
    """The delta at which a non-decreasing curve reaches `target`; MAX_DELTA where it never does."""
    if target <= 0:
        return 0.0
    if curve[0] >= target:
        return grid[0] * target / curve[0]  # the linear regime below the grid
    for k in range(1, len(grid)):
        if curve[k] >= target:
            y0, y1 = curve[k - 1], curve[k]
            if y0 <= 0 or y1 == y0:
                t = (target - y0) / (y1 - y0)
                return min(MAX_DELTA, grid[k - 1] + t * (grid[k] - grid[k - 1]))
            t = (math.log(target) - math.log(y0)) / (math.log(y1) - math.log(y0))
            return min(MAX_DELTA, math.exp(math.log(grid[k - 1]) + t * (math.log(grid[k]) - math.log(grid[k - 1]))))
    return MAX_DELTA


def equal_effect_deltas(profile: Profile, delta: float) -> torch.Tensor:
    """(m,) deltas: each parameter's own delta at which its mean log-mel effect equals the median parameter's
    mean effect at scalar `delta` (capped at MAX_DELTA for parameters that never get there)."""
    target = float(profile.at(delta, "mean").median())
    return torch.tensor([_inverse(profile.grid, row, target) for row in profile._monotone("mean")],
                        dtype=torch.float64)


def _frontend_for(synth) -> LogMelFrontend:
    """The training log-mel, with as many of VGGish's 96 frames as the synth's duration holds."""
    front = LogMelFrontend(synth.sample_rate)
    frames = 1 + (synth.n_samples - front.win_length) // front.hop_length
    if frames < 1:
        raise ValueError(f"sounds of {synth.n_samples} samples are shorter than one log-mel window")
    return front if frames >= 96 else LogMelFrontend(synth.sample_rate, n_frames=frames)


@torch.no_grad()
def measure_effects(
    synth,
    deltas: Sequence[float] | torch.Tensor,
    *,
    n_theta: int = 128,
    seed: int = 0,
    eps: float = 1e-6,
    chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Median and mean log-mel effect of perturbing each parameter alone (module docstring): two (m, G) float64.

    deltas: G scalar deltas applied to every parameter in turn (a profile's grid), or an (m,) tensor giving
    each parameter its own delta (then G = 1: parameter j measured at deltas[j]).
    progress: called with 1 after each parameter.
    """
    m = synth.num_params
    if n_theta < 1:
        raise ValueError(f"n_theta must be >= 1, got {n_theta}")
    per_param = isinstance(deltas, torch.Tensor) and deltas.ndim == 1 and deltas.shape[0] == m and m != 0
    table = deltas.to(torch.float32).reshape(m, 1) if per_param else torch.tensor(
        [list(map(float, deltas))] * m, dtype=torch.float32)
    n_grid = table.shape[1]
    idx = torch.arange(n_theta, dtype=torch.int64)
    theta = rng.uniform(seed, rng.Stream.THETA, idx, m, dtype=torch.float32).clamp(eps, 1.0)
    z = rng.normal(seed, rng.Stream.PERTURB_1, idx, m, dtype=torch.float32)
    noise = rng.noise(seed, torch.zeros(1, dtype=torch.int64), synth.n_samples, stream=rng.Stream.SHARED_NOISE)
    front = _frontend_for(synth)

    def logmel(t: torch.Tensor) -> torch.Tensor:
        parts = [front(synth(t[s:s + chunk], noise=noise, validate=False)) for s in range(0, t.shape[0], chunk)]
        return torch.cat(parts).flatten(1)

    base = logmel(theta)  # (n, F * M)
    median = torch.empty(m, n_grid, dtype=torch.float64)
    mean = torch.empty(m, n_grid, dtype=torch.float64)
    for j in range(m):
        views = theta.repeat(n_grid, 1)  # (G * n, m), grid-major
        views[:, j] = (theta[:, j].repeat(n_grid) + table[j].repeat_interleave(n_theta) * z[:, j].repeat(n_grid)).clamp(
            eps, 1.0)
        diff = (logmel(views) - base.repeat(n_grid, 1)).abs().mean(dim=1).reshape(n_grid, n_theta)
        median[j] = diff.median(dim=1).values.to(torch.float64)
        mean[j] = diff.to(torch.float64).mean(dim=1)
        if progress is not None:
            progress(1)
    return median, mean


def delta_profile(synth, *, grid: Sequence[float] = PROFILE_GRID, n_theta: int = 128, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> Profile:
    """Measure the profile of `synth` at `grid` (increasing deltas in (0, MAX_DELTA])."""
    grid = tuple(float(g) for g in grid)
    # NaN first: every comparison with it is false, so the ordering test below would pass or fail by chance
    if not grid or not all(math.isfinite(g) for g in grid) or list(grid) != sorted(set(grid)) or grid[0] <= 0 \
            or grid[-1] > MAX_DELTA:
        raise ValueError(f"grid must be increasing deltas in (0, {MAX_DELTA:g}], got {grid}")
    effects, means = measure_effects(synth, grid, n_theta=n_theta, seed=seed, progress=progress)
    meta = {"synth": synth.patch.name, "backend": synth.backend, "sample_rate": str(synth.sample_rate),
            "duration": f"{synth.duration:g}", "n_theta": str(n_theta), "seed": str(seed)}
    return Profile(list(synth.param_names), list(synth.module_of_param), grid, effects, means, meta)


def _group_labels(synth) -> list[str]:
    labels = [[] for _ in range(synth.num_params)]
    for group, members in param_groups(synth).items():
        for i in members:
            labels[i].append(group)
    return [" ".join(g) for g in labels]


def save_profile(profile: Profile, path: str | Path, synth, *, delta: float = 0.25) -> Path:
    """CSV: '#' lines of metadata, then one row per parameter: index, name, module, groups, the median
    (effect@d) and mean (mean@d) effect at each grid delta, and (for reading only) the equal-effect delta at
    `delta`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    equal = equal_effect_deltas(profile, delta)
    groups = _group_labels(synth)
    with written_whole(path) as tmp:  # a cut CSV would read as a profile
        _write_profile_csv(tmp, profile, groups, equal, delta)
    return path


def _write_profile_csv(path: Path, profile: Profile, groups: list[str], equal: torch.Tensor, delta: float) -> None:
    with open(path, "w", newline="") as fh:
        for key, value in profile.meta.items():
            fh.write(f"# {key}: {value}\n")
        writer = csv.writer(fh)
        writer.writerow(["index", "name", "module", "groups", *(f"effect@{g:g}" for g in profile.grid),
                         *(f"mean@{g:g}" for g in profile.grid),
                         f"equal_effect_delta@{delta:g}"])
        for j, name in enumerate(profile.names):
            writer.writerow([j, name, profile.modules[j], groups[j],
                             *(f"{float(e):.6g}" for e in profile.effects[j]),
                             *(f"{float(e):.6g}" for e in profile.means[j]), f"{float(equal[j]):.6g}"])


def load_profile(path: str | Path, synth=None) -> Profile:
    """Read a CSV of `save_profile`; with `synth`, check that it lists exactly that synth's parameters."""
    path = Path(path)
    try:
        return _read_profile(path, synth)
    except (KeyError, IndexError, UnicodeDecodeError, csv.Error) as err:  # not a profile: one line, not a traceback
        what = f"no column {err}" if isinstance(err, KeyError) else type(err).__name__
        raise ValueError(f"{path} is not a delta profile ({what}); make one with `doppel-torch delta-profile`") from None
    except ValueError as err:
        if "delta profile" in str(err):
            raise
        raise ValueError(f"{path} is not a delta profile ({err}); make one with `doppel-torch delta-profile`") from None


def _read_profile(path: Path, synth) -> Profile:
    meta: dict[str, str] = {}
    with open(path, newline="") as fh:
        lines = [line for line in fh]
    body = []
    for line in lines:
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            body.append(line)
    rows = list(csv.DictReader(body))
    if not rows:
        raise ValueError(f"delta profile {path} has no rows")
    columns = [c for c in rows[0] if c.startswith("effect@")]
    grid = tuple(float(c.removeprefix("effect@")) for c in columns)
    names = [r["name"] for r in rows]
    effects = torch.tensor([[float(r[c]) for c in columns] for r in rows], dtype=torch.float64)
    means = torch.tensor([[float(r["mean@" + c.removeprefix("effect@")]) for c in columns] for r in rows],
                         dtype=torch.float64)
    if synth is not None and names != list(synth.param_names):
        raise ValueError(
            f"delta profile {path} is for other parameters ({len(names)} rows, synth {meta.get('synth', '?')}) than "
            f"{synth.patch.name} ({synth.num_params}); make its own with `doppel-torch delta-profile`"
        )
    return Profile(names, [r["module"] for r in rows], grid, effects, means, meta)


def plot_profile(profile: Profile, path: str | Path, *, delta: float = 0.25, title: str = "") -> Path:
    """PNG: top, each parameter's median log-mel effect at scalar `delta` (one bar per parameter, coloured and
    grouped by module, log scale, the median parameter as a line); bottom, its equal-effect delta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effects = profile.at(delta).numpy()
    equal = equal_effect_deltas(profile, delta).numpy()
    m = len(profile.names)
    modules = list(dict.fromkeys(profile.modules))
    cmap = plt.get_cmap("tab20")
    colours = [cmap(modules.index(mod) % 20) for mod in profile.modules]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.14 * m + 2), 8), sharex=True)
    floor = max(float(effects[effects > 0].min()) if (effects > 0).any() else 1e-6, 1e-6) / 2
    axes[0].bar(range(m), [max(float(e), floor) for e in effects], color=colours, width=0.85)
    axes[0].axhline(float(torch.tensor(effects).median()), color="k", lw=1, ls="--", label="median parameter")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"median |d log-mel| at delta {delta:g}")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].bar(range(m), equal, color=colours, width=0.85)
    axes[1].axhline(delta, color="k", lw=1, ls="--", label=f"scalar delta {delta:g}")
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"equal-effect:{delta:g} delta")
    axes[1].legend(loc="upper right", fontsize=8)
    # module names under the middle of their runs of bars
    starts = [j for j in range(m) if j == 0 or profile.modules[j] != profile.modules[j - 1]]
    for s in starts:
        for ax in axes:
            ax.axvline(s - 0.5, color="0.85", lw=0.5)
    axes[1].set_xticks(range(m))
    axes[1].set_xticklabels([n.split("/", 1)[-1] for n in profile.names], rotation=90, fontsize=6)
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else m
        axes[0].text((s + e - 1) / 2, 1.01, profile.modules[s], transform=axes[0].get_xaxis_transform(),
                     rotation=60, fontsize=7, ha="left", va="bottom")
    axes[0].set_xlim(-0.8, m - 0.2)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
