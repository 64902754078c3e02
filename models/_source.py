"""Where a model comes from: the registry, ``torchvision:<arch>``, ``timm:<name>`` or the user's own
entry point (``pkg.module:fn`` / ``path/to/file.py:fn``), with the input size and normalization
that source implies (compare timm's ``PretrainedCfg`` and torchvision's ``weights.transforms()``)."""
from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from models._registry import UnknownModelError, create_model, list_models
from models._weights import first_line

KINDS = ("registry", "torchvision", "timm", "code")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # torchvision's and timm's evaluation: resize the shorter side to 256, crop 224
MAX_KWARGS_DEPTH = 8  # builder kwargs are flat in practice; a bound keeps every writer off deep recursion
_ENTRY = re.compile(r"^(?P<where>[^:]+):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")
# torchvision builders whose auxiliary heads return tuples in training mode: a classifier returns logits
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": False},
           "inception_v3": {"aux_logits": False, "init_weights": False}}


class SourceError(UnknownModelError):
    """A model source that cannot be used: the message names it and what is allowed."""


DEFAULT_INPUT_SIZE = 32  # pixels square: the registry's models' input, and a dataset's where no model names one


@dataclass(frozen=True)
class DataDefaults:
    """What a source implies about its input: square size in pixels, the evaluation crop (the
    shorter side is resized to ``input_size / crop_pct``), interpolation, and normalization (None:
    the dataset's own statistics)."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class ModelSource:
    """A model's architecture source: ``kind`` (one of ``KINDS``), ``name`` (registry name,
    torchvision arch, timm name or ``where:fn`` entry point) and the builder's keyword arguments."""

    kind: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The ``--model`` text of this source (``lenet5``, ``torchvision:resnet50``, ``nets.py:build``)."""
        return self.name if self.kind in ("registry", "code") else f"{self.kind}:{self.name}"

    @property
    def slug(self) -> str:
        """A file-name-safe name for study folders: ``torchvision-resnet50``, ``nets-build``."""
        text = self.text
        if self.kind == "code":
            where, _, fn = text.rpartition(":")
            text = f"{Path(where).stem if where.endswith('.py') else where}-{fn}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"

    def build(self, *, num_classes: int, in_channels: int = 3) -> nn.Module:
        """An untrained model with ``num_classes`` outputs (``in_channels`` for registry and timm
        models; torchvision's and the user's take what they were written for)."""
        if self.kind == "registry":
            return create_model(self.name, num_classes=num_classes, in_channels=in_channels)
        if self.kind == "torchvision":
            return _torchvision(self.name, num_classes, self.kwargs)
        if self.kind == "timm":
            import timm

            return timm.create_model(self.name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                     **self.kwargs)
        return _call_entry(self.name, num_classes, self.kwargs)

    def data_defaults(self, model: nn.Module | None = None) -> DataDefaults:
        """The input size, crop and normalization this source implies (timm: the model's own
        ``pretrained_cfg``; registry: 32x32 and the dataset's statistics)."""
        if self.kind == "registry":
            return DataDefaults(DEFAULT_INPUT_SIZE, 1.0, "bicubic", None, None)
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size", (3, 224, 224))[-1]
        return DataDefaults(int(size), float(cfg.get("crop_pct", DEFAULT_CROP_PCT)),
                            "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
                            tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))


def parse_source(text: str, kwargs: dict[str, Any] | None = None) -> ModelSource:
    """The source a ``--model`` text names; an unknown name is a :class:`SourceError` listing close
    matches. Nothing is imported for a user entry point here (that happens at build time)."""
    kwargs = dict(kwargs or {})
    if _depth(kwargs) > MAX_KWARGS_DEPTH:
        raise SourceError(f"model kwargs are nested deeper than {MAX_KWARGS_DEPTH} levels; keyword arguments of "
                          f"a model builder are plain values, lists and small mappings")
    if not isinstance(text, str) or not text.strip():
        raise SourceError(f"--model must name a model, got {text!r}; e.g. lenet5, torchvision:resnet50, "
                          f"timm:resnet18 or my_pkg.nets:build")
    text = text.strip()
    if text in list_models():
        if kwargs:
            raise SourceError(f"registry model {text} takes no model kwargs; got {', '.join(kwargs)}")
        return ModelSource("registry", text)
    kind, sep, name = text.partition(":")
    if sep and kind == "torchvision":
        return ModelSource("torchvision", _known(name, _torchvision_names(), "torchvision"), kwargs)
    if sep and kind == "timm":
        return ModelSource("timm", _known(name, _timm_names(), "timm"), kwargs)
    if _ENTRY.match(text):
        return ModelSource("code", text, kwargs)
    close = difflib.get_close_matches(text, list_models(), n=3)
    if text in _torchvision_names():  # a torchvision architecture named without its source
        close = [f"torchvision:{text}", *close]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise SourceError(f"unknown model {text!r}{hint}; give a registry name ({', '.join(list_models())}), "
                      f"torchvision:<arch>, timm:<name>, or your own entry point pkg.module:fn / file.py:fn")


