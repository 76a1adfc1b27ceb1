"""Training configuration: a tree of dataclasses, validated on construction, with presets.

``TrainConfig`` = model + data + optim + run. The field defaults are doppel-torch's default recipe, which is the
paper's (paper section 3.1, ../DESIGN.md Training) except where a preset says otherwise: ResNet18 with a
1-channel stem and 512-d output, batch 768 per rank, SGD with lr = 0.12 x global batch / 256 and weight decay
1e-6, MultiStepLR (gamma 0.1) at 77.5 / 85 / 92.5 % of the epochs, 200 epochs of 100,000 sounds with a 90 / 10
train / validation split, delta = 0.25. Where the default differs from the paper's released code it says why
(`optim.momentum`: 0.9 here, 0 there, see OptimConfig; augmentation, SyncBatchNorm, precision and the validation / checkpoint cadence are execution
choices that the `paper` preset sets as released).

``--preset paper`` is the released training code (GitHub PapayaResearch/doppelgangers, commit a72dc0a), field by
field; paths are that repository's:

=====================  ==================  ===============================================================
field                  paper preset        source
=====================  ==================  ===============================================================
model.in_channels      1                   conf/embedding/resnet.yaml:3 (conv_channels: 1)
model.embed_dim        512                 conf/embedding/resnet.yaml:5 (embedding_size)
model.width            64                  doppelgangers/resnet.py:40 (torchvision resnet18)
data.synth             (your --synth)      conf/config.yaml:8 (synth: voice); Table 1 has all three
data.delta             0.25                conf/config.yaml:30 (data.synthetic.delta)
data.noise             shared              SynthAX renders a batch with one noise row (data.py:264-265)
data.sample_rate       16000               conf/config.yaml:25
data.duration          1.0                 conf/config.yaml:24
data.sounds_per_epoch  100000              conf/config.yaml:23 (max_n; data.py:247 batches of 768)
data.val_fraction      0.1                 conf/config.yaml:21 (train_size 0.9; train.py:97-102)
data.augment           True                conf/config.yaml:22 (apply_transform: true)
data.augment_group     100                 data.py:211, 273-275 (augmentation_chunksize 100, mode per_batch)
data.augment_pitch     fast_ratios         torch_audiomentations.PitchShift (conf/transform/audiomentations.yaml:17-22)
data.ir_dir            (your --ir-dir)     conf/config.yaml:26 (ir_paths from $IR_PATH); reverb is off without one
optim.batch_size       768                 conf/config.yaml:19 (per GPU; paper: 2 x V100)
optim.base_lr          0.12                model.py:135; see the lr note below
optim.momentum         0.0                 model.py:133-137 (torch.optim.SGD without momentum: PyTorch's 0)
optim.weight_decay     1e-6                model.py:136
optim.epochs           200                 conf/config.yaml:47
optim.milestones       .775, .85, .925     conf/config.yaml:59-62; epochs int(epochs x m) (model.py:139)
optim.gamma            0.1                 model.py:144
optim.align_alpha      2                   conf/config.yaml:49
optim.uniform_t        2                   conf/config.yaml:48
optim.align_weight     1                   conf/config.yaml:50
optim.uniform_weight   1                   conf/config.yaml:51 (uniformity = mean over both views, model.py:69)
run.seed               0                   conf/config.yaml:69
run.precision          fp32                conf/trainer/main.yaml sets none: Lightning's default "32-true"
run.sync_batchnorm     True                conf/trainer/main.yaml:15 (applies to CUDA multi-GPU runs)
run.val_every          10                  conf/trainer/main.yaml:17 (check_val_every_n_epoch)
run.keep_every         10                  conf/trainer/main.yaml:11-14 (every_n_epochs 10, save_top_k -1)
run.log_every          30                  conf/trainer/main.yaml:16 (log_every_n_steps)
=====================  ==================  ===============================================================

The lr note: the released code computes ``0.12 * (batch_size // 256) * world_size`` (model.py:135), which is
0 for a per-GPU batch under 256 and drops the remainder above it (0.12 x 2 for 767). The paper's formula,
0.12 x global batch / 256 (section 3.4: "0.72 ... 0.12 x total batch size / 256"), equals it for multiples of
256 and is kept for every batch. Without a counterpart here: the released validation set is redrawn at each
validation (its JAX key advances), doppel-torch's is the fixed sounds 0 .. n_val - 1, so validation curves are
comparable across epochs; Lightning's ``benchmark: true`` (cuDNN autotuning) is a speed setting.

Presets override a few fields (``PRESETS``); the CLI then overrides single fields. The resolved config is
printed at start and saved, as ``to_dict()``, in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from doppel_torch.delta.spec import MAX_DELTA, normalize_delta
from doppel_torch.pairs import NOISE_MODES

SYNTHS = ("voice", "voicefm", "parametric")
BACKENDS = ("auto", "torch", "triton", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_PITCH = ("uniform", "fast_ratios")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(obj: Any, section: str) -> None:
    """Every field holds a value of its annotated type (an int where "int", None only where "... | None"), so a
    value such as ``--set optim.batch_size=abc`` is a ValueError naming the field, not a TypeError later."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        if kinds[0].startswith("tuple"):
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
            expected = "a list of numbers"
        else:
            simple = [k for k in kinds if k in _TYPES]  # "float | str": either (data.delta)
            allowed = tuple(t for k in simple for t in _TYPES[k])
            ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
            words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
            expected = " or ".join(words[k] for k in simple)
        _check(ok, f"{section}.{f.name} must be {expected}" + (" or none" if "None" in kinds else "") + f", got {value!r}")
        # found from outside: --lr inf trained to NaN, --duration inf and --sounds-per-epoch 1e20 were tracebacks
        for v in value if isinstance(value, (list, tuple)) else (value,):
            _check(not isinstance(v, float) or math.isfinite(v), f"{section}.{f.name} must be finite, got {value!r}")
            _check(not isinstance(v, int) or f.name == "seed" or abs(v) < 2**63,
                   f"{section}.{f.name} must lie below 2^63, got {value!r}")


