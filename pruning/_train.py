"""The one training loop: baseline training, fine-tuning and recovery all run through ``train``."""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pruning.data import Dataset, eval_batches, train_batches
from pruning._errors import TrainingDiverged
from pruning._typed import bounds, check_fields

SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
# auto picks bf16 autocast + channels_last on a bf16-capable CPU only for models of at least this many
# parameters (bench/throughput.py, docs/measurements.md): VGG16 (15 M) and ResNet50 (24 M) were measured faster by the
# quiet-machine probe; DenseNet121 (7 M) measured 2.17x; MobileNetV2 (2.2 M)
# measured no faster (1.03x, inside the noise) and LeNet5 (0.06 M) keeps its fp32 figures.
# A study resolves it once, on the model it prunes, so all its candidates train alike.
BF16_MIN_PARAMS = 5_000_000
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run: the baseline, each candidate's fine-tune and the recovery
    of front points all use this record (the defaults are a sound SGD recipe for small CNNs)."""

    epochs: float = field(default=1.0, metadata=bounds(above=0, high=10_000))  # passes over the training split
    steps: int | None = field(default=None, metadata=bounds(low=1, high=10_000_000))  # run length in optimizer steps instead of epochs
    min_steps: int = field(default=0, metadata=bounds(low=0, high=10_000_000))  # floor whatever the dataset size
    batch_size: int = field(default=128, metadata=bounds(low=1, high=65_536))
    lr: float = field(default=0.05, metadata=bounds(above=0, high=10))  # peak learning rate
    momentum: float = field(default=0.9, metadata=bounds(low=0, below=1))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=bounds(low=0, high=1))  # not on BatchNorm weights or biases
    label_smoothing: float = field(default=0.1, metadata=bounds(low=0, below=1))
    schedule: str = field(default="onecycle", metadata=bounds(choices=SCHEDULES))  # warm-up then cosine, cosine, constant
    warmup: float = field(default=0.15, metadata=bounds(low=0, below=1))  # fraction of the run spent warming up
    kd_weight: float = field(default=0.0, metadata=bounds(low=0, high=1))  # distillation weight when a teacher is given
    kd_temperature: float = field(default=4.0, metadata=bounds(above=0, high=100))
    seed: int = field(default=0, metadata=bounds(low=0, high=2**31 - 1))
    precision: str = field(default="auto", metadata=bounds(choices=PRECISIONS))  # see resolve_precision

    def __post_init__(self) -> None:
        check_fields(self, "train")

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the run on ``n_train`` training images (``steps``, or ``epochs`` worth
        of full batches), never fewer than ``min_steps``."""
        if self.steps is not None:
            return max(self.steps, self.min_steps)
        return max(self.min_steps, math.ceil(self.epochs * steps_per_epoch(n_train, self.batch_size)))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, n_train // batch_size)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    images_per_s: float
    final_loss: float


@dataclass
class TrainState:
    """Where a run stands after ``step`` optimizer steps: enough to continue it exactly (the model's
    weights travel separately). Plain tensors and values, so it is saved with ``torch.save``."""

    step: int
    optimizer: dict
    generator: torch.Tensor       # the data order / augmentation generator
    rng: torch.Tensor             # the global CPU generator (dropout)
    cuda_rng: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainHooks:
    """Optional stops inside a run.

    Attributes:
        at_steps: steps after which ``on_step(step)`` is called (e.g. the rungs of successive
            halving); raising from it ends the run there.
        on_epoch: called with the :class:`TrainState` after every full epoch (resumable baselines).
        resume: continue a run from this state instead of starting it.
    """

    at_steps: tuple[int, ...] = ()
    on_step: Callable[[int], None] | None = None
    on_epoch: Callable[[TrainState], None] | None = None
    resume: TrainState | None = None


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The schedule's multiplier of ``cfg.lr`` at ``step`` of ``total``."""
    progress = step / max(1, total)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "onecycle" and progress < cfg.warmup:
        return (progress / cfg.warmup) if cfg.warmup > 0 else 1.0
    start = cfg.warmup if cfg.schedule == "onecycle" else 0.0
    return 0.5 * (1 + math.cos(math.pi * (progress - start) / max(1e-9, 1 - start)))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_precision(precision: str, model: nn.Module | None, device: torch.device) -> str:
    """``fp32`` or ``bf16`` (autocast + ``channels_last``) for a run of ``model`` on ``device``.

    ``auto``: bf16 on CUDA; on a CPU with native bf16, bf16 for models of at least
    :data:`BF16_MIN_PARAMS` parameters (where it measured faster), fp32 elsewhere.
    """
    return precision_for(precision, None if model is None else sum(p.numel() for p in model.parameters()), device)


