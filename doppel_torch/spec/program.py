"""The one lowering of a `Patch`: named integer tables that every backend reads, and nothing else encodes the wiring.

    program = lower(voice_patch(), sample_rate=16000, control_rate=480, duration=1.0)
    program.tables["oscillators"][:, col("oscillators", "pitch")]     # mod-output row of each VCO's pitch

`TABLES` defines every table's columns, once. The torch backend indexes with `col(table, name)`; the Triton kernels
read constexpr column constants generated from `TABLES` (`backends/triton/columns.py`); the C++ kernel declares
the same columns and the loader compares its declaration with `layout_signature()` before the first render.

Entries are one of three things (-1 where a row has none):
- a *theta column*: a position in the (B, m) parameter row in human units (`params` below);
- a *row* of another table (`keyboard`, `rate_env`, `source`, ...);
- a code (`kind`, `role`, `source` of the mixer), from the constants below.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

import torch

from doppel_torch.spec.layout import Layout
from doppel_torch.spec.patch import Patch

# table -> its columns. "matrix" is the exception: (n_out, n_in) theta columns, one column per mod input.
TABLES: dict[str, tuple[str, ...]] = {
    "keyboards": ("midi_f0", "duration"),  # theta columns
    "envelopes": ("attack", "decay", "sustain", "release", "alpha", "keyboard"),  # theta columns; keyboards row
    "lfos": ("frequency", "mod_depth", "initial_phase", "sin", "tri", "saw", "rsaw", "sqr", "rate_env", "amp_env"),
    "mod_inputs": ("kind", "index"),  # INPUT_*; row of envelopes or lfos
    "mod_outputs": ("role",),  # ROLE_*: pitch outputs are read per control run, the others at audio rate
    # kind: OSC_*; keyboard: row; tuning .. shape: theta columns; pitch, amp: mod_outputs rows; source: the
    # modulating oscillator's row (fm); filter: filters row applied to this oscillator's output; slot: index among
    # the oscillators that modulate an FM operator (their outputs are kept for it), -1 otherwise.
    "oscillators": ("kind", "keyboard", "tuning", "mod_depth", "initial_phase", "shape", "pitch", "amp", "source",
                    "filter", "slot"),
    # kind: FILTER_*; cutoff, mod_depth: theta columns; control: mod_outputs row; target: oscillators row, -1 = mix
    "filters": ("kind", "cutoff", "mod_depth", "control", "target"),
    "noise": ("amp",),  # mod_outputs row (zero or one row)
    "mixer": ("source", "index", "level"),  # MIX_*; oscillators row; theta column
}
MATRIX = "matrix"

INPUT_ENVELOPE, INPUT_LFO = 0, 1
ROLE_PITCH, ROLE_AMP, ROLE_NOISE, ROLE_CUTOFF = 0, 1, 2, 3
OSC_SINE, OSC_SQUARE_SAW, OSC_FM = 0, 1, 2
FILTER_LPF = 0
MIX_OSCILLATOR, MIX_NOISE = 0, 1
CODES = dict(INPUT_ENVELOPE=INPUT_ENVELOPE, INPUT_LFO=INPUT_LFO, ROLE_PITCH=ROLE_PITCH, ROLE_AMP=ROLE_AMP,
             ROLE_NOISE=ROLE_NOISE, ROLE_CUTOFF=ROLE_CUTOFF, OSC_SINE=OSC_SINE, OSC_SQUARE_SAW=OSC_SQUARE_SAW,
             OSC_FM=OSC_FM, FILTER_LPF=FILTER_LPF, MIX_OSCILLATOR=MIX_OSCILLATOR, MIX_NOISE=MIX_NOISE)
_OSC_KIND = {"sine": OSC_SINE, "square_saw": OSC_SQUARE_SAW, "fm": OSC_FM}
_LFO_SHAPES = ("sin", "tri", "saw", "rsaw", "sqr")


def col(table: str, name: str) -> int:
    """Column index of `name` in `table`."""
    return TABLES[table].index(name)


def layout_signature() -> str:
    """The table definition as one line ("table=col,col;..." then the codes): what the C++ kernel must declare."""
    tables = ";".join(f"{t}={','.join(c)}" for t, c in TABLES.items())
    codes = ",".join(f"{k}={v}" for k, v in CODES.items())
    return f"{tables};{MATRIX}=*|{codes}"


def n_samples_of(seconds: float, rate: float) -> int:
    # SynthAX: ceil(seconds * rate); the tolerance keeps 1.0 * 16000 at 16000 despite float rounding.
    return int(math.ceil(seconds * rate - 1e-9))


@dataclass(frozen=True, eq=False)
class Program:
    """A patch lowered for one (rates, duration, eps): the tables, the sizes and the parameter layout."""

    layout: Layout
    sample_rate: float
    control_rate: float
    n_samples: int
    n_control: int
    eps: float
    tables: dict[str, torch.Tensor]  # int32 (rows, len(TABLES[name])), on the CPU; MATRIX: (n_out, n_in)
    mix_filter: int  # filters row applied to the mix, -1 for none
    _on: dict = field(default_factory=dict, repr=False)  # device -> the tables there (`on`)

    @property
    def patch(self) -> Patch:
        return self.layout.patch

    @property
    def num_params(self) -> int:
        return len(self.layout)

    def rows(self, table: str) -> int:
        return self.tables[table].shape[0]

    def column(self, table: str, name: str) -> list[int]:
        """One column of a table as Python ints (from `lists`: no tensor read)."""
        j = col(table, name)
        return [row[j] for row in self.lists[table]]

    @functools.cached_property
    def lists(self) -> dict[str, list[list[int]]]:
        """Every table as Python ints (rows of columns), for code that branches on them: no tensor read per call,
        which torch.func's transforms and a device sync would both object to."""
        return {name: t.tolist() for name, t in self.tables.items()}

    @functools.cached_property
    def words(self) -> torch.Tensor:
        """Every table in one int32 vector, for native code: [n_tables, (rows, cols) per table, data...],
        tables in `TABLES` order, then the matrix, then mix_filter."""
        names = [*TABLES, MATRIX]
        header = [len(names)]
        for name in names:
            header += list(self.tables[name].shape)
        body = [self.tables[name].reshape(-1) for name in names]
        return torch.cat([torch.tensor(header, dtype=torch.int32), *body,
                          torch.tensor([self.mix_filter], dtype=torch.int32)]).contiguous()

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The tables on `device` (cached in a field: torch.compile(fullgraph=True) traces neither
        __dict__.setdefault nor a cached_property's lock)."""
        device = torch.device(device)
        cache = self._on
        if device not in cache:
            cache[device] = {name: t.to(device) for name, t in self.tables.items()}
        return cache[device]


def _table(rows: list[list[int]], name: str) -> torch.Tensor:
    width = len(TABLES[name])
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, width)


