"""What every command shares: the flags, their mapping onto the config by name, one-line errors
with exit code 2."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, NoReturn

from models import UnknownModelError, WeightsError, file_sha256, list_models
from pruning import AUGMENTATIONS, DATASETS, PruningError, TrainingDiverged
from search.config import (ConfigError, RunOptions, StudyConfig, UsageError, config_fields, load_config, option_fields,
                           options_from_plain)

USER_ERRORS = (ConfigError, PruningError, UnknownModelError, UsageError, TrainingDiverged, WeightsError)
MODEL_HELP = (f"the model: a registry name ({', '.join(list_models())}; 32x32), torchvision:<arch> (e.g. "
              f"torchvision:resnet50), timm:<name>, or your own code pkg.module:fn / path/to/file.py:fn, called "
              f"as fn(num_classes=N, **model_kwargs) -- naming your code imports and runs it; required unless "
              f"--config is a resolved config that names a registry or torchvision/timm model")


class Parser(argparse.ArgumentParser):
    """argparse with a single-line error instead of usage + error, and defaults in ``--help``."""

    def __init__(self, *, example: str, **kw: Any) -> None:
        super().__init__(formatter_class=_Formatter, epilog=f"example:\n  {example}", **kw)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default when it has one (flags without one default to the config's value and
    say so in their help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" not in text and not unset and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def number(kind: type, *, low: float | None = None, high: float | None = None, above: float | None = None,
           fraction: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite int or float within bounds; ``fraction`` hints at percentages."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if fraction and 1 < value <= 100:
            raise argparse.ArgumentTypeError(f"{text} looks like a percentage; this is a fraction, e.g. {value / 100:g}")
        if (low is not None and value < low) or (high is not None and value > high) \
                or (above is not None and value <= above):
            rng = " and ".join(p for p in (f">= {low}" if low is not None else "", f"> {above}" if above is not None
                                           else "", f"<= {high}" if high is not None else "") if p)
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def path_arg(text: str) -> str:
    """A path flag: an empty one (``--out ""``) is a mistake, never "use the default"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a path")
    return text


def folder_arg(text: str) -> str:
    """A folder flag: non-empty, and not an existing file."""
    text = path_arg(text)
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text[:200]} is a file, not a folder; name a folder")
    return text


def study_parser(prog: str, description: str, example: str) -> Parser:
    """The flags every command shares. Destinations are config fields (``dataset``, ``budget``,
    ``seed``) or run options (``out``, ``device``, ``data_dir``, ``storage``): :func:`resolve`
    maps them by name."""
    parser = Parser(prog=prog, description=description, example=example)
    parser.add_argument("--model", metavar="SOURCE", help=MODEL_HELP)
    parser.add_argument("--model-kwargs", dest="model_kwargs", type=_json_object, metavar="JSON",
                        help='keyword arguments of the model builder, e.g. \'{"width": 2}\' (default: none)')
    parser.add_argument("--dataset", choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}",
                        help="default: the config's (fashion-mnist)")
    parser.add_argument("--config", type=path_arg, help="YAML config (default: configs/<model>.yaml)")
    parser.add_argument("--budget", help="a budget of the config: smoke, default, full, ... (default: default)")
    parser.add_argument("--out", type=folder_arg, help="study folder (default: studies/<model>-<dataset>[-<budget>])")
    parser.add_argument("--data-dir", dest="data_dir", type=folder_arg, help="where datasets are found or downloaded (default: data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--storage", type=path_arg, help="an Optuna RDB URL, e.g. postgresql://user@host/db "
                                           "(default: the journal file in the study folder)")
    parser.add_argument("--no-download", dest="download", action="store_const", const=False,
                        help="never download a missing dataset (default: download where the network allows)")
    return parser