def precision_for(precision: str, params: int | None, device: torch.device) -> str:
    """:func:`resolve_precision` for a model of ``params`` parameters (None: unknown, fp32 on a CPU): a
    study resolves it once, on its unpruned baseline, and scores every model in it alike."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type != "cpu" or params is None or not cpu_has_bf16():
        return "fp32"
    return "bf16" if params >= BF16_MIN_PARAMS else "fp32"


def autocast(device: torch.device, mode: str | None = None):
    """bf16 autocast when ``mode`` (a resolved precision) is bf16; None: bf16 on CUDA only."""
    if (mode or ("bf16" if device.type == "cuda" else "fp32")) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare(model: nn.Module, device: torch.device, mode: str | None = None) -> nn.Module:
    """Move a model to ``device``, ``channels_last`` when ``mode`` is bf16 (None: on CUDA only)."""
    model = model.to(device)
    if (mode or ("bf16" if device.type == "cuda" else "fp32")) == "bf16":
        return model.to(memory_format=torch.channels_last)
    return model


def _state(step: int, opt: torch.optim.Optimizer, generator: torch.Generator, device: torch.device) -> TrainState:
    return TrainState(step=step, optimizer=opt.state_dict(), generator=generator.get_state(),
                      rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _restore(state: TrainState, opt: torch.optim.Optimizer, generator: torch.Generator, cfg: TrainConfig,
             device: torch.device) -> None:
    opt.load_state_dict(state.optimizer)
    for group in opt.param_groups:  # the schedule sets the rate from the step; start from the recipe's
        group["lr"] = group["initial_lr"] = cfg.lr
    generator.set_state(state.generator)
    torch.set_rng_state(state.rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, teacher: nn.Module | None = None,
          progress: bool = True, desc: str = "train", hooks: TrainHooks = TrainHooks()) -> TrainResult:
    """Train ``model`` in place on ``data``'s training split (on the data's device).

    The learning-rate schedule spans the whole run, so a run cut short by a hook is the prefix of
    the full run, and a run that goes on is the very run it would have been without hooks. Random
    draws (batch order, augmentation, dropout) come from ``cfg.seed`` alone, in a forked generator:
    the run is the same whatever ran before it. A ``teacher`` adds knowledge distillation with
    weight ``cfg.kd_weight``. Raises :class:`TrainingDiverged` when the loss becomes NaN or infinite.
    """
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _train(model, data, cfg, teacher=teacher, progress=progress, desc=desc, hooks=hooks)


def _train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, teacher: nn.Module | None, progress: bool,
           desc: str, hooks: TrainHooks) -> TrainResult:
    device = data.device
    mode = resolve_precision(cfg.precision, model, device)
    model = prepare(model, device, mode)
    if teacher is not None:
        teacher = prepare(teacher, device, mode).eval()
    n_train = data.count("train")
    total, per_epoch = cfg.total_steps(n_train), steps_per_epoch(n_train, cfg.batch_size)
    opt = _optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    first = 0
    if hooks.resume is not None:
        _restore(hooks.resume, opt, generator, cfg, device)
        first = hooks.resume.step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s + first, total))
    epochs = (train_batches(data, cfg.batch_size, generator) for _ in itertools.count())
    batches = itertools.islice(itertools.chain.from_iterable(epochs), total - first)
    stops = set(hooks.at_steps)
    model.train()
    running = torch.zeros((), device=device)
    bar = tqdm(total=total, initial=first, desc=_label(desc, first + 1, total, per_epoch), unit="step",
               disable=not progress, leave=False, mininterval=0.5)
    start, loss_value, seen, since = time.perf_counter(), float("nan"), 0, 0
    try:
        for step, (x, y) in enumerate(batches, first + 1):
            running += _step(model, teacher, opt, x, y, cfg, device, mode)
            sched.step()
            seen, since = seen + x.shape[0], since + 1
            if step % 50 == 0 or step == total or step in stops:  # one host sync every 50 steps, not every step
                loss_value, since = running.item() / since, 0
                running.zero_()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(f"loss became {loss_value} at step {step} of {desc}")
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
            bar.update(1)
            if step % per_epoch == 0 and step < total:
                bar.set_description(_label(desc, step + 1, total, per_epoch))
                if hooks.on_epoch is not None:
                    hooks.on_epoch(_state(step, opt, generator, device))
            if step in stops and step < total and hooks.on_step is not None:
                hooks.on_step(step)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return TrainResult(steps=total, seconds=seconds, images_per_s=seen / max(seconds, 1e-9), final_loss=loss_value)


def _label(desc: str, step: int, total: int, per_epoch: int) -> str:
    if total <= per_epoch:
        return desc
    return f"{desc} epoch {min(math.ceil(total / per_epoch), (step - 1) // per_epoch + 1)}/{math.ceil(total / per_epoch)}"


def _step(model: nn.Module, teacher: nn.Module | None, opt: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor, cfg: TrainConfig, device: torch.device, mode: str) -> torch.Tensor:
    if mode == "bf16":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, mode):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if teacher is not None and cfg.kd_weight > 0:
            loss = _distill(loss, logits, teacher, x, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _distill(loss: torch.Tensor, logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor,
             cfg: TrainConfig) -> torch.Tensor:
    with torch.no_grad():
        target = teacher(x)
    t = cfg.kd_temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(target.float() / t, dim=1),
                  reduction="batchmean") * t * t
    return (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd


def finetune(model: nn.Module, data: Dataset, *, steps: int | None = None, epochs: float | None = None,
             lr: float = 0.01, teacher: nn.Module | None = None, kd_weight: float = 0.0,
             progress: bool = False, **overrides) -> TrainResult:
    """Fine-tune a pruned model in place: :func:`train` with a short run and a small learning rate.

    A convenience for library users; give ``steps`` or ``epochs``; ``overrides`` are other
    :class:`TrainConfig` fields.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("finetune needs exactly one of steps and epochs")
    cfg = replace(TrainConfig(), lr=lr, kd_weight=kd_weight, steps=steps,
                  epochs=epochs if epochs is not None else 1.0, **overrides)
    return train(model, data, cfg, teacher=teacher, progress=progress, desc="finetune")


