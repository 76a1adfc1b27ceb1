"""The search: `match` (Adam on the logits of theta, all restarts in one batch, pitch scans), its starting points
(`starting_points`, `starts_around`, `starts_refitting`) and the columns it treats apart (`pitch_columns`,
`scan_columns`, `fit_columns`)."""

from __future__ import annotations

import fnmatch
import math
import numbers
import operator
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from doppel_torch import backends, rng
from doppel_torch.delta.spec import param_groups
from doppel_torch.matching.loss import FFT_SIZES, SpectralTarget, _ScanTarget
from doppel_torch.synths.base import SYNTHS

COSINE_FLOOR = 0.01  # the learning rate decays from lr to lr * COSINE_FLOOR over the steps (cosine)
AROUND_SPREAD = 0.01  # starts_around: the restarts' spread around a given theta (measured there)
SNAPSHOT_SECONDS = 10.0  # `doppel-torch match` rewrites theta.json with the best so far at most this often
INIT_MARGIN = 1e-6  # given starts are kept this far inside the cube (finite logits; float32 holds 1 - 1e-6)
PITCH_SCANS = 2  # match: grid scans of the pitch columns, each opening an equal share of the steps (see match)
SCAN_GRID, SCAN_FINE = 64, 16  # a scan's coarse grid over a column's [0, 1], then its fine grid of +-1 coarse step
SCANNED_PITCH_STEP = 0.05  # the pitch columns' step after a later scan (at most match's pitch_step)
SCAN_CHUNK = 256  # sounds rendered and scored at once in a scan


def default_backend(device: torch.device | str = "cpu") -> str:
    """The fastest backend that is differentiable on `device` (`backends.fastest`): "cpu" (the fused native backward)
    on the CPU, "triton" on CUDA, "torch" where a backend cannot load (no compiler, no Triton)."""
    return backends.fastest(device, differentiable=True)


@dataclass
class MatchResult:
    """What `match` found. theta (m,) and audio (N,) are the best restart's; per-restart tensors are (restarts,)."""

    theta: torch.Tensor
    loss: float
    audio: torch.Tensor
    restart_losses: torch.Tensor  # best loss each restart reached
    initial_losses: torch.Tensor  # loss at each starting point
    restart_thetas: torch.Tensor  # (restarts, m): each restart's best theta
    best_restart: int
    history: list[float] = field(default_factory=list)  # best loss over all restarts after each step
    steps: int = 0  # steps taken (fewer than asked when interrupted)
    pitch_scans: int = 0  # pitch scans finished (fewer than asked when interrupted)
    interrupted: bool = False
    seconds: float = 0.0


def starting_points(num_params: int, restarts: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """theta ~ U(0, 1)^m of each restart, keyed by (seed, restart): (restarts, m), kept 1e-3 inside the cube."""
    index = torch.arange(restarts, dtype=torch.int64, device=device)
    return rng.uniform(seed, rng.Stream.MATCH, index, num_params, dtype=dtype).clamp(1e-3, 1.0 - 1e-3)


def starts_around(theta: torch.Tensor, restarts: int, seed: int, spread: float = AROUND_SPREAD) -> torch.Tensor:
    """Restarts around one theta (m,), to continue a match from its result: row 0 is theta itself, rows 1.. theta +
    spread * z (z ~ N(0, 1) keyed by (seed, restart), `rng.Stream.MATCH_AROUND`), clipped INIT_MARGIN inside the
    cube (a match drives some parameters to within 1e-5 of a face; clipping them 1e-3 inside moved a continued
    match's start from its saved loss 1.71 to 1.83).
    Measured (voice, 0.25 s, 6 targets: 200 steps from random starts, then 200 more from their best with 16 restarts):
    spread 0.01 lowers the best loss to a median 0.86 of the first run's, spread 0 (16 copies, one path) to 0.91,
    and 400 steps from random starts in one run to 0.91; lr 0.01 / 0.003 instead of 0.05: 0.95 / 0.97."""
    if theta.dim() != 1:
        raise ValueError(f"theta must be (m,), got {tuple(theta.shape)}")
    index = torch.arange(restarts, dtype=torch.int64, device=theta.device)
    z = rng.normal(seed, rng.Stream.MATCH_AROUND, index, theta.shape[0], dtype=theta.dtype)
    z[0] = 0.0
    return (theta + spread * z).clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)


