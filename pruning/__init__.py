"""The pruning engine: units and plans over coupled channel groups, structural surgery with
Torch-Pruning, adaptive BatchNorm, the training loop, measurement, data and safe checkpoints."""
from __future__ import annotations

import os

# onnxruntime (1.32) otherwise starts its telemetry at its first session: a device id and an event
# store under ~/.cache/Microsoft, files outside any study. Set before onnxruntime is imported; a
# user's own ORT_DISABLE_TELEMETRY is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from pruning._apply import IMPORTANCES, PruningRecord, apply_plan, global_ranking_plans, prunable_safely
from pruning._bn import recalibrate_bn
from pruning._checkpoint import (BaselineFigures, Checkpoint, CheckpointMeta, checksum, library_versions, load_checkpoint,
                                 load_pruned, read_meta, save_pruned, with_metrics)
from pruning._preprocessing import ImageSpec, Preprocessing, image_spec_of
from pruning.data import AUGMENTATIONS, DATASETS, Dataset, eval_batches, load_dataset, synthetic_splits, train_batches
from pruning._errors import CheckpointError, DatasetError, PlanError, PruningError, TrainingDiverged
from pruning._export import (ExportError, INPUT, OUTPUT, Verification, export_onnx, external_data_path, onnx_latency, ort_session,
                             uses_external_data, verify_onnx, verify_standalone)
from pruning._io import atomic_write, atomic_write_text, current_umask
from pruning._measure import Measurement, SpeedUp, interleaved_speedup, measure, size_mb
from pruning._train import (TrainConfig, TrainHooks, TrainResult, TrainState, autocast, correct, eval_batch_size, evaluate,
                            finetune, prepare, precision_for, resolve_precision, train)
from pruning._units import (GRANULARITIES, Unit, channels_to_keep, expand_plan, find_classifier, plan_keys,
                            prunable_units, tree_stages, validate_plan)
from pruning._typed import bounds, check_fields, from_plain, to_plain

from pruning import _quantize as quantization  # the INT8 steps one by one, for bench/int8.py (QDQ vs QOperator)
from pruning._quantize import CALIBRATION_METHODS, QUANT_FORMAT, Int8Settings, onnx_predictions, quantize_within

__all__ = [
    "CALIBRATION_METHODS", "QUANT_FORMAT", "Int8Settings", "current_umask", "eval_batches", "onnx_predictions",
    "ort_session", "quantization", "quantize_within",
    "AUGMENTATIONS", "DATASETS", "GRANULARITIES", "IMPORTANCES", "INPUT", "OUTPUT", "BaselineFigures", "Checkpoint",
    "CheckpointError", "CheckpointMeta", "Dataset", "DatasetError", "ExportError", "ImageSpec", "Measurement",
    "PlanError", "Preprocessing", "PruningError", "PruningRecord", "SpeedUp", "TrainConfig",
    "TrainHooks", "TrainResult", "TrainState", "TrainingDiverged", "Unit", "Verification", "apply_plan",
    "atomic_write", "atomic_write_text", "autocast", "correct", "bounds", "channels_to_keep", "check_fields", "checksum",
    "eval_batch_size", "evaluate", "expand_plan", "export_onnx", "external_data_path", "find_classifier", "finetune", "from_plain",
    "global_ranking_plans", "image_spec_of", "interleaved_speedup", "library_versions", "load_checkpoint",
    "load_dataset", "load_pruned", "measure", "onnx_latency", "plan_keys", "prepare", "prunable_safely",
    "prunable_units", "precision_for", "read_meta", "recalibrate_bn", "resolve_precision", "save_pruned", "size_mb",
    "synthetic_splits",
    "to_plain", "train", "train_batches", "tree_stages", "uses_external_data", "validate_plan", "verify_onnx",
    "verify_standalone", "with_metrics",
]
