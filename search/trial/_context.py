"""Shared set-up of the commands: device, data under the budget, the baseline (trained once,
resumable per epoch), the model a study prunes from, and the context every trial of a study shares."""
from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from optuna.artifacts import FileSystemArtifactStore
from torch import nn

from models import fit_weights, list_models, read_state_dict
from pruning import (Checkpoint, CheckpointError, CheckpointMeta, Dataset, ImageSpec, PlanError, PruningError,
                     BaselineFigures, TrainHooks, TrainState, Unit, atomic_write, evaluate, load_checkpoint, load_dataset,
                     TrainConfig, measure, plan_keys, precision_for, prepare, prunable_safely, save_pruned, to_plain, train,
                     train_batches)
from search.config import ConfigError, RunOptions, StudyConfig, UsageError, fault
from search.storage import BASELINE_PARTIAL, artifact_dir, baseline_path

# The validation split never follows --seed: a baseline trained on one split and evaluated on another
# would be scored on its own training images.
VAL_SPLIT_SEED = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def image_spec(cfg: StudyConfig) -> ImageSpec:
    """How images are brought to the model's input: the source's defaults (registry: 32x32 and the
    dataset's statistics; torchvision/timm: 224, crop 0.875, ImageNet's mean/std, 3 channels),
    overridden by the config's ``image_size``, ``crop_pct``, ``mean`` and ``std``."""
    source = cfg.source
    probe = None if source.kind == "registry" else source.build(num_classes=2)
    d = source.data_defaults(probe)
    channels = None if probe is None else first_conv(probe).in_channels
    if channels and d.mean and len(d.mean) != channels:  # ImageNet's RGB statistics fit no 1-channel model
        d = replace(d, mean=None, std=None)
    mean, std = cfg.mean or d.mean, cfg.std or d.std
    if mean and channels and len(mean) != channels or std and channels and len(std) != channels:
        raise ConfigError(f"{cfg.model} takes {channels}-channel images but --mean/--std give {len(mean or std)} "
                          f"value(s); give one value per input channel, or leave them out for the dataset's own")
    if (mean is None) != (std is None) or (mean and std and len(mean) != len(std)):
        raise ConfigError(f"mean {mean} and std {std} must both be given, one value per input channel")
    return ImageSpec(input_size=cfg.image_size or d.input_size, crop_pct=cfg.crop_pct or d.crop_pct,
                     interpolation=d.interpolation, channels=channels, mean=mean, std=std)


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UsageError(f"{type(model).__name__} has no Conv2d layer; this tool prunes CNNs")
    return conv


def _whole_dataset(cfg: StudyConfig, opts: RunOptions) -> Dataset:
    if opts.data_dir and Path(opts.data_dir).is_file():
        raise UsageError(f"--data-dir {opts.data_dir} is a file; give the folder that holds the dataset")
    return load_dataset(cfg.dataset, data_dir=opts.data_dir, val_fraction=cfg.val_fraction, seed=VAL_SPLIT_SEED,
                        download=opts.download, augment=cfg.augment, image=image_spec(cfg), cache_mb=opts.cache_mb,
                        workers=opts.loader_workers)


def load_data(cfg: StudyConfig, opts: RunOptions) -> Dataset:
    """The study's dataset at the model's input, cut to the budget's subsets (stratified draws), on
    the run's device."""
    spend = cfg.spend
    data = _whole_dataset(cfg, opts).subset(train=spend.train_subset, val=spend.val_subset, test=spend.test_subset)
    return data.to(resolve_device(opts.device))


def load_holdout(cfg: StudyConfig, opts: RunOptions) -> Dataset | None:
    """The validation images the search never reads, on which the recovered points and the baseline
    are judged (the budget's ``holdout_subset`` of what its ``val_subset`` leaves; the val split of the
    dataset returned). None when the budget sets no holdout, or fewer images are left than it asks
    for and than the search's own val subset: that judge would read fewer images than the search did."""
    spend = cfg.spend
    if not spend.holdout_subset or not spend.val_subset:
        return None
    whole = _whole_dataset(cfg, opts)
    held = whole.holdout(val=spend.val_subset, n=spend.holdout_subset)
    if held is None or held.count("val") < min(spend.val_subset, spend.holdout_subset):
        return None
    return held.subset(train=1, test=1).to(resolve_device(opts.device))


def build_model(cfg: StudyConfig, data: Dataset) -> nn.Module:
    """An untrained model of the study's source for the data's classes, checked to run at the data's
    input size (too small a size is refused with the smallest that works)."""
    model = cfg.source.build(num_classes=data.num_classes, in_channels=data.in_channels)
    conv = first_conv(model)
    if conv.in_channels != data.in_channels:
        raise UsageError(f"{cfg.model} takes {conv.in_channels}-channel images; the data has {data.in_channels}")
    check_input_size(model, data.in_channels, data.input_size, cfg.model)
    if cfg.source.kind != "registry":  # the registry's models are known to return logits
        check_training_output(model, data.in_channels, data.input_size, cfg.model)
    return model


