"""Probes on frozen embeddings, three named protocols (``ProbeConfig(protocol=...)``, ``eval --probe``).

``paper`` (default; ``linear`` is an alias): the paper's linear probe. Z-score the embeddings with training-split
statistics, one linear layer (PyTorch's default init), Adam lr 1e-3, batch 32 (a fresh permutation every epoch),
cross-entropy (softmax) or binary cross-entropy (multi-label); the validation score is checked every epoch, early
stopping after 20 checks without a strict improvement, at most 200 epochs, the best epoch's weights are kept.
Splits: the task's (test fold k, validation fold k + 1, train the rest).

``hear``: hear-eval-kit's downstream protocol, read from hearbenchmark/hear-eval-kit at commit 855964977238
(``heareval/predictions/task_predictions.py``, "tp.py" below, and ``runner.py``):

- the grid (tp.py:59-96, ``PARAM_GRID``): hidden_layers {1, 2}, hidden_dim 1024, dropout 0.1,
  lr {3.2e-3, 1e-3, 3.2e-4, 1e-4}, patience 20, max_epochs 500, check_val_every_n_epoch 3, batch_size 1024,
  hidden_norm BatchNorm1d, norm_after_activation False, embedding_norm Identity (and its use is commented out,
  tp.py:226: no standardisation), initialization {xavier_uniform_, xavier_normal_}, optim Adam: 16 points;
- the hidden block (tp.py:152-166): Linear (init with gain ``calculate_gain(last activation)``: 1 for the first,
  sqrt(2) after a ReLU), BatchNorm1d, Dropout, ReLU; the projection gets the same init with the last gain
  (tp.py:171-175); biases keep PyTorch's default init; loss cross-entropy or BCE-with-logits (tp.py:177-183);
- the draw (tp.py:1293-1294, 1340-1344; runner.py:57-63): ``seed_everything(42)``, then ``random.shuffle`` of the
  grid in scikit-learn ``ParameterGrid`` order (sorted keys, the last key varying fastest), then the first 8
  (``--grid-points`` default 8). Reproduced here with ``random.Random(42)``, so the same 8 points in the same order;
- model selection (tp.py:1343-1394): every drawn point is trained on the first split, the best validation score
  wins (first in draw order on ties: a stable sort, tp.py:1250-1253), and that point is retrained on every other
  split; the first split keeps its selection model;
- training (tp.py:999-1025): validation every 3 epochs, ``EarlyStopping(patience=20 checks, min_delta=0)`` and
  ``ModelCheckpoint`` on the validation score (strict improvement); the test fold is scored with the best checkpoint
  (tp.py:1105). The training loader does not shuffle: ``split_name == "train"`` (tp.py:847) compares the list of
  training folds with a string, so it is always false (tp.py:853); kept, batches in file order;
- folds (tp.py:1124-1159): sorted folds, test = fold k, validation = fold k + 1 (mod k), train = the rest: the
  task's own split scheme.
The kit seeds torch with 42 once per task; here the run's seed seeds each fit (init and dropout), the grid draw
stays at 42.

``arch``: the ARCH benchmark's linear protocol, read from MorenoLaQuatra/ARCH at commit 97d42716e5e7
(``arch_eval/models/classification_model.py``, "cm.py", and ``arch_eval/evaluation/classification/sound/esc50.py``):

- folds (esc50.py:127-175): each fold in turn is the test set; the other folds, concatenated in fold order, are
  split 80/20 into train / validation by ``train_test_split(test_size=0.2, random_state=42)``, reproduced exactly
  (``numpy.random.RandomState(42).permutation``, the first ceil(0.2 n) validation); a fixed train/valid/test task
  keeps its split;
- the model (esc50.py:135-136, cm.py:62-63): one ``nn.Linear`` (default init) on the raw embeddings;
- training (cm.py:141-164; esc50.py:110, 209; evaluate_hf_models.py:32): AdamW (lr 1e-3, PyTorch's default weight
  decay 0.01), batch 32 shuffled, 200 epochs, no early stopping; LambdaLR with a linear warm-up over the first 10 %
  of ``epochs x batches`` steps from lr 0, then a linear decay to 0, stepped after every batch and once more after
  every epoch (cm.py:115 and 164), so the decay reaches 0 about one epoch in (batches + 1) early (kept);
- selection (cm.py:166-171): the epoch with the lowest validation loss (the mean over batches of 32 of each batch's
  mean loss, cm.py:211, 225). As released, ``best_val_loss`` is never updated and ``state_dict()`` is not copied,
  so ARCH returns the last epoch's weights; here the best epoch is kept, as the code intends (the brief of
  doppel-torch's issue 12 asks for it too);
- scores (cm.py:230-236, esc50.py:247-251): accuracy and macro F1 on the test fold, averaged over folds (here also
  over seeds, with their std; multi-label tasks: mAP).

All randomness (initialisation, batch order, dropout) comes from the `seed` argument. The linear protocols fit every
(split, seed) of a task at once as one batched linear model (`fit_linear_many`); `fit_point` is the plain
one-model loop they equal (tested), and the path of the ``hear`` MLPs.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from doppel_torch.eval.embed import cpu_threads, free_cpu_threads
from doppel_torch.eval.metrics import score

PROTOCOLS = ("paper", "hear", "arch")
ALIASES = {"linear": "paper"}
RENAMED = {"mlp-grid": "hear"}
PROBE_CHOICES = PROTOCOLS + tuple(ALIASES)

# Each protocol's defaults; `None` in a ProbeConfig field means "the protocol's value".
PROTOCOL_DEFAULTS = {
    "paper": dict(lr=1e-3, batch_size=32, max_epochs=200, patience=20, check_every=1, standardize=True),
    "hear": dict(lr=None, batch_size=1024, max_epochs=500, patience=20, check_every=3, standardize=False),
    "arch": dict(lr=1e-3, batch_size=32, max_epochs=200, patience=None, check_every=1, standardize=False),
}
HEAR_GRID_POINTS = 8  # runner.py:57-63
HEAR_GRID_SEED = 42  # task_predictions.py:1294
ARCH_VALID_FRACTION, ARCH_SPLIT_SEED, ARCH_WARMUP, ARCH_WEIGHT_DECAY = 0.2, 42, 0.1, 1e-2


def resolve_protocol(name: str) -> str:
    """The protocol a `--probe` name stands for; a clear error for removed names."""
    if name in RENAMED:
        raise ValueError(f"probe {name!r} was replaced by {RENAMED[name]!r} (the kit's grid as its source defines it)")
    name = ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise ValueError(f"probe protocol must be one of {PROBE_CHOICES}, got {name!r}")
    return name


@dataclass
class ProbeConfig:
    """How to fit probes: a protocol and its settings (None = the protocol's own value, see PROTOCOL_DEFAULTS).

    For ``hear``, `max_epochs` caps every grid point and `batch_size`/`patience`/`check_every` override them; the
    learning rates are a grid axis and cannot be set. `grid` replaces the drawn grid (tests use small ones).
    """

    protocol: str = "paper"
    lr: float | None = None
    batch_size: int | None = None
    max_epochs: int | None = None
    patience: int | None = None
    check_every: int | None = None
    standardize: bool | None = None
    grid: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.protocol = resolve_protocol(self.protocol)
        defaults = PROTOCOL_DEFAULTS[self.protocol]
        if self.protocol == "hear" and self.lr is not None:
            raise ValueError("the hear protocol's learning rates are its grid's (3.2e-3 ... 1e-4); drop --lr")
        if self.protocol == "arch" and self.patience is not None:
            raise ValueError("the arch protocol trains a fixed number of epochs, without early stopping; drop --patience")
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("max_epochs", "batch_size", "check_every") + (("patience",) if self.patience is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.protocol == "hear" and not self.grid:
            self.grid = hear_grid(self.max_epochs, self.batch_size, self.patience, self.check_every)

    @property
    def kind(self) -> str:  # the name reports used before protocols had names
        return self.protocol

    def points(self) -> list[dict]:
        """The hyperparameter settings to try (one for the linear protocols)."""
        if self.protocol == "hear":
            return self.grid
        return [dict(hidden_layers=0, lr=self.lr, batch_size=self.batch_size, patience=self.patience,
                     max_epochs=self.max_epochs, check_every=self.check_every)]

    def describe(self) -> str:
        """One line naming the protocol and its values, for reports."""
        if self.protocol == "paper":
            return (f"paper (linear, Adam lr {self.lr}, batch {self.batch_size}, early stopping: patience "
                    f"{self.patience} checks every {self.check_every} epoch(s), max {self.max_epochs} epochs, "
                    f"{'z-scored' if self.standardize else 'raw'} embeddings)")
        if self.protocol == "arch":
            return (f"arch (linear, AdamW lr {self.lr} wd {ARCH_WEIGHT_DECAY}, {int(ARCH_WARMUP * 100)} % warm-up then "
                    f"linear decay, batch {self.batch_size}, {self.max_epochs} epochs, best epoch by validation loss, "
                    f"train/valid {100 - int(ARCH_VALID_FRACTION * 100)}/{int(ARCH_VALID_FRACTION * 100)} of the "
                    f"non-test folds (seed {ARCH_SPLIT_SEED}), {'z-scored' if self.standardize else 'raw'} embeddings)")
        return (f"hear (hear-eval-kit MLP grid: {len(self.grid)} points drawn with seed {HEAR_GRID_SEED}, selected on "
                f"the first split, max {self.max_epochs} epochs, validation every {self.check_every}, patience "
                f"{self.patience}, batch {self.batch_size}, {'z-scored' if self.standardize else 'raw'} embeddings)")


def hear_grid(max_epochs: int = 500, batch_size: int = 1024, patience: int = 20, check_every: int = 3,
              n_points: int = HEAR_GRID_POINTS, seed: int = HEAR_GRID_SEED) -> list[dict]:
    """The kit's 16-point PARAM_GRID in ParameterGrid order, shuffled by random.Random(seed), first `n_points`.

    ParameterGrid iterates the product of the values under the sorted keys, the last varying fastest; of the keys
    with several values that is hidden_layers, initialization, lr (task_predictions.py:59-96, 1340-1344).
    """
    confs = [
        dict(hidden_layers=h, hidden_dim=1024, dropout=0.1, lr=lr, batch_size=batch_size, patience=patience,
             check_every=check_every, max_epochs=min(500, max_epochs), initialization=init)
        for h, init, lr in itertools.product((1, 2), ("xavier_uniform", "xavier_normal"), (3.2e-3, 1e-3, 3.2e-4, 1e-4))
    ]
    random.Random(seed).shuffle(confs)
    return confs[:n_points]


class Standardize(nn.Module):
    """x -> (x - mean) / std with statistics of the training set kept as buffers. x: (N, D)."""

    def __init__(self, x_train: torch.Tensor, enabled: bool = True):
        super().__init__()
        mean, std = standardize_stats(x_train, enabled)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def standardize_stats(x_train: torch.Tensor, enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the training rows (D,) each; zeros and ones when disabled (std >= 1e-6)."""
    d = x_train.shape[1]
    mean = x_train.mean(0) if enabled else x_train.new_zeros(d)
    std = x_train.std(0, unbiased=False).clamp_min(1e-6) if enabled and len(x_train) > 1 else x_train.new_ones(d)
    return mean, std


def build_probe(x_train: torch.Tensor, n_classes: int, point: dict, standardize: bool = True) -> nn.Module:
    """Standardize + a linear layer (hidden_layers=0) or the hear-eval-kit MLP (task_predictions.py:142-175)."""
    d = x_train.shape[1]
    layers: list[nn.Module] = [Standardize(x_train, standardize)]
    hidden_layers = point.get("hidden_layers", 0)
    init = {"xavier_uniform": nn.init.xavier_uniform_, "xavier_normal": nn.init.xavier_normal_}.get(
        point.get("initialization", "xavier_uniform"))
    gain = nn.init.calculate_gain("linear")
    for _ in range(hidden_layers):
        hidden = point["hidden_dim"]
        linear = nn.Linear(d, hidden)
        init(linear.weight, gain=gain)
        layers += [linear, nn.BatchNorm1d(hidden), nn.Dropout(point["dropout"]), nn.ReLU()]
        d, gain = hidden, nn.init.calculate_gain("relu")
    head = nn.Linear(d, n_classes)
    if hidden_layers:
        init(head.weight, gain=gain)
    layers.append(head)
    return nn.Sequential(*layers)


@dataclass
class FitResult:
    model: nn.Module
    valid_score: float
    best_epoch: int
    epochs_run: int
    point: dict
    valid_loss: float = math.nan


def _loss_fn(multilabel: bool):
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits (N, C) of a fitted probe."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x.new_zeros(0)


def arch_lr_factor(step: int, total_steps: int, warmup: float = ARCH_WARMUP) -> float:
    """ARCH's LambdaLR factor at scheduler step `step` (classification_model.py:142-150): linear warm-up from 0 over
    int(0.1 total) steps, then linear decay to 0 at `total_steps`, 0 after."""
    warmup_steps = int(total_steps * warmup)
    if step <= warmup_steps:
        return min(1.0, step / warmup_steps) if warmup_steps else 1.0  # ARCH divides by zero below 10 steps
    return max(0.0, 1.0 - (step - warmup_steps) / (total_steps - warmup_steps))


def batch_mean_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, batch_size: int) -> float:
    """ARCH's validation loss: the mean over batches of `batch_size` of each batch's mean loss (cm.py:211, 225)."""
    loss_fn = _loss_fn(multilabel)
    losses = [loss_fn(logits[i : i + batch_size], y[i : i + batch_size]).item() for i in range(0, len(y), batch_size)]
    return float(np.mean(losses))


