"""Gains with their noise: the paired bootstrap interval, and the references compared with their searched
rivals on the validation images the search never read (the rival is the best of many on the search's own
images, which flatter it there)."""
from __future__ import annotations

import optuna
import pytest
import torch

from pruning import BaselineFigures
from search.results._noise import Paired, paired_gain
from search.results import reference_gaps
from search.results._verdict import headline_gain, verdict


def _hits(n: int, wrong: list[int]) -> torch.Tensor:
    hits = torch.ones(n, dtype=torch.bool)
    hits[wrong] = False
    return hits


def test_a_gain_on_the_same_images_is_paired():
    same = _hits(1000, list(range(100)))
    g = paired_gain(same, same)
    assert g.points == 0 and g.low == 0 == g.high and g.inside_noise
    # a wins on 30 images, never loses: +3.0 pts, the interval above 0 though each accuracy alone has σ ≈ 1 pt
    g = paired_gain(_hits(1000, list(range(70))), same)
    assert g.points == pytest.approx(3.0) and g.low > 0 and not g.inside_noise
    # 30 up and 20 down: +1.0 pt, inside the noise on 1,000 images, beyond it on 10,000
    up = torch.zeros(1000, dtype=torch.bool)
    up[:30] = True
    down = torch.zeros(1000, dtype=torch.bool)
    down[30:50] = True
    small = paired_gain(up, down)
    big = paired_gain(up.repeat(10), down.repeat(10))
    assert small.points == pytest.approx(1.0) == big.points
    assert small.inside_noise and not big.inside_noise
    with pytest.raises(ValueError):
        paired_gain(up, up[:10])


def _study(points) -> optuna.Study:
    """(reference or None, size MB, val accuracy on the search's images) per trial."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for kind, size, acc in points:
        attrs = {"val_accuracy": acc, "size_mb": size, "pruned_pct": 100 * (1 - size)}
        if kind:
            attrs.update(reference=kind.split()[0], reference_ratio=float(kind.split()[1]))
        study.add_trial(optuna.trial.create_trial(values=[acc, size], user_attrs=attrs))
    return study


def test_references_are_compared_with_their_rivals_on_the_pairs_images():
    # on the search's images trial 1 beat trial 2 and both beat the reference by 2-3 pts; on the held-out
    # images trial 1 is 1 pt *below* the reference: its lead was the search's images flattering it
    study = _study([("uniform 0.5", 0.5, 0.88), (None, 0.45, 0.91), (None, 0.40, 0.90)])
    held = {0: _hits(2000, list(range(200))), 1: _hits(2000, list(range(220))), 2: _hits(2000, list(range(190)))}
    paired = Paired(held.__getitem__, images=2000, held_out=True)
    gaps = reference_gaps(study, paired)
    row = gaps.iloc[0]
    assert row["searched_trial"] == 1  # chosen on the search's images, as the search would have shipped it
    assert row["gain_pts"] == pytest.approx(-1.0)
    assert row["reference_val_accuracy"] == pytest.approx(0.90) and row["searched_val_accuracy"] == pytest.approx(0.89)
    assert row["gain_low"] < 0 and row["gain_high"] < 0  # 20 images down, none up: a loss beyond the noise
    assert paired.where() == "on the 2,000 validation images the search never read"
    # without the pairs, the search's own figures
    plain = reference_gaps(study).iloc[0]
    assert plain["gain_pts"] == pytest.approx(3.0) and plain["reference_val_accuracy"] == pytest.approx(0.88)


def test_each_reference_shows_what_it_lost_against_the_unpruned_model_its_room_to_be_beaten():
    """A reference that keeps the unpruned model's accuracy within the noise cannot be beaten beyond it by a plan
    of its size unless that plan beats the unpruned model: the report shows the reference's own loss, paired."""
    from search.results._render import _references
    study = _study([("uniform 0.3", 0.7, 0.905), ("uniform 0.7", 0.3, 0.85), (None, 0.65, 0.91), (None, 0.25, 0.88)])
    baseline = _hits(2000, list(range(180)))                                     # the unpruned model: 0.91
    held = {0: _hits(2000, list(range(2, 184))), 1: _hits(2000, list(range(300))),  # lost 0.1 and 6.0 pts
            2: _hits(2000, list(range(182))), 3: _hits(2000, list(range(240)))}
    gaps = reference_gaps(study, Paired(held.__getitem__, images=2000, held_out=True, baseline=lambda: baseline))
    mild, deep = gaps.set_index("ratio").loc[0.3], gaps.set_index("ratio").loc[0.7]
    assert mild["reference_loss"] == pytest.approx(0.1) and mild["loss_low"] < 0  # 4 images down, 2 up: noise
    assert mild["gain_low"] < 0 < mild["gain_high"]  # so the search's gain is too, and could be little more
    assert deep["reference_loss"] == pytest.approx(6.0) and deep["loss_low"] > 0
    assert deep["gain_pts"] == pytest.approx(3.0) and deep["gain_low"] > 0
    table = "\n".join(_references(gaps, "on the 2,000 validation images the search never read"))
    assert "reference's loss (pts, 95 %)" in table and "only by beating the baseline" in table
    row = next(line for line in table.splitlines() if line.startswith("| uniform | 0.3 |"))
    assert "+0.10 (" in row and "no loss beyond the noise" in row
    deep_row = next(line for line in table.splitlines() if line.startswith("| uniform | 0.7 |"))
    assert "no loss beyond the noise" not in deep_row
    # without the unpruned model's hits: no such column, the table as before
    plain = reference_gaps(study, Paired(held.__getitem__, images=2000, held_out=True))
    assert plain["reference_loss"].isna().all()
    assert "reference's loss" not in "\n".join(_references(plain))


