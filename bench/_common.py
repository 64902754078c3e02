"""What the benchmarks share: device description and median/spread formatting."""
from __future__ import annotations

import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name and its bf16/VNNI flags, from /proc/cpuinfo (every figure names its CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512_vnni") if f" {f}" in text]
    return f"{name} ({', '.join(flags) or 'no bf16/VNNI flags'})"


def spread(values: list[float]) -> str:
    """'median (min-max, n=N)'."""
    med = statistics.median(values)
    fmt = (lambda v: f"{v:,.0f}") if med >= 100 else (lambda v: f"{v:.3g}")
    return f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))}, n={len(values)})"


def hypervolume(points: list[tuple[float, float]], ref_size: float) -> float:
    """Area dominated by (size, accuracy) points, sizes minimized, accuracy maximized, from (ref_size, 0)."""
    front, best = [], -1.0
    for size, acc in sorted(p for p in points if p[0] <= ref_size):
        if acc > best:
            front.append((size, acc))
            best = acc
    return sum(((front[i + 1][0] if i + 1 < len(front) else ref_size) - s) * a for i, (s, a) in enumerate(front))


def header(title: str, device: torch.device) -> None:
    print(f"# {title}\n# command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
          f"# device: {device_name(device)}; torch {torch.__version__}")


def burn() -> None:
    """A busy process for a synthetic load: one thread of matrix products, until terminated."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while True:
        a = (a @ a).tanh()