def fit_point(x_train, y_train, x_valid, y_valid, n_classes: int, multilabel: bool, point: dict, seed: int,
              standardize: bool = True, protocol: str = "paper", metric: str | None = None) -> FitResult:
    """Fit one probe with plain PyTorch (autograd, torch.optim) and return its selected epoch's weights.

    ``paper``/``hear``: early stopping on the validation score (every `check_every` epochs, `patience` checks),
    the best check's weights; ``hear`` trains in file order (the kit's loader does not shuffle). ``arch``: AdamW with
    ARCH's warm-up/decay schedule, all `max_epochs` epochs, the epoch with the lowest validation loss.
    x_*: (N, D) float32; y_*: (N,) int64 class indices or (N, C) multi-hot float32; `metric`: the validation
    score (`metrics.score`; default accuracy, mAP for multi-label).
    """
    if len(x_train) == 0 or len(x_valid) == 0:
        raise ValueError("a probe needs non-empty training and validation sets")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_probe(x_train, n_classes, point, standardize)
        loss_fn = _loss_fn(multilabel)
        bs, n = point["batch_size"], len(x_train)
        n_batches = math.ceil(n / bs)
        if protocol == "arch":
            opt = torch.optim.AdamW(model.parameters(), lr=point["lr"], weight_decay=ARCH_WEIGHT_DECAY)
            total = point["max_epochs"] * n_batches
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: arch_lr_factor(s, total))
        else:
            opt, sched = torch.optim.Adam(model.parameters(), lr=point["lr"]), None
        best, best_loss, best_state, best_epoch, since, epoch = -float("inf"), float("inf"), None, 0, 0, 0
        for epoch in range(1, point["max_epochs"] + 1):
            model.train()
            order = torch.arange(n) if protocol == "hear" else torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = order[i : i + bs]
                if len(idx) == 1 and point.get("hidden_layers", 0):
                    continue  # BatchNorm cannot train on a batch of one
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
            if sched is not None:
                sched.step()  # ARCH steps its scheduler once more per epoch (cm.py:164)
            if protocol == "arch":
                logits = predict(model, x_valid)
                v_loss = batch_mean_loss(logits, y_valid, multilabel, bs)
                if v_loss < best_loss or best_state is None:
                    best_loss, best, best_state, best_epoch = v_loss, score(logits, y_valid, multilabel, metric), \
                        copy.deepcopy(model.state_dict()), epoch
                continue
            last = epoch == point["max_epochs"]
            if epoch % point["check_every"] and not (last and best_state is None):
                continue
            s = score(predict(model, x_valid), y_valid, multilabel, metric)
            if s > best:
                best, best_state, best_epoch, since = s, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                since += 1
                if since >= point["patience"]:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best, best_epoch, epoch, point, best_loss if protocol == "arch" else math.nan)