def _depth(value: Any, limit: int = MAX_KWARGS_DEPTH + 1) -> int:
    """Nesting depth of lists and mappings, counted no further than ``limit`` (so a value nested
    thousands of levels deep never exhausts the stack here, or later in the YAML and JSON writers)."""
    if limit <= 0 or not isinstance(value, (dict, list, tuple)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def _known(name: str, names: list[str], kind: str) -> str:
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"; close matches: {', '.join(f'{kind}:{c}' for c in close)}" if close else ""
    raise SourceError(f"{kind} has no classification model {name!r}{hint}")


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


@functools.lru_cache(maxsize=1)
def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        raise SourceError("timm: sources need the timm package; run make setup") from None
    return timm.list_models()


def _torchvision(arch: str, num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    args = {**_NO_AUX.get(arch, {}), **kwargs}
    try:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **args)
    except TypeError as exc:
        raise SourceError(f"torchvision:{arch} does not take these model kwargs ({exc})") from None


def _call_entry(entry: str, num_classes: int, kwargs: dict) -> nn.Module:
    """Import the user's entry point and call ``fn(num_classes=..., **kwargs)``: this runs their code,
    which the user asked for by naming it."""
    fn = import_entry(entry)
    try:
        accepts = "num_classes" in inspect.signature(fn).parameters or any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        accepts = True
    try:
        with user_code(entry, "building the model"):
            model = fn(num_classes=num_classes, **kwargs) if accepts else fn(**kwargs)
    except SourceError:
        raise
    except Exception as exc:  # the user's code fails in its own ways; its message is what helps
        raise SourceError(f"{entry} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise SourceError(f"{entry} returned {type(model).__name__}, not a torch.nn.Module")
    return model


USER_MODULES: set[str] = set()  # modules of the user's code imported so far (``run_cli`` reads it)


@contextlib.contextmanager
def user_code(entry: str, doing: str):
    """While the user's code runs: ``sys.exit`` (a ``SystemExit``) and ``os._exit`` become a
    :class:`SourceError` naming the code, so their code never decides the command's exit status.
    (``os._exit`` is swapped only here, where nothing forks: a DataLoader worker exits through it.)"""
    real_exit = os._exit

    def refuse_exit(code: int = 0) -> None:
        raise SourceError(f"{entry} called os._exit({code}) while {doing}; a model builder must return "
                          f"the model (remove the exit, or guard it with if __name__ == '__main__')")
    os._exit = refuse_exit
    try:
        yield
    except SystemExit as exc:
        raise SourceError(f"{entry} called sys.exit({exc.code!r}) while {doing}; a model builder must return "
                          f"the model (remove the exit, or guard it with if __name__ == '__main__')") from None
    finally:
        os._exit = real_exit


def import_entry(entry: str) -> Callable[..., Any]:
    """The callable ``entry`` (``pkg.module:fn`` or ``path/to/file.py:fn``) names, imported."""
    match = _ENTRY.match(entry)
    if not match:
        raise SourceError(f"{entry!r} is not an entry point; write pkg.module:fn or path/to/file.py:fn")
    where, fn_name = match.group("where"), match.group("fn")
    try:
        with user_code(entry, f"importing {where}"):
            module = _import_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
    except SourceError:
        raise
    except Exception as exc:  # ImportError, SyntaxError, or whatever the module raises at import
        raise SourceError(f"cannot import {where} for {entry}: {type(exc).__name__}: {first_line(exc)}") from None
    USER_MODULES.add(module.__name__)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise SourceError(f"{where} has no function {fn_name!r} (entry point {entry})")
    return fn


def _import_file(path: Path):
    if not path.is_file():
        raise SourceError(f"model code {path} does not exist")
    name = "automl_prune_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def fit_weights(source: ModelSource, model: nn.Module, state: dict, *, num_classes: int) -> None:
    """Load a user's ``state`` into ``model`` built from ``source``; registry-name weights that are
    really torchvision's (a 7x7 stem, an ImageNet layout) are refused with the source that fits."""
    from models._weights import WeightsError, load_weights

    try:
        load_weights(model, state, model_text=source.text, num_classes=num_classes)
    except WeightsError as exc:
        if source.kind == "registry" and source.name in _torchvision_names():
            other = ModelSource("torchvision", source.name)
            try:
                load_weights(other.build(num_classes=num_classes), state, model_text=other.text,
                             num_classes=num_classes)
            except WeightsError:
                raise exc from None
            raise WeightsError(f"these weights are torchvision's {source.name} (ImageNet layout), not the "
                               f"registry's 32x32 {source.name}; use --model {other.text}") from None
        raise
