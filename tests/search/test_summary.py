"""search.summary: the seed's table over every study folder, read-only; and the report's first
lines say what the search bought, with speed-ups from interleaved repeats."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from search import run, summary
from search.storage import TrialRecord
from tests.conftest import TINY_LENET, base_args, cli, folder_hash, merged, study_of, write_config

pytestmark = pytest.mark.slow  # whole studies or a trained model: the slow tier (docs/development.md)


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("summary")
    studies = root / "studies"
    small = write_config(root / "small.yaml", merged(TINY_LENET, search={"references": ["uniform", "global"]}))
    assert run.main(base_args(small, studies / "two-trials") + ["--quiet", "--trials", "2", "--no-recover"]) == 0
    tiny = write_config(root / "tiny.yaml", TINY_LENET)
    assert run.main(base_args(tiny, studies / "four-trials") + ["--quiet", "--trials", "4"]) == 0
    return root, studies


def test_a_two_trial_study_with_two_reference_kinds_still_searches(two_studies):
    _, studies = two_studies
    records = [TrialRecord.read(t) for t in study_of(studies / "two-trials").trials]
    assert len(records) == 2 and sum(r.reference is None for r in records) == 1


def test_the_report_opens_with_what_the_search_bought(two_studies):
    _, studies = two_studies
    for name in ("two-trials", "four-trials"):
        answer = json.loads((studies / name / "report.json").read_text())
        first = (studies / name / "report.md").read_text().splitlines()[2]
        assert answer["verdict"] and first == " ".join(answer["verdict"])
        assert first.startswith(("The headline is", "No front point"))


def test_speedups_carry_their_range(two_studies):
    _, studies = two_studies
    table = pd.read_csv(studies / "four-trials" / "pareto.csv")
    timed = table[table["ort_b1_speedup"].notna()]
    assert not timed.empty
    assert (timed["ort_b1_speedup_low"] <= timed["ort_b1_speedup"]).all()
    assert (timed["ort_b1_speedup"] <= timed["ort_b1_speedup_high"]).all()


def test_the_summary_table_has_a_row_per_study_and_writes_outside_them(two_studies, capsys):
    root, studies = two_studies
    before = {p.name: folder_hash(p) for p in studies.iterdir()}
    code, out, err = cli(summary, ["--studies", str(studies), "--out", str(root / "table")], capsys)
    assert code == 0, err
    table = pd.read_csv(root / "table.csv")
    assert sorted(table["study"].map(lambda s: s.rsplit("/", 1)[-1])) == ["four-trials", "two-trials"]
    for _, r in table.iterrows():
        answer = json.loads((studies / r["study"].rsplit("/", 1)[-1] / "report.json").read_text())
        assert r["model"] == "lenet5" and r["budget"] == "smoke" and r["device"] == "cpu" and r["wall_s"] > 0
        assert r["original_size_mb"] == pytest.approx(answer["baseline"]["size_mb"])
        if answer["headline"]:
            assert r["pruned_pct"] == pytest.approx(answer["headline"]["pruned_pct"])
            assert r["headline"] in ("searched", "reference")
    text = (root / "table.md").read_text()
    assert "| Model | Original Size | Pruned Size | Pruned % | Accuracy Drop |" in text and text.count("| lenet5 |") == 2
    assert (root / "table.png").stat().st_size > 5_000
    assert {p.name: folder_hash(p) for p in studies.iterdir()} == before  # read only


def test_the_summary_refuses_to_write_into_a_study(two_studies, capsys):
    _, studies = two_studies
    before = folder_hash(studies / "two-trials")
    code, _, err = cli(summary, ["--studies", str(studies), "--out", str(studies / "two-trials" / "report")], capsys)
    assert code != 0 and "inside a study folder" in err
    assert folder_hash(studies / "two-trials") == before


def test_the_summary_replaces_an_existing_out_only_with_force(two_studies, tmp_path, capsys):
    """Issue 41 item 8: an existing --out X.md was replaced without a word."""
    _, studies = two_studies
    (tmp_path / "table.md").write_text("my notes")
    args = ["--studies", str(studies), "--out", str(tmp_path / "table")]
    code, _, err = cli(summary, args, capsys)
    assert code == 2 and err.count("\n") == 1 and "table.md exists; pass --force" in err, err
    assert (tmp_path / "table.md").read_text() == "my notes" and not (tmp_path / "table.csv").exists()
    code, _, err = cli(summary, args + ["--force"], capsys)
    assert code == 0 and "| lenet5 |" in (tmp_path / "table.md").read_text(), err
