"""What a study yields: the front, pareto.csv / report.md / pareto.png / report.json, the verdict
against the references, and shipping a picked model (ONNX + sidecar)."""
from __future__ import annotations

from search.results._deploy import VERIFY_BATCH, export_paths, int8_path, ship, sidecar_path
from search.results._int8 import check_calibration_count, int8_figures, int8_table, ort_timer
from search.results._plots import pyplot
from search.results._render import (PROJECTIONS, SENSITIVITY_PNG, chosen_drop, selection_accuracy, selection_drop,
                                    within_drop)
from search.results._report import collect, front_trials, reference_gaps, study_pairs, write_report

__all__ = ["PROJECTIONS", "SENSITIVITY_PNG", "VERIFY_BATCH", "check_calibration_count", "chosen_drop", "collect", "export_paths",
           "front_trials", "int8_figures", "int8_path", "int8_table", "ort_timer", "pyplot", "reference_gaps", "selection_accuracy", "selection_drop", "ship",
           "sidecar_path", "study_pairs", "within_drop", "write_report"]