def check_training_output(model: nn.Module, channels: int, size: int, name: str) -> None:
    """Refuse a model whose training-mode forward returns more than the logits (torchvision's
    GoogLeNet and Inception v3 return their auxiliary heads' logits too): the loss takes one tensor,
    and the auxiliary heads hang off layers the pruning would change under them. The model's
    buffers (BatchNorm statistics) and the random state (dropout) are put back as they were."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model.train()(torch.zeros(2, channels, size, size))
    except RuntimeError:
        return  # check_input_size has run the eval forward; a training-only failure shows in training
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.eval()
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{name} returns {type(out).__name__} in training mode, not one tensor of logits (auxiliary "
                         f"heads, as torchvision's GoogLeNet and Inception v3 have): build it without them, e.g. "
                         f"aux_logits=False, and save the weights of that model")


PROBE_SIDES = tuple(sorted({2 ** k for k in range(3, 13)} | {28, 224, 299}))  # powers of two and common sides


def check_input_size(model: nn.Module, channels: int, size: int, name: str) -> None:
    """Refuse an input side the architecture cannot take, naming the smallest that works."""
    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, side, side))
            return True
        except RuntimeError:
            return False
    if runs(size):
        return
    low, high = size, next((s for s in PROBE_SIDES if s > size and runs(s)), None)
    if high is None:
        below = [s for s in PROBE_SIDES if s < size and runs(s)]
        if below:  # a fixed input size (a flatten before its first Linear): name the largest that runs
            hint = " (the registry's models are built for 32x32)" if name in list_models() else ""
            raise UsageError(f"{name} does not run on {size}x{size} inputs but does on {below[-1]}x{below[-1]}: "
                             f"pass --image-size {below[-1]}{hint}")
        raise UsageError(f"{name} does not run on {size}x{size} inputs, nor on any of "
                         f"{', '.join(map(str, PROBE_SIDES))} pixels square")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if runs(mid) else (mid, high)
    raise UsageError(f"--image-size {size} is too small for {name}; the smallest input it takes is {high}x{high}")


def train_baseline(cfg: StudyConfig, out: Path, data: Dataset, *, epochs: float | None = None,
                   progress: bool = True, then: str = "") -> Checkpoint:
    """Train the unpruned model with the config's recipe and save ``<out>/baseline.pt`` (``then``:
    what follows it, shown beside the progress bar so its ETA reads as the whole study's).

    The run saves its state after every epoch, so an interrupted baseline continues where it
    stopped (with the same recipe) instead of starting over.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data)
    recipe = cfg.baseline_recipe(epochs)
    partial = out / BASELINE_PARTIAL
    resume = _resume_state(partial, model, recipe, progress)

    def save_epoch(state: TrainState) -> None:
        payload = {"recipe": to_plain(recipe), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "state": asdict(state)}
        atomic_write(partial, lambda tmp: torch.save(payload, tmp))
        fault("after_baseline_epoch")

    result = train(model, data, recipe, progress=progress, desc=f"baseline {cfg.model}{then}",
                   hooks=TrainHooks(on_epoch=save_epoch, resume=resume))
    meta = CheckpointMeta(
        model=cfg.model, model_kwargs=dict(cfg.model_kwargs), num_classes=data.num_classes,
        in_channels=data.in_channels, dataset=cfg.dataset, preprocessing=data.preprocessing,
        metrics={**split_accuracies(model, data, cfg), "train_seconds": result.seconds, "images_per_s": result.images_per_s},
        provenance={"recipe": to_plain(recipe), "steps": result.steps, "budget": cfg.budget, "seed": cfg.seed})
    save_pruned(baseline_path(out), model, None, meta)
    partial.unlink(missing_ok=True)
    return load_checkpoint(baseline_path(out), expect_model=cfg.model)


def test_accuracy(model: nn.Module, data: Dataset, precision: str) -> float | None:
    """Test accuracy (a fraction) under ``precision``, or None where the dataset has no test split."""
    return evaluate(model, data, "test", precision=precision) if data.has_test else None


def split_accuracies(model: nn.Module, data: Dataset, cfg: StudyConfig) -> dict[str, float]:
    """An unpruned baseline's validation accuracy, and test accuracy where the dataset has a test split
    (fractions), in the precision its study will score every model in (:func:`study_precision`)."""
    precision = study_precision(cfg, sum(p.numel() for p in model.parameters()), data.device)
    out = {"val_accuracy": evaluate(model, data, "val", precision=precision)}
    if data.has_test:
        out["test_accuracy"] = evaluate(model, data, "test", precision=precision)
    return out