def _lower_tables(layout: Layout) -> tuple[dict[str, torch.Tensor], int]:
    patch, idx = layout.patch, layout.index
    keyboards = {name: i for i, name in enumerate(patch.keyboards)}
    envelopes = {e.name: i for i, e in enumerate(patch.envelopes)}
    lfos = {lfo.name: i for i, lfo in enumerate(patch.lfos)}
    outputs = {name: i for i, name in enumerate(patch.mod_outputs)}
    oscillators = {o.name: i for i, o in enumerate(patch.oscillators)}
    filters = {f.name: i for i, f in enumerate(patch.filters)}
    filter_target = {f.name: f.input for f in patch.filters}
    filter_on = {f.input: i for i, f in enumerate(patch.filters)}

    def signal_row(name: str) -> int:  # an oscillator or the filter on one (validated by Patch.validate)
        return oscillators[filter_target.get(name, name)]

    roles = [None] * len(outputs)

    def role(name: str, code: int) -> int:
        # One output may drive several inputs (a pitch and an amp, say): it is ROLE_PITCH only when every reader is a
        # VCO pitch, since the cpu kernel does not upsample pitch outputs (it reads them per control run).
        if code != ROLE_PITCH or roles[outputs[name]] is None:
            roles[outputs[name]] = code
        return outputs[name]

    tables: dict[str, list[list[int]]] = {name: [] for name in TABLES}
    tables["keyboards"] = [[idx[k]["midi_f0"], idx[k]["duration"]] for k in patch.keyboards]
    for env in patch.envelopes:
        p = idx[env.name]
        tables["envelopes"].append([p["attack"], p["decay"], p["sustain"], p["release"], p["alpha"],
                                    keyboards[env.keyboard]])
    for lfo in patch.lfos:
        p = idx[lfo.name]
        tables["lfos"].append([p["frequency"], p["mod_depth"], p["initial_phase"], *(p[s] for s in _LFO_SHAPES),
                               envelopes[lfo.rate_env], envelopes[lfo.amp_env]])
    for name in patch.mod_inputs:
        tables["mod_inputs"].append([INPUT_ENVELOPE, envelopes[name]] if name in envelopes else [INPUT_LFO, lfos[name]])
    sources = sorted({signal_row(o.source) for o in patch.oscillators if o.kind == "fm"})
    for osc in patch.oscillators:
        p = idx[osc.name]
        fm = osc.kind == "fm"
        row = oscillators[osc.name]
        tables["oscillators"].append([
            _OSC_KIND[osc.kind], keyboards[osc.keyboard], p["tuning"], p["mod_depth"], p["initial_phase"],
            p["shape"] if osc.kind == "square_saw" else -1,
            -1 if fm else role(osc.pitch, ROLE_PITCH), -1 if fm else role(osc.amp, ROLE_AMP),
            signal_row(osc.source) if fm else -1, filter_on.get(osc.name, -1),
            sources.index(row) if row in sources else -1,
        ])
    for flt in patch.filters:
        p = idx[flt.name]
        tables["filters"].append([FILTER_LPF, p["cutoff"], p["mod_depth"], role(flt.cutoff, ROLE_CUTOFF),
                                  -1 if flt.input == "mix" else oscillators[flt.input]])
    if patch.noise_amp is not None:
        tables["noise"].append([role(patch.noise_amp, ROLE_NOISE)])
    for name, column in zip(patch.mixer_inputs, layout.mixer_levels):
        if name == "noise":
            tables["mixer"].append([MIX_NOISE, -1, column])
        else:
            tables["mixer"].append([MIX_OSCILLATOR, signal_row(name), column])
    tables["mod_outputs"] = [[r] for r in roles]
    out = {name: _table(rows, name) for name, rows in tables.items()}
    out[MATRIX] = torch.tensor(layout.mod_matrix, dtype=torch.int32).reshape(len(outputs), len(patch.mod_inputs))
    mix_filter = next((filters[f.name] for f in patch.filters if f.input == "mix"), -1)
    return out, mix_filter