def pitch_columns(synth) -> list[int]:
    """The columns of theta that set an oscillator's pitch: the delta spec's "pitch" group (keyboard notes,
    tunings) and the VCOs' pitch modulation depths (an FM operator's mod_depth is its modulation index, not a pitch),
    in theta's order."""
    depths = {f"{o.name}/mod_depth" for o in synth.patch.oscillators if o.kind != "fm"}
    return sorted(set(param_groups(synth)["pitch"]) | {j for j, n in enumerate(synth.param_names) if n in depths})


def scan_columns(synth) -> list[int]:
    """The pitch columns in the order a scan visits them: the pitch modulation depths first (a wrong depth sweeps
    the pitch, so no note fits until it is right), then the notes and tunings in theta's order."""
    names = synth.param_names
    if not synth.patch.oscillators:  # a keyboard note without an oscillator changes no sound
        return []
    columns = pitch_columns(synth)
    return sorted(columns, key=lambda j: (not names[j].endswith("/mod_depth"), j))


def _planned_scans(synth, pitch_scans: int | None, init_given: bool, fitted: Sequence[int] | None,
                   steps: int) -> tuple[int, list[int]]:
    """The pitch scans a match makes and the columns they set: None is PITCH_SCANS from random starts and 0 from
    given ones; at most one a step; none where no column can be scanned (`scan_columns`, those among `fitted`
    where only some are fitted)."""
    if pitch_scans is None:
        pitch_scans = PITCH_SCANS if not init_given else 0
    columns = [j for j in scan_columns(synth) if fitted is None or j in fitted]
    pitch_scans = min(pitch_scans, steps) if columns else 0
    return pitch_scans, columns if pitch_scans else []


def scan_steps(steps: int, pitch_scans: int) -> list[int]:
    """The steps at which `match` makes its pitch scans (each opens an equal share of the steps; at most one a
    step): a snapshot taken after `taken` steps has done the scans at the steps below `taken`."""
    return sorted({min(round(k * steps / pitch_scans), steps - 1) for k in range(pitch_scans)})


def scan_pitch(losses_of: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, columns: Sequence[int],
               bar=None, tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """Each row of theta (R, m) with its `columns` set one at a time, in order, to the value of a grid that scores
    lowest under `losses_of` (a batch of thetas -> (batch,) losses; gradients off): SCAN_GRID values evenly over
    [0.001, 0.999], then SCAN_FINE over +-1 step around the best of them. A row keeps its value where no grid value
    scores lower. Returns the new thetas (R, m); `bar` (tqdm-like) is advanced by the thetas scored, `tick` gets
    the number of columns done after each chunk of SCAN_CHUNK thetas scored.

    Gradient descent does not find a pitch: its valleys are hundredths of a semitone wide (README, Sound matching),
    so a start outside one sees no slope towards it; a grid over the column's whole range lands nearer than the
    descent gets (what that is worth: `match`'s pitch_scans)."""
    if not isinstance(theta, torch.Tensor) or theta.dim() != 2 or not theta.is_floating_point():
        shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"theta must be a floating-point (restarts, m) tensor of normalised parameters, got {shape}"
                         + (f" {theta.dtype}" if isinstance(theta, torch.Tensor) else ""))
    m = theta.shape[1]
    try:
        columns = [_integer(j) for j in columns]
    except TypeError:  # not a sequence
        columns = None
    if columns is None or not all(j is not None and 0 <= j < m for j in columns):
        raise ValueError(f"columns must be column indices in [0, {m}) (scan_columns(synth) gives the pitch ones)")
    if not bool(((theta >= 0) & (theta <= 1)).all()):
        raise ValueError("theta must lie in [0, 1] (normalised parameters, as synth.random_params gives), with no NaN")
    theta = theta.detach().clone()
    rows = theta.shape[0]
    grid = torch.linspace(1e-3, 1.0 - 1e-3, SCAN_GRID, dtype=theta.dtype, device=theta.device)
    width = float(grid[1] - grid[0])
    offsets = torch.linspace(-width, width, SCAN_FINE, dtype=theta.dtype, device=theta.device)
    index = torch.arange(rows, device=theta.device)

    done = 0

    def score(values: torch.Tensor, column: int) -> torch.Tensor:  # values (R, K) -> losses (R, K)
        candidates = theta.repeat_interleave(values.shape[1], 0)
        candidates[:, column] = values.flatten()
        losses = []
        for chunk in candidates.split(SCAN_CHUNK):
            losses.append(losses_of(chunk))
            if bar is not None:
                bar.update(chunk.shape[0])
            if tick is not None:
                tick(done)
        return torch.nan_to_num(torch.cat(losses), nan=math.inf).view(values.shape)

    with torch.no_grad():
        current = torch.nan_to_num(torch.cat([losses_of(chunk) for chunk in theta.split(SCAN_CHUNK)]), nan=math.inf)
        for column in columns:
            coarse = grid.expand(rows, -1)
            best, at = score(coarse, column).min(dim=1)
            fine = (grid[at][:, None] + offsets).clamp(1e-3, 1.0 - 1e-3)
            fine_best, fine_at = score(fine, column).min(dim=1)
            value = torch.where(fine_best < best, fine[index, fine_at], grid[at])
            best = torch.minimum(best, fine_best)
            better = best < current
            theta[:, column] = torch.where(better, value, theta[:, column])
            current = torch.where(better, best, current)
            done += 1
    return theta


