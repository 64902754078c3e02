"""The main job: ``python -m search.run --model densenet121``.

Runs (or resumes, or extends) the multi-objective study of a model, recovers a spread of its front,
and writes the report.
"""
from __future__ import annotations

import argparse

from pruning import GRANULARITIES, IMPORTANCES
from search.cli import add_study_flags, number, path_arg, resolve, run_cli, study_parser
from search.config import LATENCY_BACKENDS, OBJECTIVES, SAMPLER_CHOICES, UsageError, quiet_libraries
from search.study import BACKENDS, finish_study, open_for_run, start_broker


def get_args_parser():
    parser = study_parser("search.run", "Search per-unit pruning ratios; write the Pareto front.",
                          "python -m search.run --model lenet5 --budget smoke --trials 12")
    add_study_flags(parser)
    parser.add_argument("--trials", type=number(int, low=1, high=100_000),
                        help="the study's total number of trials (default: the budget's)")
    parser.add_argument("--objective", dest="search.objective", choices=tuple(OBJECTIVES),
                        help="the size measure to minimize (default: the config's, size in MB)")
    parser.add_argument("--objectives", type=_objectives, metavar="accuracy,MEASURE[,MEASURE...]",
                        help=f"every objective, e.g. accuracy,size,latency for a 3-objective study; measures: "
                             f"{', '.join(OBJECTIVES)} (default: accuracy and --objective)")
    parser.add_argument("--latency-backend", dest="search.latency_backend", choices=LATENCY_BACKENDS,
                        help="where --objective latency is measured: torch on the study's device (the default), "
                             "onnxruntime on the CPU, or onnxruntime-int8: the candidate's INT8 file on the CPU")
    parser.add_argument("--granularity", dest="search.granularity", choices=GRANULARITIES,
                        help="one ratio per unit, per stage and role, or one everywhere (default: the config's)")
    parser.add_argument("--sampler", dest="search.sampler", choices=SAMPLER_CHOICES,
                        help="default: the config's (tpe; tpe-spread for VGG16, MobileNetV2, ResNet50, DenseNet121)")
    parser.add_argument("--importance", dest="search.importance", choices=tuple(IMPORTANCES),
                        help="channel criterion (default: the config's, l1)")
    parser.add_argument("--max-size-mb", dest="constraints.max_size_mb", type=number(float, above=0, high=1e6),
                        help="constraint: candidates above it are infeasible (default: none)")
    parser.add_argument("--min-accuracy", dest="constraints.min_accuracy",
                        type=number(float, low=0, high=1, fraction=True),
                        help="constraint: validation accuracy, a fraction: 0.9, not 90 (default: none)")
    parser.add_argument("--from", dest="from_checkpoint", metavar="CHECKPOINT", type=path_arg,
                        help="prune an already pruned checkpoint further (default: the study folder's baseline)")
    parser.add_argument("--no-early-stop", dest="search.early_stop", action="store_const", const=False,
                        help="fine-tune every candidate to the end (default: successive halving over rungs)")
    parser.add_argument("--quiet", dest="progress", action="store_const", const=False,
                        help="no progress output (default: progress bars and notes on stderr)")
    parser.add_argument("--no-report", dest="write_report", action="store_const", const=False,
                        help="skip the report files (default: write them)")
    parser.add_argument("--no-recover", dest="recover", action="store_const", const=False,
                        help="skip the recovery of the front after the search (default: recover)")
    parser.add_argument("--yes", action="store_const", const=True,
                        help="go on with a study estimated at over an hour on a CPU, also AUTOML_PRUNE_YES=1 "
                             "(default: refuse with the alternatives)")
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--workers", type=number(int, low=1, high=256),
                       help="processes on this machine sharing the study (default 1)")
    scale.add_argument("--heartbeat-s", dest="heartbeat_s", type=number(int, low=1, high=86_400),
                       help="seconds between a running trial's signs of life (default 60)")
    scale.add_argument("--backend", choices=tuple(BACKENDS), help="where trials run (default: optuna)")
    scale.add_argument("--gpus-per-trial", dest="gpus_per_trial", type=number(float, low=0, high=64),
                       help="ray: fraction of a GPU per trial (default 0)")
    scale.add_argument("--cpus-per-trial", dest="cpus_per_trial", type=number(float, above=0, high=1024),
                       help="ray: CPUs per trial (default 1)")
    scale.add_argument("--max-concurrent", dest="max_concurrent", type=number(int, low=1, high=10_000),
                       help="ray: trials at once (default: as resources allow)")
    scale.add_argument("--ray-address", dest="ray_address",
                       help="ray: an existing cluster, auto or HOST:PORT (default: start a local Ray)")
    return parser


def _objectives(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if len(names) < 2 or names[0] != "accuracy" or len(set(names)) < len(names) \
            or not set(names[1:]) <= set(OBJECTIVES):
        raise argparse.ArgumentTypeError(f"expected accuracy then one or more distinct measures of "
                                         f"{', '.join(OBJECTIVES)}, e.g. accuracy,size,latency; got {text[:80]!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries()
    objectives = args.objectives
    del args.objectives
    if objectives:  # the list, onto the config's objective and extra objectives
        if getattr(args, "search.objective") is not None:
            raise UsageError("give --objectives or --objective, not both")
        setattr(args, "search.objective", objectives[1])
        setattr(args, "search.extra_objectives", objectives[2:])
    cfg, opts = resolve(args)
    if opts.backend not in BACKENDS:
        raise UsageError(f"--backend {opts.backend!r} is not one of: {', '.join(BACKENDS)}")
    if opts.backend == "ray" and opts.workers != 1:
        raise UsageError("--workers is for the optuna backend; with ray use --max-concurrent")
    session = open_for_run(cfg, opts, opts.out_dir(cfg))
    job = start_broker(session)
    try:
        BACKENDS[opts.backend](job)
    finally:
        job.broker.close()
    finish_study(session)
    return 0


if __name__ == "__main__":
    run_cli(main)