def probe_threads(x: torch.Tensor) -> int:
    """Probes on CPU run single-threaded: their steps ((32, 512) x (512, C) for the linear probe) are too small
    to split, and on a loaded 2-core machine two threads made a 20-epoch linear fit 15x slower (3.4 s vs
    0.23 s, 100 examples) and a 2-point MLP grid on 300 files x 6 folds 29x slower (76 s vs 2.6 s)."""
    return 1 if x.device.type == "cpu" else torch.get_num_threads()


def fit_probe(x_train, y_train, x_valid, y_valid, n_classes: int, multilabel: bool, config: ProbeConfig,
              seed: int = 0, metric: str | None = None) -> FitResult:
    """Fit every point of `config` on one split and keep the one with the best validation score (the first on
    ties, as the kit's stable sort)."""
    best = None
    with cpu_threads(probe_threads(x_train)):
        for point in config.points():
            result = fit_point(x_train, y_train, x_valid, y_valid, n_classes, multilabel, point, seed,
                               config.standardize, config.protocol, metric)
            if best is None or result.valid_score > best.valid_score:
                best = result
    return best


# ------------------------------------------------------------------------------ batched linear probes
@dataclass
class LinearJob:
    """One linear probe to fit: indices into the shared feature rows and its seed."""

    train: np.ndarray
    valid: np.ndarray
    seed: int