def add_study_flags(parser: Parser) -> None:
    """Flags of search.run and search.train that change the study's config."""
    parser.add_argument("--seed", type=number(int, low=0, high=2**31 - 1), help="default: the config's (0)")
    parser.add_argument("--augment", choices=AUGMENTATIONS,
                        help="training augmentation (default: the config's, auto: the dataset's; image folders "
                             "cached above the input size: rrc+flip)")
    parser.add_argument("--weights", metavar="PATH",
                        help="your trained weights (a state dict, or {'model': ...} / {'state_dict': ...}): they "
                             "are the baseline, evaluated and never retrained (default: train a baseline)")
    parser.add_argument("--image-size", dest="image_size", type=number(int, low=8, high=4096),
                        help="the model's input side in pixels (default: the source's: 32 registry, 224 "
                             "torchvision/timm)")
    parser.add_argument("--crop-pct", dest="crop_pct", type=number(float, above=0, high=1),
                        help="evaluation crop: resize the shorter side to image-size / crop-pct, keep the centre "
                             "(default: the source's: 1.0 registry, 0.875 torchvision)")
    parser.add_argument("--mean", type=_floats, help="normalization mean per channel, e.g. 0.485,0.456,0.406 "
                                                     "(default: ImageNet's for torchvision/timm, else the dataset's)")
    parser.add_argument("--std", type=_floats, help="normalization std per channel (default: as --mean)")
    parser.add_argument("--keep-layers", dest="search.keep_layers", type=_names, metavar="A,B",
                        help="layers whose outputs are never pruned, besides the classifier (default: none)")
    parser.add_argument("--cache-mb", dest="cache_mb", type=number(float, low=0, high=1e7),
                        help="an image folder that decodes to more MB is streamed from its files (default 4096)")
    parser.add_argument("--loader-workers", dest="loader_workers", type=number(int, low=0, high=64),
                        help="processes decoding image files (default 2)")
    parser.add_argument("--accept-baseline", dest="accept_baseline", action="store_const", const=True,
                        help="go on with weights that score at chance level on the validation split "
                             "(default: refuse: almost always a preprocessing or class-order mistake)")