MAX_SAMPLES = 2**31 - 1  # samples a sound (37 hours at 16 kHz): a sample's index fits an int32 (Triton's default)


def _number(value) -> bool:
    """A finite real number (Python's or numpy's), not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def lower(patch: Patch, *, sample_rate: float = 16000, control_rate: float = 480, duration: float = 1.0,
          eps: float = 1e-6, apply_mixer_curve: bool = False) -> Program:
    """Validate and lower `patch` for these rates and duration (cached: one Program per argument set).

    Raises ValueError naming the module for an invalid patch, and for rates or a duration that give fewer than
    two samples."""
    if not isinstance(patch, Patch):
        raise ValueError(f"patch must be a doppel_torch.spec.Patch, got {type(patch).__name__}")
    for name, value in (("sample_rate", sample_rate), ("control_rate", control_rate), ("duration", duration)):
        if not _number(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if control_rate > sample_rate:
        raise ValueError(f"control_rate ({control_rate} Hz) must not exceed sample_rate ({sample_rate} Hz)")
    if not _number(eps) or not 0 < eps < 0.5:
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}")
    return _lower(patch, float(sample_rate), float(control_rate), float(duration), float(eps), bool(apply_mixer_curve))


@functools.lru_cache(maxsize=64)
def _lower(patch: Patch, sample_rate: float, control_rate: float, duration: float, eps: float,
           apply_mixer_curve: bool) -> Program:
    n_samples, n_control = n_samples_of(duration, sample_rate), n_samples_of(duration, control_rate)
    if n_samples > MAX_SAMPLES:
        raise ValueError(f"duration {duration:g} s at {sample_rate:g} Hz is {n_samples:,} samples a sound; at most "
                         f"{MAX_SAMPLES:,} ({MAX_SAMPLES / sample_rate / 3600:.3g} hours): give a shorter duration")
    if n_control < 2:
        raise ValueError(f"duration {duration:g} s gives fewer than 2 control samples at {control_rate:g} Hz: give "
                         f"more than one control period, {1.0 / control_rate:.6g} s, or a higher control_rate")
    layout = Layout(patch, apply_mixer_curve=apply_mixer_curve)
    tables, mix_filter = _lower_tables(layout)
    program = Program(layout=layout, sample_rate=float(sample_rate), control_rate=float(control_rate),
                      n_samples=n_samples, n_control=n_control, eps=float(eps), tables=tables, mix_filter=mix_filter)
    program.lists  # cached now, as words
    program.words  # cached now: inside torch.compile, Python 3.11's cached_property lock is a graph break
    return program