def test_the_verdict_states_the_headlines_gain_on_the_held_out_images():
    import pandas as pd
    from search.storage import completed
    study = _study([("uniform 0.5", 0.4, 0.88), (None, 0.45, 0.91)])
    held = {0: _hits(2000, list(range(200))), 1: _hits(2000, list(range(180)))}
    paired = Paired(held.__getitem__, images=2000, held_out=True)
    head = pd.Series({"trial": 1, "size_mb": 0.45})
    gain = headline_gain(completed(study), head, paired)
    assert gain["gain_pts"] == pytest.approx(1.0) and gain["trial"] == 0
    base = BaselineFigures(params=1000, macs=1000, size_mb=1.0, val_accuracy=0.91, test_accuracy=0.91)
    lines = verdict(completed(study), head, base, 1.0, paired)
    assert "+1.00 pts validation accuracy after the same fine-tune on the 2,000 validation images the search " \
           "never read" in lines[1]
    assert "lost" not in lines[1]  # no unpruned model's hits: nothing said of the reference's own loss
    # with them: the reference (200 wrong) lost 0.10 pt against an unpruned model with 198 wrong, inside the noise
    line = verdict(completed(study), head, base, 1.0, Paired(held.__getitem__, images=2000, held_out=True,
                                                             baseline=lambda: _hits(2000, list(range(198)))))[1]
    assert "That reference lost +0.10 pts" in line and "no loss beyond the noise" in line
    # now it lost 5.0 pts: room for the search's gain
    line = verdict(completed(study), head, base, 1.0, Paired(held.__getitem__, images=2000, held_out=True,
                                                             baseline=lambda: _hits(2000, list(range(100)))))[1]
    assert "That reference lost +5.00 pts" in line and "no loss beyond" not in line


def test_the_under_trained_warning_reads_the_holdout_where_the_points_were_judged_there():
    """The most accurate candidate on the searched images beats a converged baseline by chance; judged on the
    holdout, a recovered point must beat the baseline's accuracy there."""
    from search.results._report import undertrained
    from search.storage import RecoveryRecord

    base = BaselineFigures(params=10, macs=10, size_mb=1.0, val_accuracy=0.907)
    study = optuna.create_study(directions=["maximize", "minimize"])
    flattered = dict(trial=3, val_accuracy=0.914, test_accuracy=None, checkpoint="a", epochs=3, seconds=1.0)
    judged = {3: RecoveryRecord(**flattered, holdout_val_accuracy=0.9016, holdout_baseline_val_accuracy=0.9074,
                                holdout_images=5000)}
    assert undertrained(study, judged, base, 0.5) is None  # +0.7 on the searched images, -0.58 held out
    above = {3: RecoveryRecord(**flattered, holdout_val_accuracy=0.9150, holdout_baseline_val_accuracy=0.9074,
                               holdout_images=5000)}
    line = undertrained(study, above, base, 0.5)
    assert "recovered trial 3 reaches val accuracy 0.9150 on 5,000 validation images the search never read, 0.76" in line
    assert "0.9074" in line
    unjudged = {3: RecoveryRecord(**flattered)}  # no holdout: the search's own images, as before
    assert "0.70 points above the baseline's 0.9070" in undertrained(study, unjudged, base, 0.5)
    assert undertrained(study, unjudged, base, 1.0) is None
