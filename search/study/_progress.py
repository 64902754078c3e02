"""What a run shows while trials finish, as an Optuna-style callback ``(study, trial)``: the trials
bar with the front's size, the accuracy at its smallest point and the study's ETA. Every backend's
broker calls it after each trial it tells; messages (a failure, waiting for other workers) go
through :meth:`Progress.note` so they print above the bar."""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from search.storage import axes
from search.study._estimate import duration
from search.study._study import finished


class Progress:
    """The trials bar of one broker; its ETA uses the seconds per trial this broker measured (the
    estimate's ``guess`` until one has finished), divided over the workers, plus what follows the
    trials (``after_s``: recovery and report)."""

    def __init__(self, study: optuna.Study, total: int, *, enabled: bool, workers: int = 1,
                 guess: float | None = None, after_s: float = 0.0) -> None:
        self.study, self.total, self.enabled, self.workers = study, total, enabled, max(1, workers)
        self.guess, self.after_s = guess, after_s
        self.spent, self.count = 0.0, 0
        self._bar: tqdm | None = None

    @property
    def bar(self) -> tqdm:
        """Made at first use (after the run's header lines)."""
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=min(self.total, finished(self.study)), desc="trials",
                             unit="trial", disable=not self.enabled, dynamic_ncols=True)
        return self._bar

    def note(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def per_trial(self) -> float | None:
        return self.spent / self.count if self.count else self.guess

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.datetime_start and trial.datetime_complete:
            self.spent += (trial.datetime_complete - trial.datetime_start).total_seconds()
            self.count += 1
        front = study.best_trials
        postfix = {"front": len(front)}
        if front:
            acc, size = axes(study)
            postfix["acc@smallest"] = f"{min(front, key=lambda t: t.values[size]).values[acc]:.3f}"
        done = finished(study)
        per = self.per_trial()
        if per is not None:
            postfix["study_eta"] = duration(max(0, self.total - done) * per / self.workers + self.after_s)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.n = min(self.total, done)
        self.bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
