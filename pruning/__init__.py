"""The pruning engine: units and plans over coupled channel groups, structural surgery with
Torch-Pruning, adaptive BatchNorm, the training loop, measurement, data and safe checkpoints."""
from __future__ import annotations

from pruning._apply import IMPORTANCES, PruningRecord, apply_plan
from pruning._bn import recalibrate_bn
from pruning._checkpoint import Checkpoint, load_checkpoint, load_pruned, save_pruned
from pruning._data import DATASETS, Dataset, load_dataset, train_batches
from pruning._errors import CheckpointError, DatasetError, PlanError, PruningError, TrainingDiverged
from pruning._measure import Measurement, measure
from pruning._train import TrainConfig, TrainResult, evaluate, finetune, train
from pruning._units import (GRANULARITIES, Unit, channels_to_keep, expand_plan, plan_keys,
                            prunable_units, validate_plan)

__all__ = [
    "DATASETS", "GRANULARITIES", "IMPORTANCES",
    "Checkpoint", "CheckpointError", "Dataset", "DatasetError", "Measurement", "PlanError",
    "PruningError", "PruningRecord", "TrainConfig", "TrainResult", "TrainingDiverged", "Unit",
    "apply_plan", "channels_to_keep", "evaluate", "expand_plan", "finetune", "load_checkpoint",
    "load_dataset", "load_pruned", "measure", "plan_keys", "prunable_units", "recalibrate_bn",
    "save_pruned", "train", "train_batches", "validate_plan",
]
