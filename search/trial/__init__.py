"""One trial and what it needs: the shared context (device, data, baseline, starting model), the
search space, the rungs of successive halving, the objective that prunes, fine-tunes and scores
a plan, and latency measurement."""
from __future__ import annotations

from search.trial._context import (VAL_SPLIT_SEED, SearchContext, adopt_weights, build_context, build_model,
                                   check_input_size, image_spec, in_precision, load_data,
                                   preflight, safe_units, start_checkpoint, test_accuracy, train_baseline)
from search.trial._latency import BATCHES, ORT_THREADS, SPEEDUP_REPEATS, latencies, setting
from search.trial._objective import Outcome, rung_population, run_trial
from search.trial._open_study import OpenStudy
from search.trial._allocation import SensitivityMap
from search.trial._sensitivity import (MAP_KEY, SECONDS_KEY, TARGETS_KEY, aim_spread, aim_targets, map_grid, map_images,
                                       prepare_map, sensitivity_plans, stored_center, uses_map)
from search.trial._space import params_for, sample

__all__ = ["BATCHES", "MAP_KEY", "ORT_THREADS", "OpenStudy", "Outcome", "SECONDS_KEY", "SPEEDUP_REPEATS",
           "SearchContext", "SensitivityMap", "TARGETS_KEY", "aim_spread", "aim_targets", "VAL_SPLIT_SEED", "adopt_weights", "build_context", "build_model",
           "check_input_size", "image_spec", "in_precision", "latencies", "load_data", "map_grid", "map_images", "params_for", "preflight", "prepare_map", "rung_population",
           "run_trial", "safe_units", "sample", "sensitivity_plans", "setting", "start_checkpoint", "stored_center", "uses_map",
           "test_accuracy", "train_baseline"]
