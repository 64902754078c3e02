from __future__ import annotations


class PruningError(ValueError):
    """Bad input to the pruning package: the message is one line that says what to change."""


class PlanError(PruningError):
    """A plan names an unknown unit or carries a ratio outside the allowed range."""


class CheckpointError(PruningError):
    """A file that is not a readable checkpoint of ours (corrupt, foreign, or unsafe)."""


class DatasetError(PruningError):
    """A dataset that is unknown, missing, or malformed."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite during training."""
