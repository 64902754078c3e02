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

from pruning import atomic_write
from search.config import OPTIONS_NAME, RESOLVED_NAME, UsageError, redact

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
             "latency.json", "int8.json", ".lock", ".recover.lock", *REPORT_FILES]
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


def check_targets(targets: tuple[Path, ...], flag: str, *, force: bool, pinned: tuple[str | Path, ...] = ()) -> None:
    """Refuse, with one line and before anything is written, to write any of ``targets`` when it is
    a study's own file (whatever study folder it lies in), a start checkpoint a study is pinned to
    (``pinned``), a folder, or an existing file without ``force``."""
    pins = {Path(p).resolve() for p in pinned if p}
    for target in targets:
        refuse_study_file(target, flag)
        if target.resolve() in pins:
            raise UsageError(f"{flag} {target} is the start checkpoint a study is pinned to; save elsewhere")
        if target.is_dir():
            raise UsageError(f"{flag} {target} is a folder; name a file")
        if os.path.lexists(target) and not force:
            raise UsageError(f"{flag} {target} exists; pass --force to replace it, or name another file")


def refuse_other_study(targets: tuple[Path, ...], flag: str, *, own: Path) -> None:
    """One line when a target (links resolved) is a new file inside the folder of a study other than
    ``own``, the one the command reads: another study's folder is written only by its own commands."""
    for target in targets:
        other = _other_study(target, own)
        if other is not None:
            raise UsageError(f"{flag} {target} lies in {other}, the folder of another study; its folder is written "
                             f"only by its own commands: save outside it (or inside {own})")


def is_study_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a study (its journal, or the baseline of a study kept in a database)."""
    return (folder / JOURNAL).exists() or (folder / BASELINE).exists()


def _other_study(target: Path, own: Path) -> Path | None:
    """The study folder other than ``own`` that ``target`` (links resolved) lies in, if any."""
    own = own.resolve()
    for folder in target.resolve().parents:
        if folder == own:
            return None
        if is_study_folder(folder):
            return folder
    return None


def check_writable(out: Path) -> None:
    """Fail with one line before anything is written when the study folder cannot be written, or
    when it is a folder of other files (a study would be mixed into them)."""
    refuse_foreign_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write the study folder {out}: {exc.strerror or type(exc).__name__}; "
                         f"pass a writable --out") from None


def refuse_foreign_folder(out: Path) -> None:
    """One line when ``out`` is an existing folder with files but none of a study's: the study's
    files would land among the user's own, and ``--out`` is the one place a study writes."""
    try:
        names = sorted(e.name for e in os.scandir(out))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return  # check_writable says why the folder cannot be used
    ours = {p.name for p in own_files(out)} | {ARTIFACTS, "ray", "pareto-projections.png"}
    if names and not any(n in ours or n.startswith((JOURNAL, ".probe-")) for n in names):
        raise UsageError(f"--out {out} holds other files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) "
                         f"and no study; a study would be mixed into them: name a new or empty folder, or the "
                         f"folder of an existing study")


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


def refuse_links(out: Path) -> None:
    """One line when a study's own file or its artifact store is a symbolic link: writing or repairing
    through it would change a file outside the study. (``journal.log.lock`` is Optuna's lock, a link
    by design, and is left to Optuna.)"""
    for p in (*own_files(out), artifact_dir(out)):
        if p.name != JOURNAL + ".lock" and p.is_symlink():
            raise UsageError(f"{p} is a symbolic link; a study's own files must be plain files inside its folder "
                             f"(a link could make a command write elsewhere): replace the link with the file it "
                             f"points to, or pass another --out")


def check_journal(path: Path, *, repair: bool = True) -> str | None:
    """Make sure a journal can be read (and, with ``repair``, appended to).

    A torn last line (a crash or a full disk in the middle of a write) is cut off and kept beside
    the journal as ``journal.log.torn-<time>``, so nothing is ever appended after it; only a command
    that appends to the journal (``repair``) does this, under the journal's own write lock, so a line
    another process is writing right now is never taken for a torn one. Without ``repair`` nothing is
    locked or written (a read-only copy can be read; Optuna skips a torn last line when reading). A
    damaged line anywhere else, or a file that is not an Optuna journal, is refused with one line.
    Returns a note when something was repaired or needs repair.
    """
    if not path.exists():
        return None
    if not repair:
        good_end, size = _scan(path, path.read_bytes())
        return None if good_end == size else "the journal's last line is torn; the next search.run repairs it"
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        return _repair(path)
    finally:
        lock.release()


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "op_code" in record


def _scan(path: Path, data: bytes) -> tuple[int, int]:
    """(bytes of whole journal records from the start, file size); refuses damage before the end
    and a file that is not a journal at all."""
    good_end, line_no, start = 0, 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        line_no += 1
        if end < 0 or not _is_record(data[start:end]):
            if end >= 0 and data[end + 1:].strip():
                raise UsageError(f"{path} line {line_no} is damaged (not a journal record) and records follow it; "
                                 f"restore the journal from a backup, or delete that line to keep the rest")
            break
        good_end, start = end + 1, end + 1
    if good_end == 0 and data and not data.lstrip().startswith(b'{"op_code"'):
        raise UsageError(f"{path} is not an Optuna journal (its first line is not a journal record); "
                         f"pass the --out of a study, or move that file away")
    return good_end, len(data)


def _repair(path: Path) -> str | None:
    data = path.read_bytes()
    good_end, size = _scan(path, data)
    if good_end == size:
        return None
    torn = path.with_name(f"{path.name}.torn-{int(time.time())}")
    atomic_write(torn, lambda tmp: Path(tmp).write_bytes(data[good_end:]))
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, good_end)
    finally:
        os.close(fd)
    return f"the journal's last line was torn (an interrupted write); it was cut off and kept in {torn.name}"


def open_storage(out: Path, url: str | None, *, heartbeat_s: int = 60, create: bool = True) -> BaseStorage:
    """The journal file of the study folder (checked, see :func:`check_journal`; made and repaired
    only when ``create``: the commands that read a study never write it), or the RDB at ``url`` with heartbeats every ``heartbeat_s`` seconds (a worker
    silent for twice that has its trial failed and retried)."""
    refuse_links(out)
    if url is None:
        path = journal_path(out)
        if not create and not path.exists():
            raise UsageError(f"no study in {out}; run search.run first (or pass the --out / --budget it used)")
        note = check_journal(path, repair=create)
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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trial_artifact(out: Path, artifact_id: object, sha256: str | None, trial: int) -> Path:
    """:func:`artifact_path`, refused with one line when the file is not the one trial ``trial``
    wrote (its recorded SHA-256 differs: another valid checkpoint swapped in). Studies written
    before checksums were recorded (``sha256`` None) are read as they are."""
    path = artifact_path(out, artifact_id)
    if sha256 is not None and path.exists() and file_sha256(path) != sha256:
        raise UsageError(f"trial {trial}'s checkpoint {path.relative_to(out)} is not the file the trial wrote "
                         f"(its SHA-256 differs from the one recorded); restore the study's artifacts from a backup")
    return path


def dashboard_command(out: Path, url: str | None) -> str:
    """The command that opens the study in optuna-dashboard (the venv's executable, so it works in a
    fresh shell)."""
    import shlex
    import sys

    exe = Path(sys.executable).parent / "optuna-dashboard"
    storage = redact(url) if url else str(journal_path(out))
    return f"{shlex.quote(str(exe))} {shlex.quote(storage)} --artifact-dir {shlex.quote(str(artifact_dir(out)))}"