def study_precision(cfg: StudyConfig, baseline_params: int, device: torch.device) -> str:
    """The one precision a study scores every model in: ``finetune.precision`` resolved once, on the
    unpruned baseline's ``baseline_params`` (bf16 where it pays for the baseline,
    :func:`pruning.resolve_precision`), never on the smaller model in hand, so a pruned point and its
    baseline are compared in the same arithmetic. The study records it when it is made
    (:data:`search.storage.PRECISION_KEY`)."""
    return precision_for(cfg.finetune.precision, baseline_params, device)


def in_precision(recipe: TrainConfig, precision: str) -> TrainConfig:
    """``recipe`` training in the study's ``precision`` where it says ``auto``; a recipe's explicit
    precision is kept for training (every figure is still scored in the study's)."""
    return replace(recipe, precision=precision) if recipe.precision == "auto" else recipe


def preflight(cfg: StudyConfig, data: Dataset, model: nn.Module, *,
              accept: bool = False) -> tuple[nn.Module, dict] | None:
    """Check, before anything is written, what only the model can tell: the layers to keep exist and
    the user's weights fit and score above chance (``model``: the study's, from :func:`build_model`,
    which checked the input size; the weights are loaded into it). Returns their model and its
    figures (the baseline to adopt), or None without ``weights``."""
    names = dict(model.named_modules())
    unknown = [k for k in cfg.search.keep_layers if k not in names]
    if unknown:
        raise UsageError(f"--keep-layers names {unknown[0]!r}, which {cfg.model} does not have; layers are e.g. "
                         f"{', '.join(list(names)[1:6])}")
    if not cfg.weights:
        return None
    fit_weights(cfg.source, model, read_state_dict(cfg.weights), num_classes=data.num_classes)
    model = prepare(model, data.device)
    metrics = split_accuracies(model, data, cfg)
    _refuse_chance(metrics["val_accuracy"], data, accept)
    return model, metrics


def adopt_weights(cfg: StudyConfig, out: Path, data: Dataset, adopted: tuple[nn.Module, dict]) -> Checkpoint:
    """The user's trained model (checked by :func:`preflight`) as the study's baseline: evaluated,
    never retrained, saved as ``<out>/baseline.pt``."""
    model, metrics = adopted
    meta = CheckpointMeta(
        model=cfg.model, model_kwargs=dict(cfg.model_kwargs), num_classes=data.num_classes,
        in_channels=data.in_channels, dataset=cfg.dataset, preprocessing=data.preprocessing, metrics=metrics,
        provenance={"weights": str(cfg.weights), "weights_sha256": cfg.weights_sha256, "trained_by": "user"})
    save_pruned(baseline_path(out), model, None, meta)
    return load_checkpoint(baseline_path(out), expect_model=cfg.model)


def _refuse_chance(val: float, data: Dataset, accept: bool) -> None:
    """Chance level: not above the majority class's share of the validation split by 3 standard errors."""
    counts = data.labels("val").bincount(minlength=data.num_classes).float()
    n = float(counts.sum())
    p = float(counts.max()) / max(n, 1.0)
    bar = p + 3 * (p * (1 - p) / max(n, 1.0)) ** 0.5
    if val <= bar and not accept:
        raise UsageError(f"the given weights score {val:.4f} on the validation split, chance level for it "
                         f"(majority class {p:.4f}); almost always the wrong preprocessing (--image-size, --mean/--std) "
                         f"or class order (the class folders, sorted); --accept-baseline goes on anyway")


def _resume_state(partial: Path, model: torch.nn.Module, recipe, progress: bool) -> TrainState | None:
    if not partial.exists():
        return None
    try:
        payload = torch.load(partial, map_location="cpu", weights_only=True)
        if payload["recipe"] != to_plain(recipe):
            raise ValueError("another recipe")
        model.load_state_dict(payload["model"])
        state = TrainState(**payload["state"])
    except Exception as exc:  # a stale or damaged partial run is not worth keeping: start over
        if progress:
            print(f"note: not resuming the interrupted baseline ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); starting over", file=sys.stderr)
        return None
    if progress:
        print(f"resuming the interrupted baseline at step {state.step}", file=sys.stderr)
    return state


def measured_baseline(ckpt: Checkpoint, example: torch.Tensor) -> BaselineFigures:
    """Figures of the unpruned baseline that every candidate is compared with: a pruned checkpoint
    carries its study's (``--from``); a baseline is measured here."""
    if ckpt.meta.baseline is not None:
        return ckpt.meta.baseline
    m = measure(ckpt.model, example.to(next(ckpt.model.parameters()).device))
    metrics = ckpt.meta.metrics
    if "val_accuracy" not in metrics:
        raise CheckpointError("the starting model records no validation accuracy; train it with search.train")
    test = metrics.get("test_accuracy")
    return BaselineFigures(params=m.params, macs=m.macs, size_mb=m.size_mb, val_accuracy=float(metrics["val_accuracy"]),
                     test_accuracy=float(test) if test is not None else None)


