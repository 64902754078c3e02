"""Does ``torch.compile`` pay for itself within a trial on this CPU? Per registry model, the bare
training step (forward + backward + SGD, one resident batch, the precision ``auto`` picks, with
channels_last where it picks bf16) eager against compiled: the compile (the first compiled step,
from a cold cache in a temporary folder), then interleaved repeats of both. Break-even is the compile
time over the time a compiled step saves; every trial prunes a model of new shapes, so it compiles
again, and a trial has the ``cpu`` budget's ``finetune_steps`` (plus evaluation and BN
recalibration, which would compile graphs of their own and are left out: they only add to the
compile side).

    python bench/compile_cost.py [--models lenet5 vgg16] [--steps 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _common
import torch
import torch.nn.functional as F

from models import create_model, list_models
from pruning import autocast, resolve_precision
from search.config import ConfigError, load_config

BATCH = {"lenet5": 128}
BIG_BATCH = 32


def _step(model, opt, x, y, precision: str) -> None:
    with autocast(x.device, precision):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _timed(model, opt, x, y, precision: str, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, x, y, precision)
    return (time.perf_counter() - start) / steps


def trial_steps(name: str) -> int:
    """A trial's fine-tune steps under the model's ``cpu`` budget (``default`` where it has none)."""
    try:
        cfg = load_config(name, overrides={"budget": "cpu"})
    except ConfigError:
        cfg = load_config(name)
    return cfg.finetune_recipe(0).steps


def bench_model(name: str, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    eager = create_model(name, num_classes=10, in_channels=1)
    precision = resolve_precision("auto", eager, torch.device("cpu"))
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    eager = eager.to(memory_format=fmt).train()
    other = create_model(name, num_classes=10, in_channels=1).to(memory_format=fmt).train()
    other.load_state_dict(eager.state_dict())
    batch = BATCH.get(name, BIG_BATCH)
    x = torch.randn(batch, 1, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.01, momentum=0.9)
    opt_c = torch.optim.SGD(other.parameters(), lr=0.01, momentum=0.9)
    compiled = torch.compile(other)
    _step(eager, opt_e, x, y, precision)  # eager's own warm-up
    start = time.perf_counter()
    _step(compiled, opt_c, x, y, precision)  # the compile: graph capture, inductor, C++ build
    compile_s = time.perf_counter() - start
    _step(compiled, opt_c, x, y, precision)
    runs = {"eager": [], "compiled": []}
    for _ in range(repeats):
        runs["eager"].append(_timed(eager, opt_e, x, y, precision, steps))
        runs["compiled"].append(_timed(compiled, opt_c, x, y, precision, steps))
    return {"precision": precision, "batch": batch, "compile_s": compile_s, **runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat (default 5)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold cache, as a trial's new shapes meet it
        _common.header("torch.compile against eager, training step, and its break-even in steps",
                       torch.device("cpu"))
        print(f"# {args.steps} timed steps per repeat, {args.repeats} interleaved repeats, 32x32x1 inputs; "
              "break-even = compile s / (eager - compiled) s per step")
        print(f"{'model':<12} {'prec':>4} {'batch':>5} {'compile s':>9} {'eager s/step':>24} {'compiled s/step':>24} "
              f"{'speed-up':>8} {'break-even':>10} {'trial':>5}  load")
        for name in args.models:
            r = bench_model(name, args.steps, args.repeats)
            eager, comp = statistics.median(r["eager"]), statistics.median(r["compiled"])
            saved = eager - comp
            even = f"{r['compile_s'] / saved:,.0f}" if saved > 0 else "never"
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"{name:<12} {r['precision']:>4} {r['batch']:>5} {r['compile_s']:>9.1f} {_common.spread(r['eager']):>24} "
                  f"{_common.spread(r['compiled']):>24} {eager / comp:>7.2f}x {even:>10} {trial_steps(name):>5}  "
                  f"{load}", flush=True)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
