"""The main job: ``python -m search.run --model densenet121``.

Runs (or resumes) the multi-objective Optuna study of a model and writes its Pareto front report.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import optuna

from pruning import GRANULARITIES, IMPORTANCES, plan_keys, prunable_units
from search._cli import UsageError, common_parser, run_cli
from search._config import OBJECTIVES, SAMPLERS, StudyConfig, load_config
from search._context import load_data, start_point
from search._objective import Objective, SearchContext, calibration_batches
from search._report import write_report
from search._study import (artifact_dir, dashboard_command, fail_stale_trials, finished, open_storage, open_study,
                           run_trials, seed_uniform, study_lock)


def get_args_parser():
    parser = common_parser("search.run", "Search per-unit pruning ratios; write the Pareto front.")
    parser.add_argument("--trials", type=int, help="the study's total number of trials (default: the budget's)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="size measure to minimize (default size, MB)")
    parser.add_argument("--granularity", choices=GRANULARITIES)
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--importance", choices=IMPORTANCES)
    parser.add_argument("--max-size-mb", type=float, help="constraint: candidates above it are infeasible")
    parser.add_argument("--min-accuracy", type=float, help="constraint: validation accuracy (fraction)")
    parser.add_argument("--storage", help="Optuna RDB URL (default: a journal file in the study folder)")
    parser.add_argument("--from", dest="from_checkpoint", metavar="CHECKPOINT",
                        help="prune an already pruned checkpoint further (iterative compression)")
    parser.add_argument("--no-early-stop", action="store_true", help="fine-tune every candidate")
    parser.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--no-report", action="store_true", help="skip the report files (extra workers)")
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study")
    scale.add_argument("--heartbeat-s", type=int, default=60,
                       help="RDB storages: heartbeat period; a worker silent for twice as long is failed and retried")
    scale.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    scale.add_argument("--gpus-per-trial", type=float, default=0.0, help="ray: fraction of a GPU per trial")
    scale.add_argument("--cpus-per-trial", type=float, default=1.0, help="ray: CPUs per trial")
    scale.add_argument("--max-concurrent", type=int, help="ray: trials at once (default: as resources allow)")
    scale.add_argument("--ray-address", help="ray: an existing cluster (auto or HOST:PORT); default: start a local one")
    return parser


def config_from_args(args) -> StudyConfig:
    return load_config(args.model, path=args.config, dataset=args.dataset, budget=args.budget, out=args.out,
                       data_dir=args.data_dir, device=args.device, seed=args.seed, trials=args.trials,
                       objective=args.objective, granularity=args.granularity, sampler=args.sampler,
                       importance=args.importance, max_size_mb=args.max_size_mb, min_accuracy=args.min_accuracy,
                       storage=args.storage, from_checkpoint=args.from_checkpoint)


def build_context(cfg: StudyConfig, *, download: bool = True, progress: bool = True) -> SearchContext:
    """Data, starting model, units and calibration batches: everything trials share."""
    from optuna.artifacts import FileSystemArtifactStore

    data = load_data(cfg, download=download)
    start, reference = start_point(cfg, data, progress=progress)
    example = data.example_input(1)
    units = prunable_units(start.model, example)
    artifacts = artifact_dir(cfg)
    artifacts.mkdir(parents=True, exist_ok=True)
    batch = cfg.spend.batch_size or cfg.finetune.batch_size
    meta = start.metadata
    return SearchContext(
        cfg=cfg, data=data, base=start.model, base_history=start.history, teacher=start.model,
        build={k: meta[k] for k in ("model", "num_classes", "in_channels")}, reference=reference,
        units=units, keys=plan_keys(units, cfg.search.granularity), example=example,
        artifacts=FileSystemArtifactStore(str(artifacts)),
        calibration=calibration_batches(data, cfg.spend.bn_batches, batch, cfg.seed))


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if args.workers < 1 or args.heartbeat_s < 1:
        raise UsageError(f"--workers and --heartbeat-s must be at least 1, got {args.workers} and {args.heartbeat_s}")
    if args.backend == "ray" and args.workers != 1:
        raise UsageError("--workers is for the optuna backend; with ray use --max-concurrent")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0 or (args.max_concurrent is not None and args.max_concurrent < 1):
        raise UsageError("--cpus-per-trial must be > 0, --gpus-per-trial >= 0 and --max-concurrent >= 1")
    quiet_optuna()
    cfg = config_from_args(args)
    progress = not args.quiet
    storage = open_storage(cfg, heartbeat_s=args.heartbeat_s)  # an unreachable --storage fails here
    with study_lock(cfg):  # a second worker waits here while the first trains the baseline
        ctx = build_context(cfg, download=not args.no_download, progress=progress)
        study = open_study(cfg, storage, base=cfg.from_checkpoint or "baseline")
        stale = fail_stale_trials(study)
        seed_uniform(study, ctx.keys, cfg.search.uniform_ratios)
    (cfg.out_dir / "config.resolved.yaml").write_text(cfg.to_yaml())
    if progress:
        resumed = f", resuming at {finished(study)} finished" if finished(study) else ""
        stale_note = f", {stale} interrupted trial(s) marked failed" if stale else ""
        print(f"study {cfg.study_name}: {len(ctx.units)} units, {len(ctx.keys)} ratios ({cfg.search.granularity}), "
              f"{cfg.total_trials} trials{resumed}{stale_note}\nwatch it live: {dashboard_command(cfg)}",
              file=sys.stderr, flush=True)
    objective = Objective(ctx, early_stop=not args.no_early_stop)
    if args.backend == "ray":
        from search._ray import run_with_ray  # the only place that imports Ray

        run_with_ray(study, storage, ctx, argv, args, progress=progress)
    else:
        with extra_workers(argv, args.workers - 1):
            run_trials(study, objective, cfg, progress=progress)
    if not args.no_report:
        paths = write_report(cfg, study, ctx.data, ctx.reference)
        if progress:
            print(f"report: {paths['md']}\nfront: {paths['csv']}\nplot: {paths['png']}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def extra_workers(argv: list[str], n: int):
    """Start ``n`` more copies of this command on the same study (a GPU each when there are several)
    and wait for them; they are stopped if this process fails."""
    import torch

    gpus = torch.cuda.device_count()
    # CPU threads are split between the workers: oversubscribed OpenMP threads spin against each
    # other (measured here: 2 workers x 2 threads on 2 cores ran at a third of 1 worker's rate).
    threads = max(1, (os.cpu_count() or 1) // (n + 1))
    if n:
        torch.set_num_threads(threads)
    procs = []
    for i in range(1, n + 1):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        cmd = [sys.executable, "-m", "search.run", *argv, "--workers", "1", "--quiet", "--no-report"]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        yield
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        codes = [p.wait() for p in procs]
    if any(codes):
        print(f"warning: extra workers exited with {codes}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