@dataclass
class ModelConfig:
    """Encoder shape. width 64 is ResNet18; smaller widths are for tests and smoke runs."""

    in_channels: int = 1
    embed_dim: int = 512
    width: int = 64

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _check(self.in_channels == 1, f"model.in_channels must be 1 (log-mel input), got {self.in_channels}")
        # upper bounds far past any model that fits a GPU: 2^62 was a traceback from torch's storage size
        _check(1 <= self.embed_dim <= 65536, f"model.embed_dim must be in [1, 65536], got {self.embed_dim}")
        _check(1 <= self.width <= 4096, f"model.width must be in [1, 4096] (64 is ResNet18), got {self.width}")


@dataclass
class DataConfig:
    """Where the positive pairs come from.

    Synthetic mode (default): doppelganger pairs of `synth` with perturbation `delta` (a number, the paper's
    isotropic delta, or a delta spec string such as "equal-effect:0.25+keep:pitch=0.02": `doppel_torch.delta`;
    stored as a float for a plain number, else as the canonical spec string), rendered by `backend`
    ("auto": the Triton kernels on CUDA, the native kernel on CPU, or the torch reference without a compiler),
    with the synths' noise source as `noise` says (`pairs.DoppelgangerPairs`; "shared", the paper's, by default).
    Real-data mode (`data` set to a folder of wav/flac/ogg): two views of real clips, made different by
    `jitter` (two different segments of one clip), `augment` and/or `mix_layers` > 1 (each view is the sum of
    `mix_layers` segments of the clip, the paper's VGGSound-Mix).
    `augment_group` consecutive sounds of a batch share one draw of the augmentation chain (1: per sound; the
    released code: 100); `augment_pitch` is "uniform" semitones or torch-audiomentations' "fast_ratios"
    (`augment.AugmentChain`).
    """

    synth: str = "voice"
    delta: float | str = 0.25
    noise: str = "shared"
    backend: str = "auto"
    sample_rate: int = 16000
    duration: float = 1.0
    sounds_per_epoch: int = 100_000
    val_fraction: float = 0.1
    augment: bool = False
    augment_group: int = 1
    augment_pitch: str = "uniform"
    ir_dir: str | None = None
    data: str | None = None
    jitter: bool = True
    mix_layers: int = 1
    num_workers: int = 2

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _check(self.synth in SYNTHS, f"data.synth must be one of {', '.join(SYNTHS)}; got {self.synth!r}")
        if isinstance(self.delta, str):
            try:  # "0.25" from the command line is the number 0.25
                self.delta = float(self.delta)
            except ValueError:
                pass
        if isinstance(self.delta, (int, float)):
            _check(
                math.isfinite(self.delta) and 0 <= self.delta <= MAX_DELTA,
                f"data.delta must be a finite number >= 0 and <= {MAX_DELTA:g} (the paper's best is 0.25) or a "
                f"delta spec such as equal-effect:0.25, got {self.delta!r}",
            )
            self.delta = float(self.delta)
        else:
            try:
                self.delta = normalize_delta(self.delta)
            except ValueError as err:
                raise ValueError(f"data.delta: {err}") from None
        if isinstance(self.delta, str):  # the groups it names and the profile it needs exist for this synth
            from doppel_torch.delta.spec import resolve_delta
            from doppel_torch.synths.base import get_synth

            try:
                resolve_delta(self.delta, get_synth(self.synth))
            except ValueError as err:
                raise ValueError(f"data.delta: {err}") from None
        _check(self.noise in NOISE_MODES, f"data.noise must be one of {', '.join(NOISE_MODES)}; got {self.noise!r}")
        _check(self.backend in BACKENDS, f"data.backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        _check(self.sample_rate > 0, f"data.sample_rate must be > 0, got {self.sample_rate}")
        _check(self.duration > 0, f"data.duration must be > 0 seconds, got {self.duration}")
        _check(self.sounds_per_epoch >= 2, f"data.sounds_per_epoch must be >= 2, got {self.sounds_per_epoch}")
        _check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(1 <= self.mix_layers <= 64, f"data.mix_layers must be in [1, 64], got {self.mix_layers}")
        _check(self.augment_group >= 1, f"data.augment_group must be >= 1 (sounds sharing one draw), got {self.augment_group}")
        _check(
            self.augment_pitch in AUGMENT_PITCH,
            f"data.augment_pitch must be one of {', '.join(AUGMENT_PITCH)}; got {self.augment_pitch!r}",
        )
        _check(0 <= self.num_workers <= 1024, f"data.num_workers must be in [0, 1024], got {self.num_workers}")
        for name in ("data", "ir_dir"):  # an unset $DATA in a script: '' read the current folder's files
            value = getattr(self, name)
            _check(value is None or value.strip() != "", f"data.{name} must name a folder, got {value!r}")
        _check(self.ir_dir is None or self.augment,
               "data.ir_dir adds reverb to the augmentation chain, which is off: add --augment (or drop --ir-dir)")
        if self.data is None:
            _check(self.mix_layers == 1, "data.mix_layers > 1 needs real data: pass --data PATH")

    def val_of(self, sounds_per_epoch: int) -> int:
        """Validation sounds of an epoch of `sounds_per_epoch` sounds at this val_fraction."""
        return max(2, int(round(self.val_fraction * sounds_per_epoch)))

    @property
    def n_val(self) -> int:
        """Validation sounds: global indices 0 .. n_val - 1, the same every epoch."""
        return self.val_of(self.sounds_per_epoch)

    @property
    def n_train(self) -> int:
        """Training sounds per epoch."""
        return self.sounds_per_epoch - self.n_val

    def sounds_for_train(self, n_train: int) -> int:
        """The smallest sounds_per_epoch that leaves at least `n_train` training sounds."""
        # sounds - val_of(sounds) never falls as sounds grows: start below (n_train - 1) / (1 - val_fraction) (a
        # count from n_train up took minutes for --batch-size 1e9, found from outside)
        sounds = max(n_train, int((n_train - 1) / (1.0 - self.val_fraction)) - 1)
        while sounds - self.val_of(sounds) < n_train:
            sounds += 1
        return sounds


@dataclass
class OptimConfig:
    """SGD with the paper's linear lr scaling and a MultiStepLR over epochs.

    momentum: 0.9 by default, 0 in the released code (`--preset paper`). Chosen on evidence
    (bench/results/momentum-fsdd-cpu-2026-12-01/: the same 80 k-pair CPU run with each, FSDD linear probes):
    0.9 gives 39.7 % digit / 94.3 % speaker, 0 gives 37.4 / 90.1 (random init 33.1 / 90.9, log-mel 44.8 / 97.0).
    """

    batch_size: int = 768
    base_lr: float = 0.12
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-6
    epochs: int = 200
    milestones: tuple[float, ...] = (0.775, 0.85, 0.925)
    gamma: float = 0.1
    align_alpha: float = 2.0
    uniform_t: float = 2.0
    align_weight: float = 1.0
    uniform_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self, "optim")
        self.milestones = tuple(float(m) for m in self.milestones)
        _check(
            self.batch_size >= 2,
            f"optim.batch_size (per rank) must be >= 2 for the uniformity loss, got {self.batch_size}",
        )
        _check(self.base_lr > 0, f"optim.base_lr must be > 0, got {self.base_lr}")
        _check(self.lr is None or self.lr > 0, f"optim.lr must be > 0 (or unset to scale base_lr), got {self.lr}")
        _check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.epochs >= 1, f"optim.epochs must be >= 1, got {self.epochs}")
        _check(
            all(0 < m <= 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
            f"optim.milestones must be increasing fractions of the epochs in (0, 1], got {self.milestones}",
        )
        _check(0 < self.gamma <= 1, f"optim.gamma must be in (0, 1], got {self.gamma}")

    def peak_lr(self, world_size: int) -> float:
        """lr = base_lr x global batch / 256 (0.72 for the paper's 2 x 768), unless `lr` is set."""
        return self.lr if self.lr is not None else self.base_lr * self.batch_size * world_size / 256

    def milestone_epochs(self) -> list[int]:
        """MultiStepLR milestones in epochs: int(fraction x epochs), as the released code (155, 170, 185 of 200;
        7, 8, 9 of 10), and at least 1: a milestone at epoch 0 (int(0.775) for a 1-epoch run) would make
        MultiStepLR decay the lr before the first step."""
        return [max(1, int(m * self.epochs)) for m in self.milestones]


@dataclass
class RunConfig:
    """Execution: device, precision, logging, checkpoints. None of these change the recipe.

    precision "auto" is bf16 autocast on CUDA and fp32 on CPU. `max_steps` stops early (smoke runs, tests);
    `val_batches` caps the validation batches; `checkpoint_every` is in optimizer steps (last.pt is also
    written at every epoch end and on exit); `keep_every` > 0 also keeps a copy epoch-NNNN.pt every that many
    epochs (the released code keeps one every 10). `sync_batchnorm` converts BatchNorm to SyncBatchNorm in
    multi-GPU (CUDA) runs; it has no effect in a single process.
    """

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = False
    out_dir: str = "runs/doppel"
    resume: str | None = None
    max_steps: int | None = None
    log_every: int = 50
    val_every: int = 1
    val_batches: int | None = None
    checkpoint_every: int = 1000
    keep_every: int = 0
    examples: int = 4
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        _check_types(self, "run")
        _check(-(2**63) <= self.seed < 2**64, f"run.seed must lie in [-2^63, 2^64) (64 bits), got {self.seed}")
        _check(self.out_dir.strip() != "", "run.out_dir must name a folder (an empty --out wrote the run into the "
                                           "current folder): give one, e.g. --out runs/doppel")
        _check(self.device in DEVICES, f"run.device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        _check(
            self.precision in PRECISIONS, f"run.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
        )
        _check(self.max_steps is None or self.max_steps >= 1, f"run.max_steps must be >= 1, got {self.max_steps}")
        _check(self.log_every >= 1, f"run.log_every must be >= 1, got {self.log_every}")
        _check(self.val_every >= 1, f"run.val_every must be >= 1 (epochs), got {self.val_every}")
        _check(
            self.val_batches is None or self.val_batches >= 1, f"run.val_batches must be >= 1, got {self.val_batches}"
        )
        _check(self.checkpoint_every >= 1, f"run.checkpoint_every must be >= 1 (steps), got {self.checkpoint_every}")
        _check(self.keep_every >= 0, f"run.keep_every must be >= 0 (epochs; 0 keeps only last.pt), got {self.keep_every}")
        _check(self.examples >= 0, f"run.examples must be >= 0, got {self.examples}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig), ("run", RunConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _build(cls, value, name))

    def steps_per_epoch(self, world_size: int) -> int:
        """Optimizer steps per epoch: training sounds // global batch (at least 1)."""
        return max(1, self.data.n_train // (self.optim.batch_size * world_size))

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of plain values (lists for tuples): loadable with torch.load(weights_only=True)."""

        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items()})

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainConfig":
        """A new config with dotted-key overrides applied, e.g. {"optim.epochs": 3}; None values are skipped."""
        d = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if section not in d or name not in d[section]:
                raise ValueError(f"unknown config field {key!r}; fields: {', '.join(_field_names())}")
            d[section][name] = value
        return TrainConfig.from_dict(d)

    def describe(self) -> str:
        """Multi-line, human-readable view of every field."""
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"  {k} = {v!r}" for k, v in values.items())
        return "\n".join(lines)


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} config field(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**values)


def _field_names() -> list[str]:
    out = []
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig), ("run", RunConfig)):
        out.extend(f"{section}.{f.name}" for f in dataclasses.fields(cls))
    return out


# Presets: dotted-key overrides of the default recipe (the field defaults above).
PRESETS: dict[str, dict[str, Any]] = {
    # doppel-torch's default recipe: every field default.
    "default": {},
    # The paper's released training code, field by field (the table in the module docstring).
    "paper": {
        "data.augment": True,
        "data.augment_group": 100,
        "data.augment_pitch": "fast_ratios",
        "optim.momentum": 0.0,
        "run.precision": "fp32",
        "run.sync_batchnorm": True,
        "run.val_every": 10,
        "run.keep_every": 10,
        "run.log_every": 30,
    },
    # A few minutes on 2 CPU cores: a narrow ResNet18, 0.5 s sounds, 3 short epochs.
    "cpu-smoke": {
        "model.width": 16,
        "data.duration": 1.0,
        "data.sounds_per_epoch": 320,
        "optim.batch_size": 32,
        "optim.epochs": 3,
        "run.precision": "fp32",
        "run.channels_last": False,
        "run.log_every": 2,
        "run.checkpoint_every": 100,
        "run.examples": 2,
        "data.num_workers": 0,
    },
}


def make_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of `preset` with dotted-key `overrides` applied (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    merged = {**PRESETS[preset], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return TrainConfig().with_overrides(merged)
