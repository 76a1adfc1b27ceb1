"""Log-mel frontend: torch.stft path vs matmul (windowed DFT basis) path, batch 100 and 2 x 768, float32.
Run: `pytest bench/test_frontend.py --benchmark [--bench-device cpu|cuda]`. Every timed call synchronises.
`LogMelFrontend(method=...)` defaults to "stft"; these numbers decide which path a device should use.
"""

from __future__ import annotations

import pytest
import torch

from doppel_torch.frontend import LogMelFrontend


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("batch", [100, 1536])
@pytest.mark.parametrize("method", ["stft", "matmul"])
def test_log_mel(benchmark, method, batch, bench_device):
    if batch > 100 and bench_device.type != "cuda":
        pytest.skip("batch 2 x 768 is a GPU case (on a 2-core CPU one round takes seconds)")
    frontend = LogMelFrontend(method=method).to(bench_device)
    audio = torch.randn(batch, 16000, device=bench_device) * 0.3

    def run():
        with torch.no_grad():
            out = frontend(audio)
        synchronize(bench_device)
        return out

    run()
    out = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 1, 96, 64)
    benchmark.extra_info.update(
        device=str(bench_device),
        sounds_per_s=batch / benchmark.stats.stats.median,
        threads=torch.get_num_threads(),
    )
