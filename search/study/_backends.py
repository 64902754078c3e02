"""Where trials run. A backend takes the broker's trials and executes :func:`run_trial` somewhere:
``optuna`` in this process (plus ``--workers`` processes on this machine), ``ray`` on Ray Tune's
actors. The registry below gives the CLI its choices; Ray is imported only by its own backend."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Callable

from optuna.trial import TrialState

from pruning import to_plain
from search.config import fault
from search.study._broker import TrialBroker, heartbeat
from search.trial import OpenStudy, Outcome, SearchContext, run_trial


READY_FD = "AUTOML_PRUNE_READY_FD"  # a --workers process's pipe to its parent, written once it has joined


def signal_ready() -> None:
    """In a ``--workers`` process: tell the parent that the study is joined (one byte on the pipe
    it passed); a no-op in any other process."""
    fd = os.environ.pop(READY_FD, None)
    if fd is not None:
        try:
            os.write(int(fd), b"1")
        finally:
            os.close(int(fd))


@dataclass
class Job:
    """One run of a study, as a backend receives it: the open study and its broker."""

    opened: OpenStudy
    broker: TrialBroker


def run_local(broker: TrialBroker, ctx: SearchContext, *, reap: Callable[[], None] | None = None) -> None:
    """Run trials in this process until the study holds its total."""
    while True:
        trial = broker.ask(reap=reap)
        if trial is None:
            return
        try:
            with heartbeat(trial, broker.storage, broker.study, ctx.opts.heartbeat_s):
                fault("in_trial")
                outcome = run_trial(ctx, trial)
        except BaseException as exc:  # a bug or an interrupt: the trial must not stay RUNNING
            broker.tell(trial.number, Outcome(TrialState.FAIL, reason=f"{type(exc).__name__}: {exc}"[:500]))
            raise
        broker.tell(trial.number, outcome)


class _Workers:
    """Extra worker processes of this machine on the same study (``--workers N``)."""

    def __init__(self, job: Job, n: int) -> None:
        import torch

        gpus = torch.cuda.device_count()
        # CPU threads are split between the workers: oversubscribed OpenMP threads spin against each
        # other (measured here: 2 workers x 2 threads on 2 cores ran at a third of 1 worker's rate).
        threads = max(1, (os.cpu_count() or 1) // (n + 1))
        if n:
            torch.set_num_threads(threads)
        opened = job.opened
        child = replace(opened.opts, workers=1, progress=False, write_report=False, recover=False, yes=True)
        message = json.dumps({"config": to_plain(opened.cfg), "options": to_plain(child), "out": str(opened.out)})
        self.procs, self.ready = [], []
        for i in range(1, n + 1):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            read, write = os.pipe()
            env[READY_FD] = str(write)
            proc = subprocess.Popen([sys.executable, "-m", "search.cli._worker"], env=env, stdin=subprocess.PIPE,
                                    text=True, pass_fds=(write,))
            os.close(write)
            proc.stdin.write(message)
            proc.stdin.close()
            self.procs.append(proc)
            self.ready.append(read)

    def wait_ready(self) -> None:
        """Until every worker has joined the study (it writes a byte) or exited (end of file): the
        workers start their trials together, so a worker that starts slowly (imports, data) does
        not find the study already done by this process."""
        for fd in self.ready:
            try:
                os.read(fd, 1)
            finally:
                os.close(fd)
        self.ready = []

    def reap(self) -> None:
        """Collect exited workers, so that a killed one is seen dead (not a zombie) and its trial freed."""
        for p in self.procs:
            p.poll()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()

    def wait(self) -> list[int]:
        return [p.wait() for p in self.procs]


def run_optuna(job: Job) -> None:
    """This process, plus ``--workers - 1`` more processes on this machine."""
    workers = _Workers(job, job.opened.opts.workers - 1)
    try:
        workers.wait_ready()
        run_local(job.broker, job.opened.ctx, reap=workers.reap)
    except BaseException:
        workers.stop()
        raise
    finally:
        codes = workers.wait()
    failed = [c for c in codes if c not in (0, None)]
    if failed and job.opened.opts.progress:
        print(f"warning: {len(failed)} extra worker(s) exited with {failed}; their trials were failed and re-run",
              file=sys.stderr)


def run_ray(job: Job) -> None:
    from search.study._ray import run_with_ray  # the only place that imports Ray

    run_with_ray(job)


BACKENDS: dict[str, Callable[[Job], None]] = {"optuna": run_optuna, "ray": run_ray}