def fit_columns(synth, patterns: Sequence[str]) -> list[int]:
    """The columns of theta that `patterns` name, in theta's order: a parameter's full name as written
    ("mixer/level[0]"), a module ("adsr_1": all its parameters) or a shell pattern of either ("adsr_*", "lfo_1/*";
    fnmatch, so "[...]" in a pattern is a character class). ValueError for a pattern that names nothing, saying what
    the names look like."""
    if isinstance(patterns, str):
        raise ValueError(f"fit must be a list of parameter names or patterns, not one string: fit=[{patterns!r}]")
    patterns = list(patterns)
    if not patterns:
        raise ValueError("fit names no parameter: give at least one name or pattern (fit=None fits every parameter)")
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"fit must be a list of parameter names or patterns (strings, e.g. ['adsr_1', 'mixer/*']), "
                         f"got {patterns!r}")
    names = synth.param_names
    modules = [spec.module for spec in synth.param_specs]

    def hits(pattern: str) -> set[int]:
        return {j for j, (name, module) in enumerate(zip(names, modules))
                if pattern in (name, module) or fnmatch.fnmatchcase(name, pattern)
                or fnmatch.fnmatchcase(module, pattern)}

    columns: set[int] = set()
    for pattern in patterns:
        if not pattern.strip():
            raise ValueError("fit: an empty pattern names no parameter (give a name such as mixer or 'adsr_*')")
        found = hits(pattern)
        if not found:
            hint = f"; did you mean {pattern + '*'!r}?" if hits(pattern + "*") else ""
            shipped = type(synth) is SYNTHS.get(synth.patch.name)  # not a user's patch that took a shipped name
            lister = f"--synth {synth.patch.name}" if shipped else "--patch FILE.py (your patch's file)"
            raise ValueError(f"fit: {pattern!r} names no parameter of {synth.patch.name}{hint} (its modules: "
                             f"{', '.join(dict.fromkeys(modules))}; `doppel-torch info {lister}` lists every "
                             "parameter)")
        columns |= found
    return sorted(columns)


def describe_columns(synth, columns: Sequence[int]) -> str:
    """Columns in few words: a module whose parameters are all in it by its name, other parameters by theirs."""
    names = synth.param_names
    chosen = set(columns)
    if len(chosen) == len(names):
        return f"all {len(names)}"
    by_module: dict[str, list[int]] = {}
    for j, spec in enumerate(synth.param_specs):
        by_module.setdefault(spec.module, []).append(j)
    parts = []
    for module, cols in by_module.items():
        if chosen.issuperset(cols):
            parts.append(module)
        else:
            parts.extend(names[j] for j in cols if j in chosen)
    return ", ".join(parts)


