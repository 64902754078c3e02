"""The study folder and its storage: paths, the journal (checked, and repaired when its last line
was torn), RDB URLs, the lock that serializes workers, and artifact ids that stay inside the store."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from search._cli import UsageError
from search._config import OPTIONS_NAME, RESOLVED_NAME, redact

JOURNAL = "journal.log"
ARTIFACTS = "artifacts"
BASELINE = "baseline.pt"
BASELINE_PARTIAL = ".baseline.partial.pt"  # the interrupted baseline's last epoch
REPORT_FILES = ("report.md", "report.json", "pareto.csv", "pareto.png")
TEST_CACHE = "test_accuracy.json"
_ARTIFACT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def journal_path(out: Path) -> Path:
    return out / JOURNAL


def artifact_dir(out: Path) -> Path:
    return out / ARTIFACTS


def baseline_path(out: Path) -> Path:
    return out / BASELINE


def own_files(out: Path) -> list[Path]:
    """The files of a study folder that only its own commands write (``--save`` may not name them)."""
    names = [JOURNAL, JOURNAL + ".lock", BASELINE, BASELINE_PARTIAL, RESOLVED_NAME, OPTIONS_NAME, TEST_CACHE,
             "latency.json", ".lock", ".recover.lock", *REPORT_FILES]
    return [out / n for n in names]


def refuse_own_file(out: Path, target: Path, flag: str) -> None:
    """One line and no write when ``target`` is a study's own file, inside its artifact store, or a folder."""
    resolved = target.resolve()
    store = artifact_dir(out).resolve()
    if resolved.is_dir() or resolved in {p.resolve() for p in own_files(out)} or store in resolved.parents \
            or resolved == store or resolved.name.startswith(JOURNAL):
        raise UsageError(f"{flag} {target} would overwrite the study's own files or is a folder; "
                         f"save elsewhere")


def refuse_study_file(target: Path, flag: str) -> None:
    """:func:`refuse_own_file` for whatever study folder ``target`` lies in (a folder with a journal)."""
    folder = target.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / JOURNAL).exists():
            refuse_own_file(candidate, target, flag)
            return


def check_writable(out: Path) -> None:
    """Fail with one line before anything is written when the study folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write the study folder {out}: {exc.strerror or type(exc).__name__}; "
                         f"pass a writable --out") from None


@contextlib.contextmanager
def file_lock(path: Path):
    """An advisory lock on ``path`` (made if missing), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def study_lock(out: Path):
    """Serialize the workers of a study folder around seeding and creating trials, so that the trial
    total holds and a trial is never seen half-created."""
    return file_lock(out / ".lock")


def check_journal(path: Path) -> str | None:
    """Make sure a journal can be read and appended to.

    A torn last line (a crash or a full disk in the middle of a write) is cut off and kept beside
    the journal as ``journal.log.torn-<time>``, so nothing is ever appended after it. The check holds
    the journal's own write lock, so a line another process is writing right now is never taken for
    a torn one. A damaged line anywhere else is refused with one line that says how to fix it.
    Returns a note when something was repaired.
    """
    if not path.exists():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        return _repair(path)
    finally:
        lock.release()


def _repair(path: Path) -> str | None:
    data = path.read_bytes()
    good_end, line_no, start = 0, 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        line_no += 1
        line = data[start:] if end < 0 else data[start:end]
        try:
            ok = end >= 0 and isinstance(json.loads(line), dict)
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            if end >= 0 and data[end + 1:].strip():
                raise UsageError(f"{path} line {line_no} is damaged (not a journal record) and records follow it; "
                                 f"restore the journal from a backup, or delete that line to keep the rest")
            break
        good_end, start = end + 1, end + 1
    if good_end == len(data):
        return None
    torn = path.with_name(f"{path.name}.torn-{int(time.time())}")
    torn.write_bytes(data[good_end:])
    with open(path, "r+b") as handle:
        handle.truncate(good_end)
    return f"the journal's last line was torn (an interrupted write); it was cut off and kept in {torn.name}"


def open_storage(out: Path, url: str | None, *, heartbeat_s: int = 60, create: bool = True) -> BaseStorage:
    """The journal file of the study folder (checked, see :func:`check_journal`; made when
    ``create``), or the RDB at ``url`` with heartbeats every ``heartbeat_s`` seconds (a worker
    silent for twice that has its trial failed and retried)."""
    if url is None:
        path = journal_path(out)
        if not create and not path.exists():
            raise UsageError(f"no study in {out}; run search.run first (or pass the --out / --budget it used)")
        note = check_journal(path)
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        first = " ".join(str(exc).split())[:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot open storage {redact(url)!r}: {first}") from None


def artifact_path(out: Path, artifact_id: object) -> Path:
    """The file of an artifact id recorded by this study. Ids are Optuna's UUIDs; anything else (a
    path, ``..``) is refused, so a record can never point outside the artifact store."""
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID.match(artifact_id):
        raise UsageError(f"the study records an artifact id {str(artifact_id)[:80]!r} that is not an artifact "
                         f"of its store; the storage was edited by hand or damaged")
    return artifact_dir(out) / artifact_id


def dashboard_command(out: Path, url: str | None) -> str:
    """The command that opens the study in optuna-dashboard (the venv's executable, so it works in a
    fresh shell)."""
    import shlex
    import sys

    exe = Path(sys.executable).parent / "optuna-dashboard"
    storage = redact(url) if url else str(journal_path(out))
    return f"{shlex.quote(str(exe))} {shlex.quote(storage)} --artifact-dir {shlex.quote(str(artifact_dir(out)))}"
