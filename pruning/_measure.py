from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn


@dataclass(frozen=True)
class Measurement:
    """Exact size of a model, and optionally its latency.

    Attributes:
        params: number of parameters.
        macs: multiply-accumulates of one forward pass of one image (MACs, not FLOPs).
        size_mb: bytes of the saved fp32 weights (parameters and floating buffers) / 10^6.
        latency_ms: batch size -> median milliseconds per forward pass, when measured.
    """

    params: int
    macs: int
    size_mb: float
    latency_ms: dict[int, float] | None = None


def size_mb(model: nn.Module) -> float:
    """MB (10^6 bytes) of the fp32 state dict: parameters and floating-point buffers."""
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point()) / 1e6


def measure(model: nn.Module, example_input: torch.Tensor, *, latency: bool = False,
            batch_sizes: tuple[int, ...] = (1, 64), repeats: int = 20, warmup: int = 5) -> Measurement:
    """Parameters, MACs (per image) and size in MB; latency on request, on the model's device."""
    one = example_input[:1]
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, one)
    timings = _latency(model, one, batch_sizes, repeats, warmup) if latency else None
    model.train(was_training)
    return Measurement(params=int(params), macs=int(macs), size_mb=size_mb(model), latency_ms=timings)


@torch.no_grad()
def _latency(model: nn.Module, one: torch.Tensor, batch_sizes, repeats: int, warmup: int) -> dict[int, float]:
    device = next(model.parameters()).device
    result = {}
    for bs in batch_sizes:
        x = one.to(device).expand(bs, *one.shape[1:]).contiguous()

        def once() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) * 1000

        result[bs] = timed_median(once, warmup, repeats)
    return result


def timed_median(once, warmup: int, repeats: int, budget_s: float = 2.0) -> float:
    """Median of ``repeats`` calls of ``once()`` (milliseconds) after ``warmup`` unmeasured ones; a
    slow call gets fewer of both, so one measurement stays within about ``budget_s`` (at least 5 timed)."""
    first = once()
    n = max(5, min(repeats, int(budget_s * 1000 / max(first, 1e-3))))
    for _ in range(min(warmup, n) - 1):
        once()
    return statistics.median(once() for _ in range(n))


@dataclass(frozen=True)
class SpeedUp:
    """How many times faster a candidate runs than a baseline: the median and the range (min-max) of
    the per-repeat ratios baseline ms / candidate ms, over ``repeats`` interleaved repeats."""

    median: float
    low: float
    high: float
    repeats: int

    def within_noise(self) -> bool:
        """True when the range includes 1: no speed-up (or slow-down) is shown by the figures."""
        return self.low <= 1.0 <= self.high


def interleaved_speedup(baseline: Callable[[], float], candidate: Callable[[], float], *, repeats: int = 7,
                        runs: int = 50, budget_s: float = 1.0) -> SpeedUp:
    """Time ``baseline()`` and ``candidate()`` (each returns the milliseconds of one call) in
    alternating blocks, A B, B A, A B, ..., so a neighbour's load hits both alike; each repeat's ratio
    is the baseline block's median over the candidate block's. A block has ``runs`` calls, fewer for
    a slow model (about ``budget_s`` seconds per block, at least 3)."""
    baseline(), candidate()  # warm-up
    slowest = max(baseline(), candidate())
    n = max(3, min(runs, int(budget_s * 1000 / max(slowest, 1e-3))))
    ratios = []
    for i in range(repeats):
        order = (baseline, candidate) if i % 2 == 0 else (candidate, baseline)
        first, second = (statistics.median(f() for _ in range(n)) for f in order)
        a, b = (first, second) if i % 2 == 0 else (second, first)
        ratios.append(a / max(b, 1e-9))
    return SpeedUp(median=statistics.median(ratios), low=min(ratios), high=max(ratios), repeats=repeats)