def _study_flag_names() -> dict[str, str]:
    """Destination -> flag of :func:`add_study_flags` (the flags that set a study's config)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_study_flags(parser)
    return {a.dest: a.option_strings[0] for a in parser._actions}


# compared with the study's effective input spec: a flag -> the ImageSpec field it sets
SPEC_FLAGS = {"image_size": "input_size", "crop_pct": "crop_pct", "mean": "mean", "std": "std"}


def open_study(args: argparse.Namespace):
    """The existing study the flags name, for a command that reads it (pick, report, recover). The
    flags that made it (``search.run``'s ``--image-size``, ``--seed``, ``--weights`` ...) are accepted
    and checked against what the study stored: one that differs is refused in one line, since the
    study's own settings are the ones its figures were made with."""
    from search.study import open_existing
    from search.trial import image_spec

    names = _study_flag_names()
    given = {k: v for k, v in vars(args).items() if v is not None and k in names and k not in option_fields()}
    found = open_existing(*resolve(args))
    stored, spec = found.cfg, None
    for dest, value in given.items():
        if dest == "weights":
            want, have = file_sha256(value), stored.weights_sha256
        elif dest in SPEC_FLAGS:
            spec = spec or image_spec(stored)
            have = getattr(spec, SPEC_FLAGS[dest])
            if have is None and dest in ("mean", "std"):  # the dataset's own statistics
                have = getattr(found.data.preprocessing, dest)
            want = value
        else:
            have = stored
            for part in dest.split("."):
                have = getattr(have, part)
            want = value
        if not _same(want, have):
            shown = "other weights" if dest == "weights" else f"{names[dest]} {_shown(have)}"
            raise UsageError(f"{names[dest]} {_shown(value)}: the study in {found.out} was made with {shown}; a "
                             f"command that reads a study takes its settings from it (drop the flag, or name the "
                             f"study made with it by --out)")
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _shown(value: Any) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, (tuple, list)) \
        else str(value)


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"width\": 2}}', got {text[:80]!r}") from None
    except RecursionError:  # thousands of [[[...]]]: json's parser recurses once per level
        raise argparse.ArgumentTypeError(f"is nested too deeply ({text[:40]!r}...); keyword arguments of a model "
                                         f"builder are plain values, lists and small mappings") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of keyword arguments, got {text[:80]!r}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    parse = number(float)
    return tuple(parse(t) for t in text.split(",") if t.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def resolve(args: argparse.Namespace) -> tuple[StudyConfig, RunOptions]:
    """The one mapping of flags onto settings: a flag whose destination is a config field (or a
    dotted ``section.key``) overrides the config; one that names a run option sets it; flags left
    unset (None) change nothing."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if "model" not in given and "config" not in given:
        raise UsageError("--model is required (or a --config that names its model, e.g. a config.resolved.yaml)")
    overrides = {k: v for k, v in given.items() if "." in k or (k in config_fields() and k != "model")}
    options = {k: v for k, v in given.items() if k in option_fields()}
    if "weights" in given:
        try:
            overrides["weights_sha256"] = file_sha256(given["weights"])
        except OSError as exc:
            raise UsageError(f"--weights {given['weights']}: {exc.strerror or type(exc).__name__}") from None
    cfg = load_config(given.get("model"), path=given.get("config"), overrides=overrides)
    if cfg.source.kind == "code" and "model" not in given:
        raise UsageError(f"the config's model is your code {cfg.model}; name it with --model {cfg.model} "
                         f"to allow importing it")
    return cfg, options_from_plain(options)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    """Run ``main`` and turn a user error into one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        code = 2
    except OSError as exc:  # a full disk, a folder without permission: the environment, not a bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"error: {exc.strerror or type(exc).__name__}{where}\n")
        code = 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; run the same command again to resume\n")
        code = 130
    except SystemExit as exc:
        where = _user_frame(exc)
        if where is None:  # argparse's usage errors and --help exit this way, as they should
            raise
        sys.stderr.write(f"error: your code called sys.exit({exc.code!r}) at {where} while the model ran; a model's "
                         f"forward must return logits (remove the exit); the trials finished so far are kept\n")
        code = 2
    except Exception as exc:
        if not _storage_failure(exc):
            raise
        sys.stderr.write(f"error: the study's database stopped answering ({type(exc).__name__}: "
                         f"{_one_line(exc)[:160]}); the trials finished so far are kept in it: bring the database "
                         f"server back and run the same command to resume\n")
        code = 2
    sys.stderr.flush()
    sys.exit(code)


def _user_frame(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of the user's own code (a module their ``--model`` entry
    point imported) in ``exc``'s traceback, or None when their code did not raise it."""
    from models import USER_MODULES

    tb, where = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in USER_MODULES:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a database server going away under an RDB study (SQLAlchemy's errors, or
    Optuna's wrapper of them); checked without importing either."""
    db = sys.modules.get("sqlalchemy.exc")
    optuna_exc = sys.modules.get("optuna.exceptions")
    kinds = tuple(k for k in (getattr(db, "DBAPIError", None), getattr(optuna_exc, "StorageInternalError", None)) if k)
    return bool(kinds) and isinstance(exc, kinds)


MESSAGE_HEAD, MESSAGE_TAIL = 400, 200  # characters kept of a long message: what was wrong, how to fix it


def _one_line(exc: BaseException) -> str:
    """The error on one line, printable (no escape codes), cut in the middle when it echoes a long value."""
    text = "".join(c if c.isprintable() else " " for c in str(exc).replace("\x1b", " "))
    text = " ".join(text.split())
    if len(text) > MESSAGE_HEAD + MESSAGE_TAIL + 20:
        text = f"{text[:MESSAGE_HEAD]} …[{len(text) - MESSAGE_HEAD - MESSAGE_TAIL:,} characters cut]… " \
               f"{text[-MESSAGE_TAIL:]}"
    return text if text else type(exc).__name__


def add_int8_flags(parser: argparse.ArgumentParser) -> None:
    """The INT8 flags of search.pick and search.export."""
    from pruning import CALIBRATION_METHODS, Int8Settings

    d = Int8Settings()
    parser.add_argument("--int8", action="store_true",
                        help="also write <name>.int8.onnx: static INT8 (onnxruntime's quant_pre_process + "
                             "quantize_static, per-channel weights), measured and named in the sidecar (default: FP32 only)")
    parser.add_argument("--calibration-images", type=number(int, low=1), default=d.calibration_images,
                        help="training images (a stratified draw) the INT8 activation ranges are calibrated on")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=d.calibration_method,
                        help="how the ranges are read from them")
    parser.add_argument("--max-int8-drop", type=number(float, low=0, high=100), default=d.max_drop,
                        help="the most val top-1 points INT8 may lose against FP32; over it the layers INT8 makes "
                             "noisiest stay FP32 until it holds, or nothing is written")


def int8_settings(args: argparse.Namespace):
    """The INT8 settings the flags ask for (None without --int8); removes the flags from ``args``."""
    from pruning import Int8Settings

    names = ("int8", "calibration_images", "calibration_method", "max_int8_drop")
    wanted, n, method, drop = (getattr(args, k) for k in names)
    for k in names:
        delattr(args, k)
    return Int8Settings(calibration_images=n, calibration_method=method, max_drop=drop) if wanted else None