GROUP_BYTES = 256 << 20  # memory for the z-scored training rows of one group of stacked probes


def fit_linear_many(x: torch.Tensor, y: torch.Tensor, jobs: list[LinearJob], n_classes: int, multilabel: bool,
                    config: ProbeConfig, metric: str | None = None) -> list[FitResult]:
    """Fit one linear probe per job, all at once: the same result as `fit_point` on each job, in one loop.

    The probes are stacked ((M, C, D) weights, nn.Linear's layout); each step gathers every probe's next batch
    ((M, B, D) from its z-scored training rows, computed once), computes the loss gradients in closed form
    (softmax - onehot or sigmoid - y, divided as each loss's mean) and applies Adam (``paper``) or AdamW with ARCH's
    schedule (``arch``) as torch.optim does, element-wise. A probe whose epoch is over sits out with its optimiser
    state untouched; a probe that has stopped early leaves the stack. The initial weights, the batch order and the
    early stopping / selection of each probe are those of `fit_point` with the job's seed.

    Why: the one-probe loop spends its time in Python and autograd overhead on (32, 512) x (512, C) steps. On the
    FSDD digit task (6 folds x 3 seeds, 512-d random-init features, side by side at load ~13 on 2 cores) the 18
    fits took 59.0 s one by one and 17.4 s stacked, with the same 18 test scores and best epochs.
    x: (N, D) float32 features; y: (N,) int64 or (N, C) float32 targets; jobs index their rows. Jobs are fitted
    in groups whose z-scored training rows fit in `GROUP_BYTES`.
    """
    if config.protocol not in ("paper", "arch"):
        raise ValueError(f"fit_linear_many fits linear protocols (paper, arch), not {config.protocol!r}")
    for job in jobs:
        if len(job.train) == 0 or len(job.valid) == 0:
            raise ValueError("a probe needs non-empty training and validation sets")
    per_job = max(len(j.train) for j in jobs) * x.shape[1] * 4
    size = max(1, GROUP_BYTES // max(per_job, 1))
    out: list[FitResult] = []
    # stacked steps are big enough to share between free cores (one-probe steps are not: see probe_threads)
    with cpu_threads(free_cpu_threads() if x.device.type == "cpu" else torch.get_num_threads()), torch.no_grad():
        for i in range(0, len(jobs), size):
            out += _fit_linear_group(x, y, jobs[i : i + size], n_classes, multilabel, config, metric)
    return out


def _fit_linear_group(x, y, jobs, n_classes, multilabel, config, metric) -> list[FitResult]:
    arch = config.protocol == "arch"
    m, d, c, bs = len(jobs), x.shape[1], n_classes, config.batch_size
    beta1, beta2, eps, wd = 0.9, 0.999, 1e-8, (ARCH_WEIGHT_DECAY if arch else 0.0)
    train = [torch.as_tensor(j.train, dtype=torch.int64) for j in jobs]
    valid = [torch.as_tensor(j.valid, dtype=torch.int64) for j in jobs]
    n_train = np.array([len(t) for t in train])
    n_valid = np.array([len(v) for v in valid])
    # z-scored rows per probe, as Standardize computes them, padded: (M, n_max, D) and (M, v_max, D)
    xs = x.new_zeros(m, int(n_train.max()), d)
    xv = x.new_zeros(m, int(n_valid.max()), d)
    yt = y.new_zeros((m, int(n_train.max())) + tuple(y.shape[1:]))
    yv = y.new_zeros((m, int(n_valid.max())) + tuple(y.shape[1:]))
    stats = []
    for j in range(m):
        mean, std = standardize_stats(x[train[j]], config.standardize)
        stats.append((mean, std))
        xs[j, : n_train[j]] = (x[train[j]] - mean) / std
        xv[j, : n_valid[j]] = (x[valid[j]] - mean) / std
        yt[j, : n_train[j]], yv[j, : n_valid[j]] = y[train[j]], y[valid[j]]
    weight, bias = torch.empty(m, c, d), torch.empty(m, 1, c)
    for j, job in enumerate(jobs):  # the initial weights of build_probe under the job's seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            head = nn.Linear(d, c)
        weight[j], bias[j, 0] = head.weight, head.bias
    gens = [torch.Generator().manual_seed(job.seed) for job in jobs]
    n_batches = -(-n_train // bs)
    total_sched = config.max_epochs * n_batches
    state = dict(w=weight, b=bias, mw=torch.zeros_like(weight), vw=torch.zeros_like(weight), mb=torch.zeros_like(bias),
                 vb=torch.zeros_like(bias), xs=xs, yt=yt, xv=xv, yv=yv, bw=weight.clone(), bb=bias.clone())
    live = np.arange(m)  # the probes still training, in stack order
    t_opt, t_sched = np.zeros(m), np.zeros(m)  # optimiser / ARCH scheduler steps per probe
    best_score, best_loss = np.full(m, -np.inf), np.full(m, np.inf)
    best_epoch, since, epochs_run = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    final_w, final_b = [None] * m, [None] * m
    checked = False
    for epoch in range(1, config.max_epochs + 1):
        steps = int(n_batches[live].max())
        pos = torch.zeros(len(live), steps * bs, dtype=torch.int64)
        msk = torch.zeros(len(live), steps * bs)
        for k, j in enumerate(live):
            pos[k, : n_train[j]] = torch.randperm(int(n_train[j]), generator=gens[j])
            msk[k, : n_train[j]] = 1.0
        # rows of the flattened (L * n_max, D) stack: index_select there is 7x faster than xs[rows, p]
        pos += torch.arange(len(live))[:, None] * state["xs"].shape[1]
        xs_flat = state["xs"].view(-1, d)
        yt_flat = state["yt"].view((-1,) + tuple(y.shape[1:]))
        full_steps = int((n_train[live] // bs).min())  # steps where every probe has a full batch
        for s in range(steps):
            active = s < n_batches[live]  # host-known: which probes still have a batch this epoch
            p, mk = pos[:, s * bs : (s + 1) * bs].reshape(-1), msk[:, s * bs : (s + 1) * bs]
            xb = xs_flat.index_select(0, p).view(len(live), -1, d)  # (L, B, D)
            yb = yt_flat.index_select(0, p).view((len(live), -1) + tuple(y.shape[1:]))
            logits = torch.baddbmm(state["b"], xb, state["w"].transpose(1, 2))
            count = mk.sum(1).clamp_min(1.0)[:, None, None]
            if multilabel:
                grad = (torch.sigmoid(logits) - yb) / (count * c)
            else:
                grad = torch.softmax(logits, -1)
                grad.scatter_add_(-1, yb[..., None], -torch.ones_like(grad[..., :1]))
                grad /= count
            if s >= full_steps:
                grad *= mk[..., None]  # padding rows of partial and finished batches
            g_w = torch.bmm(grad.transpose(1, 2), xb)  # (L, C, D)
            g_b = grad.sum(1, keepdim=True)
            t_opt[live] += active
            if arch:
                lr = config.lr * np.array([arch_lr_factor(int(t_sched[j]), int(total_sched[j])) for j in live])
                t_sched[live] += active
            else:
                lr = np.full(len(live), config.lr)
            _adam_step(state["w"], g_w, state["mw"], state["vw"], t_opt[live], lr, active, beta1, beta2, eps, wd)
            _adam_step(state["b"], g_b, state["mb"], state["vb"], t_opt[live], lr, active, beta1, beta2, eps, wd)
        if arch:
            t_sched[live] += 1  # cm.py:164, once per epoch
        epochs_run[live] = epoch
        if not (arch or epoch % config.check_every == 0 or (epoch == config.max_epochs and not checked)):
            continue
        checked = True
        logits = torch.baddbmm(state["b"], state["xv"], state["w"].transpose(1, 2))  # (L, V, C)
        scores = _scores(logits, state["yv"], n_valid[live], multilabel, metric)
        if arch:
            losses = _batch_mean_losses(logits, state["yv"], n_valid[live], multilabel, bs)
            improved = losses < best_loss[live]
            best_loss[live] = np.where(improved, losses, best_loss[live])
            stop = np.zeros(len(live), dtype=bool)
        else:
            improved = scores > best_score[live]
            since[live] = np.where(improved, 0, since[live] + 1)
            stop = since[live] >= config.patience
        best_score[live] = np.where(improved, scores, best_score[live])
        best_epoch[live] = np.where(improved, epoch, best_epoch[live])
        sel = torch.as_tensor(improved)[:, None, None]
        state["bw"], state["bb"] = torch.where(sel, state["w"], state["bw"]), torch.where(sel, state["b"], state["bb"])
        if epoch == config.max_epochs:
            stop[:] = True
        if stop.any():  # stopped probes leave the stack with their best weights
            for k in np.flatnonzero(stop):
                final_w[live[k]], final_b[live[k]] = state["bw"][k].clone(), state["bb"][k, 0].clone()
            keep = torch.as_tensor(np.flatnonzero(~stop))
            state = {key: v[keep] for key, v in state.items()}
            live = live[~stop]
            if len(live) == 0:
                break
    results = []
    for j in range(m):
        model = nn.Sequential(Standardize(x[train[j]], config.standardize), nn.Linear(d, c))
        model[0].mean.copy_(stats[j][0]), model[0].std.copy_(stats[j][1])
        model[1].weight.copy_(final_w[j])
        model[1].bias.copy_(final_b[j])
        model.eval()
        results.append(FitResult(model, float(best_score[j]), int(best_epoch[j]), int(epochs_run[j]),
                                 config.points()[0], float(best_loss[j]) if arch else math.nan))
    return results


def _adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, active, beta1, beta2, eps, weight_decay):
    """torch.optim.Adam / AdamW's single-tensor update (same operations, same float32 scalars), one probe per
    leading index, for `active` probes only. step, lr, active: (M,) numpy arrays (step already counts this update)."""
    if not active.any():
        return
    shape = (-1,) + (1,) * (param.ndim - 1)
    t = np.maximum(step, 1).astype(np.float64)
    # the scalars as torch.optim computes them in Python (float64), then as float32 per probe
    factors = torch.as_tensor(np.stack([1 - lr * weight_decay, np.sqrt(1 - beta2**t), lr / (1 - beta1**t)]),
                              dtype=param.dtype).view((3,) + shape)
    decay, bc2_sqrt, step_size = factors
    if active.all():
        if weight_decay:
            param.mul_(decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
        param.sub_((exp_avg * step_size).div_(denom))
        return
    new_param = param * decay if weight_decay else param
    new_avg = exp_avg.lerp(grad, 1 - beta1)
    new_sq = (exp_avg_sq * beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (new_sq.sqrt() / bc2_sqrt).add_(eps)
    new_param = new_param - (new_avg * step_size).div_(denom)
    a = torch.as_tensor(active).view(shape)
    exp_avg.copy_(torch.where(a, new_avg, exp_avg))
    exp_avg_sq.copy_(torch.where(a, new_sq, exp_avg_sq))
    param.copy_(torch.where(a, new_param, param))


def _scores(logits: torch.Tensor, y: torch.Tensor, counts: np.ndarray, multilabel: bool, metric=None) -> np.ndarray:
    """The task metric per probe on its padded validation rows. logits: (M, V, C); counts: (M,) real rows."""
    if not multilabel and metric in (None, "accuracy"):
        correct = (logits.argmax(-1) == y).double()
        real = torch.arange(logits.shape[1])[None] < torch.as_tensor(counts)[:, None]
        return (torch.where(real, correct, 0.0).sum(1) / torch.as_tensor(counts, dtype=torch.float64)).numpy()
    return np.array([score(logits[j, : int(n)], y[j, : int(n)], multilabel, metric) for j, n in enumerate(counts)])


def _batch_mean_losses(logits, y, counts: np.ndarray, multilabel: bool, batch_size: int) -> np.ndarray:
    """`batch_mean_loss` per probe on padded rows: logits (M, V, C), counts (M,) real rows."""
    if multilabel:
        per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1)
    else:
        per = nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (M, V)
    return np.array([float(np.mean([ch.mean().item() for ch in per[j, : int(n)].split(batch_size)]))
                     for j, n in enumerate(counts)])