def starts_refitting(theta: torch.Tensor, columns: Sequence[int], restarts: int, seed: int) -> torch.Tensor:
    """Restarts that keep one theta (m,) but for `columns` (indices: `fit_columns` turns names into them): row 0 is
    theta itself, rows 1.. draw those columns at random (`starting_points` keyed by seed), for `match(fit=...)`."""
    if theta.dim() != 1:
        raise ValueError(f"theta must be (m,), got {tuple(theta.shape)}")
    columns = list(columns)
    m = theta.shape[0]
    if not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < m for j in columns):
        raise ValueError(f"columns must be column indices in [0, {m}) (fit_columns(synth, names) gives them), got "
                         f"{columns!r}")
    starts = theta.repeat(restarts, 1)
    fresh = starting_points(m, restarts, seed, dtype=theta.dtype, device=theta.device)
    starts[1:, columns] = fresh[1:, columns]
    return starts


def match(
    synth,
    target: torch.Tensor,
    *,
    restarts: int = 16,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    fft_sizes: Sequence[int] = FFT_SIZES,
    candidates: int | None = None,
    init: torch.Tensor | None = None,
    pitch_step: float = 1.0,
    pitch_scans: int | None = None,
    fit: Sequence[str] | None = None,
    progress: bool | Callable[[int, float], None] = False,
    snapshot: Callable[[int, torch.Tensor, float], None] | None = None,
    snapshot_seconds: float = SNAPSHOT_SECONDS,
) -> MatchResult:
    """Fit theta to `target` (N,) = (synth.n_samples,) at synth.sample_rate, with `restarts` random starts in one batch.

    Adam (lr on the logits of theta) for `steps` steps on `spectral_loss`; rendering uses the synth's backend, which
    must be differentiable (see `default_backend`).
    candidates: score this many random thetas first (rendered without gradients, in batches of `restarts`) and start
        from the best `restarts` of them; None or <= restarts: start from the first `restarts` random thetas.
        Measured (voice, 0.25 s, 20 targets x 16 restarts x 200 steps): 256 candidates end the median restart at 1.13
        vs 1.27, the best restart per target at a median 0.72 vs 0.69: no gain for the best, so it is off by default.
    init: (restarts, m) starting thetas instead of random ones.
    pitch_step: the pitch parameters' step (keyboard note, tunings, pitch modulation depths: `pitch_columns`) as a
        fraction of the others' (Adam holds their logits / pitch_step). Their basins are a fraction of a semitone
        wide, where lr 0.05 moves a tuning by ~0.6 semitones a step. Measured (voice, 0.25 s, 16 targets x 16
        restarts x 200 steps, bench/results/match-recovery-2026-12-02/): from starts near the target (theta +
        0.05 z, the pitch columns + 0.1 semitone z) 0.05 brings 5 of 16 targets under 0.1 and 11 under 0.5 (1.0: 1
        and 5); from random starts the best restart ends at a median 1.04 (1.0: 0.95), so 1.0 is the default and
        0.05 the choice for refining a start you trust (`init`).
    pitch_scans: how many times the pitch columns (`scan_columns`; the fitted ones with `fit`) are set by a grid
        search (`scan_pitch`), each scan opening an equal share of the steps with a fresh Adam and cosine schedule;
        a restart takes a scan's values only where they lower its loss, and after the first scan the pitch columns
        step SCANNED_PITCH_STEP (at most pitch_step) to refine what it found. 0: no scan, one schedule over all
        steps; at most one scan a step. None (default): PITCH_SCANS from random starts, 0 from starts you give
        (`init`: a scan's greedy moves took starts near a target out of its valleys: 1000 steps ended at 0.05-0.16
        instead of 0.008). A scan scores 80 values per pitch column and restart (voice: 5 columns, 6,400 sounds for
        16 restarts) forward only on frames of SCAN_FFT_SIZES (`_ScanTarget`); two scans took a 1 s, 200-step
        match from 5.8 s to 8.9 s. Measured (voice, 16 restarts x 200 steps, bench/match_bench.py recovery
        --pitch-scans 0 2): at 0.25 s, 2 scans end the best restart lower on all 20 targets (median 0.63, none:
        0.82; 40 restarts without a scan, which take 1.7x as long: 0.69, and 2 scans are lower on 19 of 20); at 1 s
        lower on all 10 (mean 0.81 vs 1.00).
    fit: fit only these parameters (names, modules or shell patterns: `fit_columns`); every other column keeps its
        starting value exactly, so give the values to keep in `init`: `starts_refitting(theta, fit_columns(synth,
        fit), restarts, seed)` keeps one theta and draws the fitted columns at random. For a patch you know but for,
        say, its envelopes. Adam moves every column it holds by about lr a step however small its gradient, which
        throws pitch-like columns that are already right out of their narrow valleys (voice, a target's own theta
        with only its 3 mixer levels moved by 0.05 z: 100 steps end at a median 0.17 with every column free, 0.0000
        with the rest held). Measured (voice, 0.25 s, 8 targets, 16 restarts x 200 steps, the fitted columns random
        and the others the target's; bench/results/match-recovery-cpu-2026-12-07.json): restarts under 0.05: mixer
        102 of 128 (all 8 targets), the two ADSRs 14 (3 targets), the modulation matrix 16 (3), the LFOs 13 (1),
        keyboard and VCOs 0; all 78 columns from random restarts 0.
    progress: True shows a tqdm bar with the best loss; a callable gets (step, best loss) after each step.
    snapshot: gets (steps taken, best theta (m,), its loss) after a step once `snapshot_seconds` have passed since the
        start or the previous call, so a caller can keep the best so far on disk (`doppel-torch match` rewrites
        theta.json) against a process that is killed outright.
    Ctrl-C stops early and returns what was found so far (interrupted=True).
    """
    n = synth.n_samples
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        raise ValueError(f"target must be a floating-point tensor (audio in [-1, 1]), got {target.dtype}")
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.shape[0] != n:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a ({n},) tensor ({synth.duration:g} s at {synth.sample_rate} Hz), got {shape}")
    target = target.detach()
    if not torch.isfinite(target).all():
        raise ValueError("target contains NaN or infinite samples")
    if float(target.abs().max()) == 0.0:
        raise ValueError("target is silent (every sample is 0): there is nothing to match")
    restarts, steps = _count("restarts", restarts, 1), _count("steps", steps, 0)
    candidates = None if candidates is None else _count("candidates", candidates, 0, none=True)
    pitch_scans = None if pitch_scans is None else _count("pitch_scans", pitch_scans, 0, none=True)
    if _real(lr) is None or not (math.isfinite(_real(lr)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    lr = _real(lr)
    rng.check_seed(seed)
    if not synth._backend.differentiable:
        raise ValueError(f"backend='{synth.backend}' is not differentiable; match needs gradients: use "
                         f"backend='{default_backend(target.device)}'")
    if _real(pitch_step) is None or not (math.isfinite(_real(pitch_step)) and 0 < pitch_step <= 1):
        raise ValueError(f"pitch_step must be in (0, 1], got {pitch_step!r}")
    pitch_step = _real(pitch_step)
    held = None
    if fit is not None:
        held = torch.ones(synth.num_params, dtype=torch.bool)
        held[fit_columns(synth, fit)] = False
        if init is None:
            raise ValueError("fit holds the other parameters at their starting values: give them in init (e.g. "
                             "starts_refitting(theta, fit_columns(synth, fit), restarts, seed))")
    if init is not None and candidates:
        raise ValueError("candidates picks random starts and init gives the starts: pass one of them")
    dtype, device = target.dtype, target.device
    noise = None
    if synth.program.rows("noise"):
        noise = rng.noise(seed, torch.zeros(1, dtype=torch.int64, device=device), n, dtype=dtype)

    scorer = SpectralTarget(target.detach(), fft_sizes)

    def losses_of(theta: torch.Tensor) -> torch.Tensor:
        return scorer.loss(synth(theta, noise=noise, validate=False))

    fitted = None if held is None else (~held).nonzero().flatten().tolist()
    pitch_scans, scanned = _planned_scans(synth, pitch_scans, init is not None, fitted, steps)
    if scanned:
        scan_scorer = _ScanTarget(target.detach())

        def scan_losses(theta: torch.Tensor) -> torch.Tensor:
            return scan_scorer.loss(synth(theta, noise=noise, validate=False))
    # the steps at which a schedule (Adam, cosine) starts: after each scan, or once
    phase_starts = scan_steps(steps, pitch_scans) if scanned else [0]
    scans_done = 0

    if init is None:
        theta0 = starting_points(synth.num_params, max(restarts, candidates or 0), seed, dtype=dtype, device=device)
        if theta0.shape[0] > restarts:
            scores = []
            with torch.no_grad(), _bar(progress, theta0.shape[0], "candidates", "theta") as bar:
                for chunk in theta0.split(restarts):
                    scores.append(losses_of(chunk))
                    bar.update(chunk.shape[0])
            scores = torch.cat(scores)
            theta0 = theta0[torch.argsort(torch.nan_to_num(scores, nan=math.inf))[:restarts]]
    else:
        if init.shape != (restarts, synth.num_params):
            one = (" (one theta: starts_refitting or starts_around make restarts from it)"
                   if tuple(init.shape) == (synth.num_params,) else "")
            raise ValueError(f"init must have shape ({restarts}, {synth.num_params}), got {tuple(init.shape)}{one}")
        given = init.detach().to(dtype=dtype, device=device)
        if not bool(((given >= 0) & (given <= 1)).all()):
            raise ValueError("init must lie in [0, 1] (normalised parameters, as synth.random_params gives): clamp "
                             "it, or map human values with synth.to_unit")
        theta0 = given.clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)
    # Adam holds z = logits / column_step, so a column's logit moves by about lr * column_step a step
    column_step = torch.ones(synth.num_params, dtype=dtype, device=device)
    column_step[pitch_columns(synth)] = pitch_step
    z = (torch.logit(theta0) / column_step).requires_grad_(True)
    if held is not None:  # the held columns exactly as given, not clamped (they need no logit)
        held = held.to(device)
        theta0 = torch.where(held, given, theta0)
    best_loss = torch.full((restarts,), math.inf, dtype=dtype, device=device)
    best_theta = theta0.clone()
    history: list[float] = []
    bar = _bar(progress, steps, "match", "step") if progress is True else None
    start = time.perf_counter()
    last_snapshot = start
    initial = None
    taken, interrupted = 0, False

    def theta_of(z: torch.Tensor) -> torch.Tensor:
        theta = torch.sigmoid(z * column_step)
        # the held columns exactly as given (sigmoid(logit(x)) is x only to rounding)
        return theta if held is None else torch.where(held, theta0, theta)

    def scanned_theta(theta: torch.Tensor) -> torch.Tensor:
        """theta with a pitch scan's values where the match's own loss agrees, counted among the best (and as
        done) before anything else can interrupt."""
        nonlocal best_loss, best_theta, scans_done

        def tick(done: int, scan: int = scans_done + 1) -> None:
            if bar is not None:  # the scan in the match's bar (a bar of its own garbles a pipe)
                bar.set_postfix_str(f"pitch scan {scan}, {done}/{len(scanned)} parameters")
            keep_snapshot()  # the best before the scan: a killed scan loses at most its own time

        proposed = scan_pitch(scan_losses, theta, scanned, tick=tick)
        with torch.no_grad():
            after, before = losses_of(proposed), losses_of(theta)
            keep = after < before
            theta = torch.where(keep[:, None], proposed, theta.detach())
            best_loss, best_theta = _better(torch.where(keep, after, before), theta, best_loss, best_theta)
        scans_done += 1
        return theta

    def keep_snapshot() -> None:
        """The best theta so far to `snapshot`, once snapshot_seconds have passed since the last one."""
        nonlocal last_snapshot
        if snapshot is not None and time.perf_counter() - last_snapshot >= snapshot_seconds:
            k = int(torch.argmin(torch.nan_to_num(best_loss, nan=math.inf)))
            snapshot(taken, best_theta[k].detach().clone(), float(best_loss[k]))
            last_snapshot = time.perf_counter()

    try:
        for step in range(steps + 1):  # the last pass only scores the final update
            theta = theta_of(z)
            if step in phase_starts:
                if scanned:
                    if initial is None:  # the starting points' own losses, before the first scan moves them
                        with torch.no_grad():
                            initial = losses_of(theta).detach().clone()
                            best_loss, best_theta = _better(initial, theta, best_loss, best_theta)
                    theta = scanned_theta(theta)
                    if step > 0:  # later scans: refine the pitch they found
                        column_step[pitch_columns(synth)] = min(pitch_step, SCANNED_PITCH_STEP)
                    z = (torch.logit(theta.clamp(INIT_MARGIN, 1.0 - INIT_MARGIN)) / column_step).requires_grad_(True)
                    theta = theta_of(z)
                length = min([s for s in phase_starts if s > step] + [steps]) - step
                optimizer = torch.optim.Adam([z], lr=lr)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(length, 1),
                                                                      eta_min=lr * COSINE_FLOOR)
            losses = losses_of(theta)
            with torch.no_grad():
                if initial is None:
                    initial = losses.detach().clone()
                best_loss, best_theta = _better(losses, theta, best_loss, best_theta)
            if step == steps:
                if bar is not None:  # the final update's score, so the bar ends on the loss the run reports
                    bar.set_postfix(loss=f"{float(best_loss.min()):.4f}")
                break
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if z.grad is not None:
                z.grad.nan_to_num_(0.0, 0.0, 0.0)  # a non-finite gradient must not poison a restart
            optimizer.step()
            schedule.step()
            taken = step + 1
            best = float(best_loss.min())
            history.append(best)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{best:.4f}")
            elif callable(progress):
                progress(taken, best)
            keep_snapshot()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if initial is None:  # interrupted before the first render
        raise KeyboardInterrupt

    def result() -> MatchResult:
        k = int(torch.argmin(torch.nan_to_num(best_loss, nan=math.inf)))
        theta = best_theta[k].detach()
        with torch.no_grad():
            audio = synth(theta[None], noise=noise)[0]
        return MatchResult(theta=theta, loss=float(best_loss[k]), audio=audio, restart_losses=best_loss.detach(),
                           initial_losses=initial, restart_thetas=best_theta.detach(), best_restart=k,
                           history=history, steps=taken, pitch_scans=scans_done, interrupted=interrupted,
                           seconds=time.perf_counter() - start)

    try:
        return result()
    except KeyboardInterrupt:
        # Ctrl-C while the best was rendered (found from outside: it lost a finished match): render it again. The
        # command's handler only notes a second signal; a second plain Ctrl-C stops for good.
        interrupted = True
        return result()


def _integer(value) -> int | None:
    """An int, a numpy integer or a one-element integer tensor as an int; None for a bool or anything else."""
    try:
        return None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return None


def _count(name: str, value, least: int, none: bool = False) -> int:
    """An integer argument (numpy's too; not a bool) of at least `least`, or ValueError naming it."""
    count = _integer(value)
    if count is None or count < least:
        raise ValueError(f"{name} must be an integer >= {least}{' (or None)' if none else ''}, got {value!r}")
    return count


def _real(value) -> float | None:
    """A real number argument (numpy's too; not a bool) as a float, None for anything else."""
    return None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)


def _better(losses, theta, best_loss, best_theta):
    """The best loss and theta of each restart so far, with this step's (NaN never counts as better)."""
    better = losses < best_loss
    return torch.where(better, losses, best_loss), torch.where(better[:, None], theta.detach(), best_theta)


def _bar(progress, total: int, desc: str, unit: str):
    """A tqdm bar (rate and ETA) where `progress` is True, else one that shows nothing."""
    from doppel_torch.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=progress is not True)
