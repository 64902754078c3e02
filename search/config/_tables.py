"""Name -> implementation tables of the search: the CLI choices and config validation derive from them."""
from __future__ import annotations

# what a budget is for (its ``scope``): ``smoke`` proves the pipeline in minutes (its figures mean nothing;
# the CPU guard never refuses it; the report says so), ``short`` is a reduced study (the report says its
# figures are not a full study's), ``full`` a study whose figures are the product's
SCOPES = ("smoke", "short", "full")

# --objective -> the field of the trial record that the study minimizes (and the dashboard's axis name)
OBJECTIVES: dict[str, str] = {"size": "size_mb", "params": "params", "macs": "macs", "latency": "latency_ms"}

# where --objective latency is measured: the study's device through PyTorch, onnxruntime on the CPU, or
# the candidate's INT8 file (as pick --int8 ships it) on onnxruntime: a search for what will actually run
LATENCY_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")

# the classic allocations enqueued as reference trials: the same ratio in every unit,
# Torch-Pruning's global ranking (one L1 ranking across all units) at the same target ratio, and the
# sensitivity map's threshold allocation (Model Optimizer's FastNAS, AIMET) at the uniform plan's size
REFERENCES = ("uniform", "global", "sensitivity")

# what shape 0 of the search space is at a level: the uniform plan, or the sensitivity map's
# cost-aware allocation of the same size (search.trial._space)
CENTERS = ("uniform", "sensitivity")

# which front points the report times on the CPU (report.latency, or a budget's own choice)
LATENCY_CHOICES = ("all", "recovered", "none")

# which front points the report quantizes to INT8 and measures (report.int8): the recovered ones among
# those it times, or none
INT8_CHOICES = ("recovered", "none")
