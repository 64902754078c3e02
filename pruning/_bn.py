from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from pruning._train import autocast, resolve_precision

# the public BatchNorm classes (timm's BatchNormAct2d and the like subclass them)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def recalibrate_bn(model: nn.Module, batches: Iterable, *, precision: str = "auto") -> int:
    """Adaptive BatchNorm: reset running statistics and re-estimate them on training batches.

    The batches (tensors, or (x, y) pairs) are run in train mode under ``no_grad`` with a
    cumulative average (EagleEye's evaluation of a pruned candidate). Models without BatchNorm pass
    through untouched. ``precision`` as in training (:func:`pruning._train.resolve_precision`): the
    statistics are those of the activations the candidate will be trained and evaluated with.
    Returns the number of batches used (0 when there is no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all calibration batches
    model.train()
    used = 0
    device = next(model.parameters()).device
    mode = resolve_precision(precision, model, device)
    try:
        with torch.no_grad(), autocast(device, mode):
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
