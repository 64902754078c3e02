"""What a study writes and where: the study folder, the journal or RDB storage, the lock that
serializes workers, artifacts that stay inside the store, typed trial/recovery records and the
notes and files optuna-dashboard shows."""
from __future__ import annotations

from search.storage._dashboard import publish, save_study_note, save_trial_note, study_note, trial_note
from search.storage._records import (BASE_KEY, BASELINE_FIGURES_KEY, CONFIG_KEY, DIGEST_KEY, KEY_FIELDS, PRECISION_KEY,
                                     SETTINGS_KEY, RecoveryRecord, Rung, TrialRecord, axes, cleared_outputs, completed, fmt_accuracy,
                                     inputs_of, precision_of, record_value, recoveries, baseline_of, save_recovery)
from search.storage._storage import (BASELINE, BASELINE_PARTIAL, JOURNAL, TEST_CACHE, artifact_dir, artifact_path,
                                     baseline_path, check_targets, check_writable, dashboard_command, file_lock,
                                     file_sha256, journal_path, open_storage, refuse_other_study, refuse_own_file,
                                     study_lock, trial_artifact)

__all__ = ["BASELINE", "BASELINE_PARTIAL", "BASE_KEY", "CONFIG_KEY", "DIGEST_KEY", "JOURNAL", "KEY_FIELDS",
           "BASELINE_FIGURES_KEY", "RecoveryRecord", "Rung", "SETTINGS_KEY", "TEST_CACHE", "TrialRecord", "artifact_dir",
           "artifact_path", "axes", "baseline_path", "check_targets", "check_writable", "cleared_outputs", "completed",
           "dashboard_command", "file_lock", "file_sha256", "fmt_accuracy", "inputs_of", "journal_path",
           "open_storage", "PRECISION_KEY", "precision_of", "publish", "record_value", "recoveries", "baseline_of",
           "refuse_other_study", "refuse_own_file",
           "save_recovery", "save_study_note", "save_trial_note", "study_lock", "study_note", "trial_artifact",
           "trial_note"]