def start_checkpoint(cfg: StudyConfig, out: Path, data: Dataset) -> Checkpoint:
    """The model a study prunes from: ``from_checkpoint``, or the study folder's baseline (a new
    study's session trains it first), checked against the dataset, on the data's device."""
    source = cfg.from_checkpoint or str(baseline_path(out))
    ckpt = load_checkpoint(source, expect_model=cfg.model)
    meta = ckpt.meta
    if meta.dataset not in (None, cfg.dataset):
        raise CheckpointError(f"{source} was trained on {meta.dataset!r}, not {cfg.dataset!r}; "
                              f"use another --out or another starting checkpoint")
    if meta.in_channels != data.in_channels or meta.num_classes != data.num_classes:
        raise CheckpointError(f"{source} has {meta.in_channels} input channels and {meta.num_classes} classes; "
                              f"{cfg.dataset} has {data.in_channels} and {data.num_classes}")
    if meta.input_size != data.input_size:
        raise CheckpointError(f"{source} takes {meta.input_size}x{meta.input_size} inputs; this run's are "
                              f"{data.input_size}x{data.input_size} (--image-size)")
    ckpt.model = prepare(ckpt.model, data.device).eval()
    return ckpt


@dataclass
class SearchContext:
    """What every trial of a study shares, built once per process."""

    cfg: StudyConfig
    opts: RunOptions
    out: Path
    data: Dataset
    start: Checkpoint          # the model whose copies are pruned (baseline, or --from); the KD teacher
    baseline: BaselineFigures       # unpruned baseline figures
    units: list[Unit]
    keys: list[str]
    example: torch.Tensor
    keep: tuple[str, ...]      # layers whose outputs are kept: the config's, plus units found unsafe to prune
    artifacts: FileSystemArtifactStore
    calibration: list          # fixed training batches: BN recalibration and Taylor importance
    precision: str = "fp32"    # the study's one precision (study_precision; a resumed study's recorded one)
    center: list | None = None  # the sensitivity map's cost-aware plan per level, when the space is centred on it
    # the matched measure of the plans the map's bisections tried, by the channels each unit keeps
    measured: dict[tuple[int, ...], float] = field(default_factory=dict)


def build_context(cfg: StudyConfig, opts: RunOptions, out: Path, *, data: Dataset | None = None,
                  start: Checkpoint | None = None) -> SearchContext:
    """Data, starting model, units and calibration batches: everything trials share (``start``: the
    starting checkpoint, when the caller has loaded it already)."""
    data = data if data is not None else load_data(cfg, opts)
    start = start or start_checkpoint(cfg, out, data)
    example = data.example_input(1)
    units, keep = safe_units(start.model, example, cfg, progress=opts.progress)
    artifact_dir(out).mkdir(parents=True, exist_ok=True)
    batch = cfg.finetune_recipe(0).batch_size
    calibration = list(itertools.islice(train_batches(data, batch, torch.Generator().manual_seed(cfg.seed)),
                                        cfg.spend.bn_batches))
    baseline = measured_baseline(start, example)
    return SearchContext(cfg=cfg, opts=opts, out=out, data=data, start=start, baseline=baseline,
                         precision=study_precision(cfg, baseline.params, data.device),
                         units=units, keys=plan_keys(units, cfg.search.granularity), example=example, keep=keep,
                         artifacts=FileSystemArtifactStore(str(artifact_dir(out))), calibration=calibration)


def safe_units(model: nn.Module, example: torch.Tensor, cfg: StudyConfig, *,
               progress: bool = True) -> tuple[list[Unit], tuple[str, ...]]:
    """The units a study may prune and the layers it keeps whole (:func:`pruning.safe_units`), with
    one line naming the units Torch-Pruning cannot prune safely."""
    space = cfg.search
    try:
        units, keep, bad = prunable_safely(model, example, max_ratio=space.max_ratio, round_to=space.round_to,
                                           keep=tuple(space.keep_layers))
    except PruningError:
        raise
    except Exception as exc:  # Torch-Pruning's tracer fails in many ways on unusual graphs
        raise PlanError(f"Torch-Pruning cannot trace {cfg.model}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
    if bad and progress:
        print(f"note: Torch-Pruning cannot prune {len(bad)} unit(s) of {cfg.model} safely; kept whole: "
              f"{', '.join(u.name for u in bad[:8])}{' ...' if len(bad) > 8 else ''}", file=sys.stderr)
    return units, keep
