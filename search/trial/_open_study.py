"""One study as every command holds it: its config, how this run executes, its folder, storage and
Optuna study; the data, the starting model, the baseline figures and the trials' context load on
first use, once. ``search.run`` opens one (creating the study), its ``--workers`` processes and Ray
actors join one, and ``report``, ``pick``, ``recover`` and the benches open an existing one."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from pruning import BaselineFigures, Checkpoint, Dataset
from search.config import RunOptions, StudyConfig
from search.storage import baseline_of, precision_of
from search.trial._context import SearchContext, build_context, load_data, load_holdout, start_checkpoint
from search.trial._sensitivity import aim_spread, stored_center


@dataclass
class OpenStudy:
    """A study of this project, open in this process. ``cfg`` is the study's stored config for a
    command that reads a study (it wins over the YAML). The baseline figures are the ones the study
    recorded when it was created: every figure compared with the baseline reads them from here."""

    cfg: StudyConfig
    opts: RunOptions
    out: Path
    storage: BaseStorage
    study: optuna.Study
    estimate: Any = None  # search.run's estimate of the whole run (search.study.Estimate), when it made one

    @cached_property
    def data(self) -> Dataset:
        return load_data(self.cfg, self.opts)

    @cached_property
    def holdout(self) -> Dataset | None:
        """The validation images the search never read, that the recovered points are judged on (None:
        the budget sets none)."""
        return load_holdout(self.cfg, self.opts)

    @cached_property
    def start(self) -> Checkpoint:
        """The model the study prunes from (baseline or ``--from``), checked against its pinned digest."""
        return start_checkpoint(self.cfg, self.out, self.data)

    @cached_property
    def baseline(self) -> BaselineFigures:
        return baseline_of(self.study)

    @cached_property
    def ctx(self) -> SearchContext:
        """What this process's trials share, with what the study recorded under its lock: the map's
        centre, the one precision, the aim's targets, the baseline figures."""
        ctx = build_context(self.cfg, self.opts, self.out, data=self.data, start=self.start)
        adopt_study(ctx, self.study)
        return ctx


def adopt_study(ctx: SearchContext, study: optuna.Study) -> None:
    """Give a context what its study recorded (a resumed or joined study keeps its own)."""
    ctx.baseline = baseline_of(study)
    ctx.center = stored_center(study)
    ctx.precision = precision_of(study, ctx.cfg.finetune.precision, ctx.data.device)
    aim_spread(ctx, study)
