"""Synth throughput: Triton kernels vs the torch reference, torch.compile(reference), torchsynth's Voice
and SynthAX (jax.jit), batch 768 and 4096, 16 kHz, 1 s. Run: `pytest bench/test_synth.py --benchmark`.

Every timed call ends with a device synchronisation (JAX: `block_until_ready`). Each case records in
`extra_info`: sounds/s, x realtime (seconds of audio per second), GB/s of float32 audio written and, on
GPU, that as a fraction of the device's measured copy bandwidth (read + write of a 1 GiB copy). The
helpers here are shared with `bench/gpu_check.py`. CPU runs skip the GPU-only cases with a reason.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

from doppel_torch import get_synth

SAMPLE_RATE, CONTROL_RATE, DURATION = 16000, 480, 1.0
SYNTHS = ("voice", "voicefm", "parametric")
IMPLS = ("triton", "triton_fast", "torch", "torch_compile", "torchsynth", "synthax")
BATCHES = (768, 4096)
SYNTHAX_CLASS = {"voice": "Voice", "voicefm": "VoiceExpanded", "parametric": "ParametricSynth"}


def new_result_path(stem: str) -> Path:
    """bench/results/<stem>.json, or <stem>-2.json, -3, ... when that exists: a run never overwrites a committed
    result of the same day."""
    folder = Path(__file__).resolve().parent / "results"
    folder.mkdir(exist_ok=True)
    path, k = folder / f"{stem}.json", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}.json", k + 1
    return path


def cpu_model() -> str:
    """The CPU's model name and its widest float64 vectors (/proc/cpuinfo), for the benchmarks' result files: a
    virtual machine may name only the vendor ("AMD EPYC"), and the cpu backend's speed differs 2-4x between AVX-512
    and AVX2 machines of that one name."""
    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    simd = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse2", "SSE2"))
                 if flag in flags), "NEON" if "asimd" in info.get("Features", "") else None)
    family = f"family {info['cpu family']} model {info['model']}" if "cpu family" in info and "model" in info else None
    details = ", ".join(x for x in (family, simd) if x)
    name = info.get("model name") or platform.processor() or platform.machine()
    return f"{name} ({details})" if details else name


class Unavailable(Exception):
    """A baseline that cannot run here (missing package, no GPU); the message says why."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(impl: str, name: str, batch: int, device: torch.device):
    """A zero-argument callable rendering `batch` sounds of synth `name` and waiting for them."""
    if impl in ("triton", "triton_fast", "torch", "torch_compile"):
        backend = "triton" if impl.startswith("triton") else "torch"
        if backend == "triton" and device.type != "cuda":
            raise Unavailable("GPU-only case: the Triton backend needs a CUDA device")
        synth = get_synth(name, sample_rate=SAMPLE_RATE, control_rate=CONTROL_RATE, duration=DURATION, backend=backend)
        theta = synth.random_params(batch, seed=0, device=device)
        render = torch.compile(synth) if impl == "torch_compile" else synth
        if impl == "triton_fast":  # float32 phase: the precision option's speed (see doppel_torch.backends.triton)
            render = get_synth(name, sample_rate=SAMPLE_RATE, control_rate=CONTROL_RATE, duration=DURATION,
                               backend="triton", phase_dtype=torch.float32)

        def run():
            with torch.no_grad():
                audio = render(theta, validate=False)
            synchronize(device)
            return audio

        return run
    if impl == "torchsynth":
        if name != "voice":
            raise Unavailable("torchsynth has only Voice")
        try:
            import pytorch_lightning.core.module as lightning_module

            sys.modules.setdefault("pytorch_lightning.core.lightning", lightning_module)
            from torchsynth.config import SynthConfig
            from torchsynth.synth import Voice
        except ImportError as err:
            raise Unavailable(f"torchsynth cannot be imported: {err}") from err
        config = SynthConfig(batch_size=batch, sample_rate=SAMPLE_RATE, buffer_size_seconds=DURATION,
                             control_rate=CONTROL_RATE, reproducible=False)
        voice = Voice(config).to(device)

        def run():
            with torch.no_grad():
                audio = voice()[0]
            synchronize(device)
            return audio

        return run
    if impl == "synthax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU to torch
        try:
            import jax
            import synthax.synth
            from synthax.config import SynthConfig
        except ImportError as err:
            raise Unavailable(f"synthax/jax cannot be imported: {err}") from err
        jax_device = [d for d in jax.devices() if (d.platform == "gpu") == (device.type == "cuda")]
        if not jax_device:
            raise Unavailable(f"JAX sees no {device.type} device (devices: {jax.devices()})")
        config = SynthConfig(batch_size=batch, sample_rate=SAMPLE_RATE, buffer_size_seconds=DURATION,
                             control_rate=CONTROL_RATE)
        cls = getattr(synthax.synth, SYNTHAX_CLASS[name])
        kwargs = dict(sine=2, square_saw=2, fm_sine=1, fm_square_saw=1) if name == "parametric" else {}
        model = cls(config=config, **kwargs)
        with jax.default_device(jax_device[0]):
            params = model.init(jax.random.PRNGKey(0))
        apply = jax.jit(model.apply)

        def run():
            return apply(params).block_until_ready()

        return run
    raise ValueError(f"unknown implementation {impl!r}")


def time_case(run, device: torch.device, warmup: int = 2, repeats: int = 10) -> list[float]:
    """Seconds per call, after warm-up (compilation happens there); `run` synchronises itself."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Measured device copy bandwidth in GB/s, counting bytes read plus written."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n_bytes / statistics.median(times) / 1e9


def throughput(seconds: float, batch: int, copy_gbps: float | None) -> dict[str, float]:
    audio_bytes = batch * int(SAMPLE_RATE * DURATION) * 4
    info = {
        "sounds_per_s": batch / seconds,
        "x_realtime": batch * DURATION / seconds,
        "audio_gbps": audio_bytes / seconds / 1e9,
    }
    if copy_gbps:
        info["fraction_of_copy_bw"] = info["audio_gbps"] / copy_gbps
    return info


@pytest.fixture(scope="session")
def device_copy_gbps(bench_device):
    return copy_bandwidth(bench_device) if bench_device.type == "cuda" else None


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", SYNTHS)
@pytest.mark.parametrize("impl", IMPLS)
def test_synth_throughput(benchmark, bench_device, device_copy_gbps, impl, name, batch):
    if bench_device.type != "cuda" and batch > 768:
        pytest.skip("GPU-only case: batch 4096 of 1 s sounds is a GPU workload (CPU runs batch 768)")
    try:
        run = make_case(impl, name, batch, bench_device)
    except Unavailable as why:
        pytest.skip(str(why))
    benchmark.group = f"{name} batch {batch}"
    benchmark.pedantic(run, rounds=5 if bench_device.type == "cuda" else 2, warmup_rounds=2, iterations=1)
    info = throughput(benchmark.stats.stats.median, batch, device_copy_gbps)
    benchmark.extra_info.update({k: round(v, 4) for k, v in info.items()})
