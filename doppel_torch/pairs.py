"""Audio doppelgangers: keyed random patches and two perturbed copies of each, rendered in one batch.

For a global sound index i (paper, Algorithm 1):

    theta   = U(0, 1)^m                         keyed by (seed, Stream.THETA, i)  (= synth.random_params)
    z_k     = N(0, 1)^m,  k = 1, 2              keyed by (seed, Stream.PERTURB_k, i)
    theta_k = clip(theta + delta * z_k, eps, 1)

so pair i is the same whatever the batch size, device or number of ranks. delta is a scalar (the paper's
isotropic perturbation), a per-parameter vector or a per-module mapping (anisotropic perturbation).

Noise (`noise=`): the synths' white-noise source must not tell the pairs apart.
- "shared" (default): one noise row, keyed by the seed alone, for every sound and both views. This is the
  paper's data: SynthAX renders a whole batch with one noise row. delta = 0 gives two identical sounds (the
  paper's no-delta baseline), and the noise realisation carries no information about which sounds pair up.
- "per_view": every sound and view draws its own noise (keyed by (2 seed + k - 1, index)); positives then also
  differ in their noise realisation, and delta = 0 no longer gives identical sounds.
- "per_sound": both views of pair i share sound i's own keyed noise (`synth(theta, seed, indices)`), and
  different pairs have different noise. The encoder can then match positives by their noise fingerprint
  instead of by what the synth parameters make of the sound, and it does: a voicefm encoder trained so (26 min
  on CPU, width 32) gave validation alignment 1.05 on its own pairs but 1.96 on the same pairs rendered with
  independent noise (2 = orthogonal embeddings), 1.75 even at delta = 0, and it probed below a random-init
  encoder on FSDD. Kept only to reproduce that.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from doppel_torch import rng
from doppel_torch.delta.spec import MAX_DELTA, DeltaSpec as ParsedDeltaSpec, parse_delta, resolve_delta

# A delta: a scalar, a spec string (`doppel_torch.delta.spec`: equal-effect:D, keep:GROUP=V, ...), a per-parameter
# vector or a per-module mapping. MAX_DELTA (1.0) bounds every value: see doppel_torch/delta/spec.py.
DeltaSpec = float | str | ParsedDeltaSpec | Sequence[float] | torch.Tensor | Mapping[str, float]
NOISE_MODES = ("shared", "per_view", "per_sound")


def delta_vector(delta: DeltaSpec, synth) -> torch.Tensor:
    """delta as an (m,) float64 vector for `synth`.

    delta: a scalar; a delta spec string ("equal-effect:0.25", "0.25+keep:pitch=0.02", see
    `doppel_torch.delta.spec`); a vector of m values (one per flat parameter, `synth.param_names` order); or a mapping
    from module names (`synth.module_of_param`, e.g. "adsr_1") or parameter names ("adsr_1/attack") to
    values, with "*" for every parameter not named (default 0). Parameter names win over module names.
    Every value must lie in [0, MAX_DELTA] (= [0, 1]).
    """
    names, modules = list(synth.param_names), list(synth.module_of_param)
    m = len(names)
    if isinstance(delta, (str, ParsedDeltaSpec)):
        return resolve_delta(parse_delta(delta), synth)
    if isinstance(delta, Mapping):
        default = delta.get("*", 0.0)
        vec = torch.full((m,), float(default), dtype=torch.float64)
        known_modules = set(modules)
        for key, value in delta.items():
            if key == "*":
                continue
            if key in names:
                continue
            if key not in known_modules:
                raise ValueError(
                    f"delta key {key!r} is neither a module nor a parameter of this synth; "
                    f"modules: {sorted(known_modules)} (parameter names: synth.param_names)"
                )
            vec[[i for i, mod in enumerate(modules) if mod == key]] = float(value)
        for key, value in delta.items():
            if key in names:
                vec[names.index(key)] = float(value)
    elif isinstance(delta, bool):
        raise ValueError(f"delta must be a number (the perturbation's standard deviation, e.g. 0.25), got {delta!r}")
    elif isinstance(delta, (int, float)) or (isinstance(delta, torch.Tensor) and delta.ndim == 0):
        vec = torch.full((m,), float(delta), dtype=torch.float64)
    else:
        vec = torch.as_tensor(delta, dtype=torch.float64).detach().cpu()
        if vec.shape != (m,):
            raise ValueError(
                f"delta must be a scalar, a vector of {m} values (one per parameter) or a mapping of modules; "
                f"got shape {tuple(vec.shape)}"
            )
    if not torch.isfinite(vec).all():
        raise ValueError("delta must be finite (no NaN or inf)")
    if (vec < 0).any():
        bad = [names[i] for i in torch.nonzero(vec < 0).flatten().tolist()][:5]
        raise ValueError(f"delta must be >= 0 (it scales N(0, 1) noise); negative for {bad}")
    if (vec > MAX_DELTA).any():
        bad = [names[i] for i in torch.nonzero(vec > MAX_DELTA).flatten().tolist()][:5]
        raise ValueError(
            f"delta must be <= {MAX_DELTA:g} (theta lies in [0, 1]; larger deltas only clip more parameters to its "
            f"bounds); too large for {bad}"
        )
    return vec


class DoppelgangerPairs(nn.Module):
    """Pairs of perturbed synth patches for global sound indices: pairs(indices) -> (audio_1, audio_2), (B, N).

    Args:
        synth: a doppel_torch synth (`get_synth(...)`).
        delta: perturbation scale, see `delta_vector` (default 0.25, the paper's best).
        seed: seed of theta, z_1, z_2 and the noise.
        eps: lower clip of the perturbed parameters (the paper's 1e-6; keeps LFO shape weights off 0/0).
        augment: optional `AugmentChain` applied to view k with view=k-1 (its own seed).
        noise: "shared" (default), "per_view" or "per_sound"; see the module docstring.

    The draws happen on the device of the module's buffers (`pairs.to("cuda")`).
    """

    def __init__(
        self,
        synth,
        delta: DeltaSpec = 0.25,
        seed: int = 0,
        eps: float = 1e-6,
        augment: nn.Module | None = None,
        noise: str = "shared",
    ):
        super().__init__()
        if not 0.0 <= eps < 1.0 or math.isnan(eps):
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(map(repr, NOISE_MODES))}, got {noise!r}")
        self.synth = synth
        self.seed = rng.check_seed(seed)
        if noise == "per_view" and not -(2**62) <= self.seed < 2**63:  # the views render with seeds 2 seed, 2 seed + 1
            raise ValueError(f"seed must lie in [-2^62, 2^63) with noise='per_view' (its views use seeds 2 seed and "
                             f"2 seed + 1), got {self.seed}")
        self.eps = float(eps)
        self.augment = augment
        self.noise = noise
        self.register_buffer("delta", delta_vector(delta, synth).to(torch.float32), persistent=False)
        self.delta_spec = str(parse_delta(delta)) if isinstance(delta, (str, ParsedDeltaSpec)) else None
        # (1, N) float32: the generator's 24-bit draws are exact in float32, so a float64 render casts losslessly
        row = rng.noise(self.seed, torch.zeros(1, dtype=torch.int64), synth.n_samples,
                        stream=rng.Stream.SHARED_NOISE) if noise == "shared" else torch.zeros(0)
        self.register_buffer("shared_noise", row, persistent=False)

    @property
    def num_params(self) -> int:
        return self.delta.shape[0]

    def _indices(self, indices, start, count) -> torch.Tensor:
        if indices is None:
            if start is None or count is None:
                raise ValueError("give indices, or start and count")
            try:  # 0.5 would read as 0 (found from outside)
                start, count = operator.index(start), operator.index(count)
            except TypeError:
                raise ValueError(f"start and count must be integers, got {start!r}, {count!r}") from None
            if start < 0 or count < 0:
                raise ValueError(f"start and count must be >= 0, got {start}, {count}")
            return torch.arange(start, start + count, dtype=torch.int64, device=self.delta.device)
        if start is not None or count is not None:
            raise ValueError("give either indices or start and count, not both")
        given = torch.as_tensor(indices)
        if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:  # 2.5 would read as 2
            raise ValueError(f"indices must be integer global sound indices, got {given.dtype}")
        idx = given.to(dtype=torch.int64, device=self.delta.device)
        if idx.ndim != 1:
            raise ValueError(f"indices must be one-dimensional (B,), got shape {tuple(idx.shape)}")
        # as synth(..., indices=) refuses them; checked where that costs no device sync and no graph break
        if given.device.type == "cpu" and not torch.compiler.is_compiling() and bool((given < 0).any()):
            raise ValueError("indices must be >= 0 (global sound indices)")
        return idx

    def theta(self, indices=None, *, start: int | None = None, count: int | None = None, dtype=torch.float32):
        """theta ~ U(0, 1)^m of the pairs: (B, m), equal to synth.random_params for the same indices."""
        idx = self._indices(indices, start, count)
        return rng.uniform(self.seed, rng.Stream.THETA, idx, self.num_params, dtype=dtype)

    def perturbed(self, indices=None, *, start: int | None = None, count: int | None = None, dtype=torch.float32):
        """(theta_1, theta_2), each (B, m): clip(theta + delta * z_k, eps, 1)."""
        idx = self._indices(indices, start, count)
        theta = self.theta(idx, dtype=dtype)
        delta = self.delta.to(dtype)
        views = []
        for stream in (rng.Stream.PERTURB_1, rng.Stream.PERTURB_2):
            z = rng.normal(self.seed, stream, idx, self.num_params, dtype=dtype)
            views.append((theta + delta * z).clamp(self.eps, 1.0))
        return views[0], views[1]

    def forward(
        self,
        indices=None,
        *,
        start: int | None = None,
        count: int | None = None,
        return_theta: bool = False,
        dtype=torch.float32,
    ):
        """Render pairs: (audio_1, audio_2), each (B, N); with return_theta also (theta_1, theta_2).

        Both views render in one synth call of batch 2B (two calls with noise="per_view").
        """
        idx = self._indices(indices, start, count)
        theta_1, theta_2 = self.perturbed(idx, dtype=dtype)
        b = idx.shape[0]
        both = torch.cat([theta_1, theta_2])
        if self.noise == "shared":
            audio = self.synth(both, noise=self.shared_noise.to(dtype), validate=False)
        elif self.noise == "per_view":
            audio = torch.cat(
                [
                    self.synth(theta_1, seed=2 * self.seed, indices=idx, validate=False),
                    self.synth(theta_2, seed=2 * self.seed + 1, indices=idx, validate=False),
                ]
            )
        else:
            audio = self.synth(both, seed=self.seed, indices=torch.cat([idx, idx]), validate=False)
        audio_1, audio_2 = audio[:b], audio[b:]
        if self.augment is not None:
            audio_1 = self.augment(audio_1, idx, view=0)
            audio_2 = self.augment(audio_2, idx, view=1)
        if return_theta:
            return audio_1, audio_2, theta_1, theta_2
        return audio_1, audio_2

    def extra_repr(self) -> str:
        d = self.delta
        delta = f"{float(d[0]):g}" if bool((d == d[0]).all()) else f"vector in [{float(d.min()):g}, {float(d.max()):g}]"
        if self.delta_spec is not None:
            delta = f"{self.delta_spec!r} ({delta})"
        return f"delta={delta}, seed={self.seed}, eps={self.eps:g}, noise={self.noise!r}"


def delta_label(delta) -> str:
    """A delta or delta spec as text for titles and file names: 0.25, equal-effect:0.25+keep:pitch=0.02."""
    return f"{float(delta):g}" if isinstance(delta, (int, float)) else str(delta)


def delta_sweep(synth, index: int, deltas: Sequence[DeltaSpec], seed: int = 0, noise: str = "shared") -> torch.Tensor:
    """View 1 of sound `index` at several deltas (or delta specs), same theta and same z_1: (len(deltas), N).

    delta = 0 is the unperturbed patch; larger deltas move along the same random direction z_1; specs scale that
    direction per parameter, so two specs side by side are the same patch perturbed two ways.
    """
    index = torch.tensor([int(index)])
    rows = [DoppelgangerPairs(synth, delta=d, seed=seed, noise=noise)(index)[0][0] for d in deltas]
    return torch.stack(rows) if rows else torch.zeros(0, synth.n_samples)


def sample_names(n_pairs: int, sweep_deltas: Sequence[DeltaSpec], augmented: bool) -> list[str]:
    """The wav names `write_samples` writes, in its order: the clean views (augmented only), then per pair its two
    views and its sweep."""
    names = [f"pair_{i:02d}_{v}_clean.wav" for i in range(n_pairs) for v in "ab"] if augmented else []
    for i in range(n_pairs):
        names += [f"pair_{i:02d}_a.wav", f"pair_{i:02d}_b.wav"]
        names += [f"sweep_{i:02d}_delta_{re.sub(r'[^A-Za-z0-9.=-]+', '_', delta_label(d))}.wav" for d in sweep_deltas]
    return names


def write_samples(
    synth,
    out_dir: str | Path,
    *,
    n_pairs: int = 4,
    start: int = 0,
    seed: int = 0,
    delta: DeltaSpec = 0.25,
    sweep_deltas: Sequence[DeltaSpec] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5),
    augment: nn.Module | None = None,
    noise: str = "shared",
    title: str = "",
) -> dict[str, Path]:
    """Write doppelganger pairs (augmented when `augment` is given) and a delta sweep as wav files + one PNG.

    Files: pair_{i}_a.wav / pair_{i}_b.wav for sounds start .. start + n_pairs - 1 (with `augment`, the
    augmented views; the clean views as pair_{i}_a_clean.wav / _b_clean.wav), sweep_{i}_delta_{d}.wav for
    every sound and delta, and samples.png: one row per sound, columns = the two (augmented) views, then
    the sweep. Returns {"dir": out_dir, "png": path, "wavs": [the wav paths written]}.
    """
    from doppel_torch.viz import save_spectrogram_grid, write_wav

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = torch.arange(start, start + n_pairs)
    clean = DoppelgangerPairs(synth, delta=delta, seed=seed, noise=noise)
    audio_a, audio_b = clean(indices)
    sr = synth.sample_rate
    wavs = [out_dir / name for name in sample_names(n_pairs, sweep_deltas, augment is not None)]
    paths = iter(wavs)
    if augment is not None:
        for i in range(n_pairs):
            write_wav(next(paths), audio_a[i], sr)
            write_wav(next(paths), audio_b[i], sr)
        audio_a, audio_b = augment(audio_a, indices, view=0), augment(audio_b, indices, view=1)
    rows = []
    for i in range(n_pairs):
        write_wav(next(paths), audio_a[i], sr)
        write_wav(next(paths), audio_b[i], sr)
        sweep = delta_sweep(synth, start + i, sweep_deltas, seed=seed, noise=noise)
        for audio in sweep:
            write_wav(next(paths), audio, sr)
        rows.append([audio_a[i], audio_b[i], *sweep])
    views = ["view a", "view b"] if augment is None else ["view a (aug)", "view b (aug)"]
    png = save_spectrogram_grid(
        rows,
        sr,
        out_dir / "samples.png",
        row_labels=[f"#{start + i}" for i in range(n_pairs)],
        col_labels=views + [f"delta {delta_label(d)}" for d in sweep_deltas],
        title=title or f"doppelgangers (delta {delta_label(delta) if not isinstance(delta, Mapping) else 'per module'}), "
        f"seed {seed}",
    )
    return {"dir": out_dir, "png": png, "wavs": wavs}
