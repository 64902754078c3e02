"""What optuna-dashboard shows besides the trials: a note on every trial saying how it ended, a
study note with the baseline, the headline and the pick command, and the report files as study
artifacts."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from pruning import BaselineFigures
from search.storage._records import REPORT_ARTIFACTS_KEY, TrialRecord, fmt_accuracy

_MIMETYPES = {".md": "text/markdown", ".png": "image/png", ".csv": "text/csv", ".pt": "application/octet-stream"}


def trial_note(rec: TrialRecord, state: TrialState, reason: str | None, baseline: BaselineFigures) -> str:
    """Markdown for a trial: its size, its accuracy, and for a stopped or failed one, why."""
    lines = []
    if state == TrialState.PRUNED:
        lines.append(f"**Stopped early** (successive halving): {reason}")
    elif state == TrialState.FAIL:
        lines.append(f"**Failed**: {reason or rec.fail_reason or 'see the log'}")
    if rec.reference:
        lines.append(f"Reference plan: {rec.reference} ratio {rec.reference_ratio}")
    if rec.size_mb is not None:
        lines.append(f"**{rec.size_mb:.4f} MB** ({rec.pruned_pct:.1f} % smaller than {baseline.size_mb:.4f} MB), "
                     f"{(rec.macs or 0) / 1e6:.1f} M MACs, {rec.params or 0:,} parameters")
    if rec.val_accuracy is not None:
        lines.append(f"val accuracy **{rec.val_accuracy:.4f}** (baseline {baseline.val_accuracy:.4f}; "
                     f"proxy after BN recalibration {rec.proxy_accuracy:.4f})")
    elif rec.proxy_accuracy is not None:
        lines.append(f"proxy val accuracy after BN recalibration {rec.proxy_accuracy:.4f} "
                     f"(baseline {baseline.val_accuracy:.4f})")
    if rec.skipped:
        lines.append(rec.skipped)
    if rec.rungs:
        lines.append("rungs: " + ", ".join(f"{r.steps} steps {r.val_accuracy:.4f}" for r in rec.rungs))
    if rec.plan:
        ratios = sorted(rec.plan.values())
        lines.append(f"plan over {len(ratios)} units: ratios {ratios[0]:.2f} to {ratios[-1]:.2f}, "
                     f"mean {sum(ratios) / len(ratios):.2f}")
    return "\n\n".join(lines)


def study_note(answer: dict) -> str:
    """Markdown for the study: the baseline, the headline and the command that returns it."""
    base = answer["baseline"]
    lines = [f"## {answer['model']} on {answer['dataset']} (budget `{answer['budget']}`)",
             f"Baseline: **{base['size_mb']:.4f} MB**, {base['params']:,} parameters, {base['macs'] / 1e6:.1f} M MACs, "
             f"val accuracy {base['val_accuracy']:.4f}, test accuracy {fmt_accuracy(base['test_accuracy'])}."]
    head = answer["headline"]
    if head:
        lines.append(f"Headline: **trial {head['trial']}**, {head['size_mb']:.4f} MB (**{head['pruned_pct']:.1f} % "
                     f"smaller**), test accuracy drop **{'—' if head['accuracy_drop'] is None else format(head['accuracy_drop'], '.2f')} pts**"
                     + (f", speed-up at batch 1 (onnxruntime) {head['ort_b1_speedup_text']}"
                        if head.get("ort_b1_speedup_text") else "") + ".")
        lines.append(f"Take it:\n\n    {head['pick_command']}")
    else:
        lines.append("No front point is within the headline's accuracy drop yet.")
    if answer["warning"]:
        lines.append(f"**Warning:** {answer['warning']}")
    smap = answer.get("sensitivity")
    if smap:
        lines.append(f"Sensitivity map: {smap['keys']} keys x {smap['ratios']} ratios, each key pruned alone "
                     f"({smap['seconds']:.0f} s); the most sensitive key: `{smap['most_sensitive']}`. "
                     f"Heat map: the artifact `sensitivity.png`.")
    lines.append("The full report, the plot, the front as CSV and the baseline are this study's artifacts.")
    return "\n\n".join(lines)


def save_trial_note(trial: optuna.Trial, body: str) -> None:
    from optuna_dashboard import save_note

    save_note(trial, body)


def save_study_note(study: optuna.Study, body: str) -> None:
    from optuna_dashboard import save_note

    save_note(study, body)


def publish(study: optuna.Study, storage: BaseStorage, store: FileSystemArtifactStore, files: list[Path]) -> None:
    """Upload ``files`` as study artifacts, replacing the copies an earlier run uploaded (an unchanged
    file is left as it is)."""
    known = dict(study.user_attrs.get(REPORT_ARTIFACTS_KEY, {}))
    study_id = storage.get_study_id_from_name(study.study_name)
    changed = False
    for path in files:
        if not path.exists():
            continue
        digest = _digest(path)
        old = known.get(path.name)
        if old and old.get("sha256") == digest:
            continue
        artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                                   mimetype=_MIMETYPES.get(path.suffix, "application/octet-stream"))
        if old:  # retire the old copy the way the dashboard's own delete does (Optuna 5.0 has no public delete)
            storage.set_study_system_attr(study_id, f"artifacts:{old['id']}", json.dumps(None))
            try:
                store.remove(old["id"])
            except ArtifactNotFound:
                pass
        known[path.name] = {"id": artifact, "sha256": digest}
        changed = True
    if changed:
        study.set_user_attr(REPORT_ARTIFACTS_KEY, known)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
