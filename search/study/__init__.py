"""Running a study: opening and seeding it, the trial broker on Optuna's ask/tell, the backends
(this process, --workers processes, Ray Tune), the time estimate, the recovery stage and one
run's session from start to report."""
from __future__ import annotations

from search.study._backends import BACKENDS, run_local, signal_ready
from search.study._recovery import recover
from search.study._broker import TrialBroker
from search.study._session import finish_study, open_existing, open_for_run, start_broker
from search.study._study import join_study, load_existing

__all__ = ["BACKENDS", "TrialBroker", "finish_study", "join_study", "load_existing", "open_existing", "open_for_run",
           "recover", "run_local", "signal_ready", "start_broker"]
