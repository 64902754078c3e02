"""Files outside the study are never touched: symlinked study files are refused, read-only commands
never repair a journal, a file that is not a journal is refused, a read-only study can be read, and
every write target is checked against every study's own files and pinned start checkpoints."""
from __future__ import annotations

import optuna
import pytest

from search import pick, report, run
from search.config import UsageError
from search.storage._storage import check_journal
from search.storage import open_storage
from tests.conftest import base_args, cli

OUTSIDE = b"precious\n"  # 9 bytes elsewhere that a study command must never cut


def _journal(out) -> bytes:
    """A real journal with one study, written by Optuna itself."""
    out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "journal.log")))
    optuna.create_study(storage=storage, study_name="s")
    return (out / "journal.log").read_bytes()


@pytest.mark.parametrize("create", [True, False])
def test_a_symlinked_journal_is_refused_and_its_target_untouched(create, tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(OUTSIDE)
    out = tmp_path / "study"
    out.mkdir()
    (out / "journal.log").symlink_to(target)
    with pytest.raises(UsageError, match="journal.log is a symbolic link"):
        open_storage(out, None, create=create)
    assert target.read_bytes() == OUTSIDE


def test_a_symlinked_artifact_store_is_refused(tmp_path):
    out = tmp_path / "study"
    _journal(out)
    (tmp_path / "elsewhere").mkdir()
    (out / "artifacts").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="artifacts is a symbolic link"):
        open_storage(out, None)
    assert not list((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize("create", [True, False])
def test_a_file_that_is_not_a_journal_is_refused_never_repaired(create, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "journal.log").write_bytes(b"precious!")  # no newline: the old check took it for a torn line
    with pytest.raises(UsageError, match="is not an Optuna journal"):
        open_storage(out, None, create=create)
    assert (out / "journal.log").read_bytes() == b"precious!" and not list(out.glob("journal.log.torn-*"))


def test_only_a_writing_command_repairs_a_torn_journal(tmp_path):
    out = tmp_path / "study"
    good = _journal(out)
    torn = good + b'{"op_code": 5, "worker_id": "x", "tr'
    (out / "journal.log").write_bytes(torn)
    assert "next search.run repairs it" in check_journal(out / "journal.log", repair=False)
    assert (out / "journal.log").read_bytes() == torn and not list(out.glob("journal.log.*"))
    assert "was cut off" in check_journal(out / "journal.log", repair=True)
    assert (out / "journal.log").read_bytes() == good


@pytest.mark.parametrize("module", [report, pick, run])
def test_commands_refuse_a_symlinked_journal_in_one_line(module, tmp_path, tiny_config, capsys):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(OUTSIDE)
    out = tmp_path / "study"
    out.mkdir()
    (out / "journal.log").symlink_to(target)
    extra = {report: [], pick: ["--max-drop", "1", "--save", str(tmp_path / "p.pt")], run: ["--quiet"]}[module]
    code, _, err = cli(module, base_args(tiny_config, out) + extra, capsys)
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    assert target.read_bytes() == OUTSIDE
