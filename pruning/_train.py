"""The one training loop: baseline training, fine-tuning and recovery all run through ``train``."""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pruning._data import Dataset, eval_batches, train_batches
from pruning._errors import TrainingDiverged


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (the defaults are a sound SGD recipe for small CNNs)."""

    epochs: float = 1.0            # passes over the training split (fractions allowed)
    steps: int | None = None       # if set, the run length in optimizer steps instead of epochs
    batch_size: int = 128
    lr: float = 0.05               # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4     # not applied to BatchNorm weights or biases
    label_smoothing: float = 0.1
    schedule: str = "onecycle"     # onecycle (warm-up then cosine), cosine, or constant
    warmup: float = 0.15           # fraction of the run spent warming up (onecycle)
    kd_weight: float = 0.0         # weight of the distillation loss when a teacher is given
    kd_temperature: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"schedule {self.schedule!r} is not onecycle, cosine or constant")
        if self.steps is None and self.epochs <= 0 or self.steps is not None and self.steps < 1:
            raise ValueError("a training run needs epochs > 0 or steps >= 1")

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        per_epoch = max(1, n_train // self.batch_size)
        return max(1, math.ceil(self.epochs * per_epoch))

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    images_per_s: float
    final_loss: float


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
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


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to ``device`` (``channels_last`` on CUDA)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, teacher: nn.Module | None = None,
          progress: bool = True, desc: str = "train") -> TrainResult:
    """Train ``model`` in place on ``data``'s training split (on the data's device).

    A ``teacher`` adds knowledge distillation with weight ``cfg.kd_weight``. Raises
    :class:`TrainingDiverged` when the loss becomes NaN or infinite.
    """
    device = data.device
    model = prepare(model, device)
    if teacher is not None:
        teacher = prepare(teacher, device).eval()
    total = cfg.total_steps(data.train_x.shape[0])
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, total))
    generator = torch.Generator().manual_seed(cfg.seed)
    epochs = (train_batches(data, cfg.batch_size, generator) for _ in itertools.count())
    batches = itertools.islice(itertools.chain.from_iterable(epochs), total)
    model.train()
    running = torch.zeros((), device=device)
    per_epoch = max(1, data.train_x.shape[0] // cfg.batch_size)
    epochs_label = f" epoch 1/{math.ceil(total / per_epoch)}" if total > per_epoch else ""
    bar = tqdm(total=total, desc=desc + epochs_label, unit="step", disable=not progress, leave=False, mininterval=0.5)
    start, loss_value, seen = time.perf_counter(), float("nan"), 0
    for step, (x, y) in enumerate(batches, 1):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None and cfg.kd_weight > 0:
                loss = _distill(loss, logits, teacher, x, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.detach()
        seen += x.shape[0]
        if step % 50 == 0 or step == total:  # one host sync every 50 steps, not every step
            loss_value = running.item() / (50 if step % 50 == 0 else step % 50)
            running.zero_()
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingDiverged(f"loss became {loss_value} at step {step} of {desc}")
            bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
        bar.update(1)
        if step % per_epoch == 0 and step < total:
            bar.set_description(f"{desc} epoch {step // per_epoch + 1}/{math.ceil(total / per_epoch)}")
    bar.close()
    seconds = time.perf_counter() - start
    return TrainResult(steps=total, seconds=seconds, images_per_s=seen / max(seconds, 1e-9), final_loss=loss_value)


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

    Give ``steps`` or ``epochs``; ``overrides`` are other :class:`TrainConfig` fields.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("finetune needs exactly one of steps and epochs")
    cfg = replace(TrainConfig(), lr=lr, kd_weight=kd_weight, steps=steps,
                  epochs=epochs if epochs is not None else 1.0, **overrides)
    return train(model, data, cfg, teacher=teacher, progress=progress, desc="finetune")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, split: str = "val", *, batch_size: int = 1000) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on a split, in eval mode."""
    device = data.device
    model = prepare(model, device)
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for x, y in eval_batches(data, split, batch_size):
        with autocast(device):
            correct += (model(x).argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return float(correct) / max(1, total)
