"""The pruning engine: units and plans over coupled channel groups, structural surgery with
Torch-Pruning, adaptive BatchNorm, the training loop, measurement, data and safe checkpoints."""
from __future__ import annotations

from pruning._apply import IMPORTANCES, PruningRecord, apply_plan, global_ranking_plans, prunable_safely
from pruning._bn import recalibrate_bn
from pruning._checkpoint import (Checkpoint, CheckpointMeta, Reference, load_checkpoint, load_pruned, read_meta,
                                 save_pruned, with_metrics)
from pruning._data import (AUGMENTATIONS, DATASETS, Dataset, ImageSpec, Preprocessing, image_spec_of, load_dataset,
                           train_batches)
from pruning._errors import CheckpointError, DatasetError, PlanError, PruningError, TrainingDiverged
from pruning._export import (ExportError, Verification, export_onnx, external_data_path, onnx_latency,
                             uses_external_data, verify_onnx, verify_standalone)
from pruning._io import atomic_write, atomic_write_text
from pruning._measure import Measurement, measure
from pruning._train import TrainConfig, TrainHooks, TrainResult, TrainState, evaluate, finetune, train
from pruning._units import (GRANULARITIES, Unit, channels_to_keep, expand_plan, plan_keys, prunable_units,
                            validate_plan)

__all__ = [
    "AUGMENTATIONS", "DATASETS", "GRANULARITIES", "IMPORTANCES",
    "Checkpoint", "CheckpointError", "CheckpointMeta", "Dataset", "DatasetError", "ImageSpec", "ExportError", "Measurement",
    "PlanError", "Verification",
    "Preprocessing", "PruningError", "PruningRecord", "Reference", "TrainConfig", "TrainHooks", "TrainResult",
    "TrainState", "TrainingDiverged", "Unit",
    "apply_plan", "atomic_write", "atomic_write_text", "channels_to_keep", "evaluate", "expand_plan",
    "export_onnx", "image_spec_of", "external_data_path", "finetune", "onnx_latency", "verify_onnx", "verify_standalone",
    "uses_external_data",
    "global_ranking_plans", "load_checkpoint", "load_dataset", "load_pruned", "measure", "plan_keys",
    "prunable_safely", "prunable_units", "read_meta", "recalibrate_bn", "save_pruned", "train", "train_batches", "validate_plan",
    "with_metrics",
]