# Images per evaluation batch. On a CPU a large batch's activations leave the caches: 64 images a batch
# scored MobileNetV2 6.2x, DenseNet121 3.6x, LeNet5 2.0x, ResNet50 1.9x and VGG16 1.3x faster than 1,000
# did, within 16 % of the best size of every registry model (bench/eval_batch.py, AMD EPYC, 2 threads;
# docs/measurements.md). An accelerator keeps the large batch (unmeasured there).
CPU_EVAL_BATCH = 64
EVAL_BATCH = 1000


def eval_batch_size(device: torch.device) -> int:
    """The evaluation batch for ``device``: :data:`CPU_EVAL_BATCH` on a CPU, :data:`EVAL_BATCH` elsewhere."""
    return CPU_EVAL_BATCH if device.type == "cpu" else EVAL_BATCH


@torch.no_grad()
def correct(model: nn.Module, data: Dataset, split: str = "val", *, batch_size: int | None = None,
            precision: str = "auto") -> torch.Tensor:
    """Whether ``model`` classifies each image of a split right (a bool tensor on the CPU, in the
    split's fixed order, so two models' vectors pair image by image), in eval mode, under
    ``precision`` (see :func:`resolve_precision`); ``batch_size`` None: :func:`eval_batch_size`."""
    device = data.device
    batch_size = batch_size or eval_batch_size(device)
    mode = resolve_precision(precision, model, device)
    model = prepare(model, device, mode)
    was_training = model.training
    model.eval()
    hits = []
    for x, y in eval_batches(data, split, batch_size):
        with autocast(device, mode):
            hits.append((model(x).argmax(1) == y).cpu())
    model.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, data: Dataset, split: str = "val", *, batch_size: int | None = None,
             precision: str = "auto") -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on a split, in eval mode, under
    ``precision`` (see :func:`resolve_precision`)."""
    hits = correct(model, data, split, batch_size=batch_size, precision=precision)
    return float(hits.sum()) / max(1, hits.numel())
