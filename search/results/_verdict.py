"""What the search bought, in the report's first lines: whether the headline is a searched plan or a
classic reference, its gain over the best reference no larger, its size against the smallest
reference that holds the same accuracy bar, and the nearest searched point to the bar when the
search missed it."""
from __future__ import annotations

import pandas as pd

from pruning import BaselineFigures
from search.results._render import within_drop
from search.storage import TrialRecord


def verdict(done: list[tuple[object, TrialRecord]], headline: pd.Series | None, baseline: BaselineFigures,
            max_drop: float, paired=None) -> list[str]:
    """Plain sentences for report.md and the console. ``done``: (trial, record) of every fine-tuned
    trial; accuracies compared are validation accuracies after the same search fine-tune (points);
    ``paired`` (:class:`search.results._noise.Paired`) gives each gain its paired interval."""
    searched = [(t.number, r) for t, r in done if r.reference is None]
    bar = baseline.val_accuracy - max_drop / 100
    never = (f"The sampler never ran: all {len(done)} fine-tuned trials are classic references; give the "
             f"study more trials (at most half are references).")
    if headline is None:
        return [f"No front point is within {max_drop} pts of the baseline.", _nearest(searched, bar) if searched else never]
    number, size = int(headline["trial"]), float(headline["size_mb"])
    own = next(r for t, r in done if t.number == number)
    if not own.reference:
        return [f"The headline is a searched plan (trial {number}).", _gain(headline_gain(done, headline, paired)),
                _size_gain(size_gain(done, headline, baseline, max_drop))]
    lines = [f"The headline is the classic {own.reference} {own.reference_ratio:g} reference (trial {number}), "
             "not a searched plan: the search did not beat it at this size.", _gain(headline_gain(done, headline, paired))]
    smaller = [(n, r) for n, r in searched if r.size_mb < size]
    if not searched:
        return lines + [never]
    return lines + [_nearest(smaller, bar) if smaller else "No searched trial is smaller than the headline."]


def headline_gain(done: list[tuple[object, TrialRecord]], headline: pd.Series | None, paired=None) -> dict | None:
    """The headline against the most accurate other reference of no larger size, after the same
    search fine-tune: {"reference", "trial", "size_mb", "gain_pts"}, with "low", "high" (the paired
    95 % interval) and "inside_noise" when ``paired`` is given, and "reference_loss", "loss_low", "loss_high"
    (what that reference lost against the baseline, the model the study pruned from, paired) when it has
    the baseline's hits; None when there is no such one."""
    if headline is None:
        return None
    number, size = int(headline["trial"]), float(headline["size_mb"])
    own = next((r for t, r in done if t.number == number), None)
    rivals = [(t.number, r) for t, r in done if r.reference and r.size_mb <= size * (1 + 1e-9) and t.number != number]
    if own is None or not rivals:
        return None
    n, best = max(rivals, key=lambda p: p[1].val_accuracy)
    gain = {"reference": f"{best.reference} {best.reference_ratio:g}", "trial": n, "size_mb": best.size_mb,
            "gain_pts": 100 * (own.val_accuracy - best.val_accuracy)}
    if paired is not None:
        g = paired.gain(number, n)
        gain.update(gain_pts=g.points, low=g.low, high=g.high, inside_noise=g.inside_noise, where=paired.where())
        loss = paired.loss(n)
        if loss is not None:
            gain.update(reference_loss=loss.points, loss_low=loss.low, loss_high=loss.high)
    return gain


def size_gain(done: list[tuple[object, TrialRecord]], headline: pd.Series | None, baseline: BaselineFigures,
              max_drop: float) -> dict | None:
    """The headline's size against the smallest reference that holds the same accuracy bar at search
    time (what the search bought in size): {"reference", "trial", "size_mb", "ratio"} (reference
    size over the headline's); None without a headline or without such a reference."""
    if headline is None:
        return None
    number, size = int(headline["trial"]), float(headline["size_mb"])
    holding = [(t.number, r) for t, r in done if r.reference and t.number != number
               and within_drop(100 * (baseline.val_accuracy - r.val_accuracy), max_drop)]
    if not holding:
        return None
    n, best = min(holding, key=lambda p: p[1].size_mb)
    return {"reference": f"{best.reference} {best.reference_ratio:g}", "trial": n, "size_mb": best.size_mb,
            "ratio": best.size_mb / size}


def _size_gain(gain: dict | None) -> str:
    if gain is None:
        return "No reference holds the accuracy bar at search time: the search alone reached it."
    where = (f"The smallest reference within the same bar ({gain['reference']}, trial {gain['trial']}, "
             f"{gain['size_mb']:.4f} MB, at search time)")
    if gain["ratio"] <= 1.0:
        return f"{where} is no larger than the headline: the search bought no size there."
    return f"{where} is {gain['ratio']:.2f}x the headline's size: the headline is {100 * (1 - 1 / gain['ratio']):.1f} % smaller."


def _gain(gain: dict | None) -> str:
    if gain is None:
        return "No other reference is as small as the headline: no gain to state at its size."
    noise = ""
    if "low" in gain:
        noise = (f" (paired 95 % interval {gain['low']:+.2f} to {gain['high']:+.2f}"
                 + (": inside the noise)" if gain["inside_noise"] else ")"))
    where = f" {gain['where']}" if "where" in gain else ""
    room = ""
    if "reference_loss" in gain:
        room = (f" That reference lost {gain['reference_loss']:+.2f} pts ({gain['loss_low']:+.2f} to "
                f"{gain['loss_high']:+.2f}) against the baseline"
                + (": no loss beyond the noise, so no plan of its size could win by more than the noise."
                   if gain["loss_low"] <= 0 else "."))
    return (f"Gain over the best reference no larger ({gain['reference']}, trial {gain['trial']}, "
            f"{gain['size_mb']:.4f} MB): {gain['gain_pts']:+.2f} pts validation accuracy after the same "
            f"fine-tune{where}{noise}.{room}")


def _nearest(candidates: list[tuple[int, TrialRecord]], bar: float) -> str:
    """The searched trial closest to the accuracy bar (the most accurate; the smallest among ties)."""
    n, best = max(candidates, key=lambda p: (p[1].val_accuracy, -p[1].size_mb))
    short = 100 * (bar - best.val_accuracy)
    where = f"{short:.2f} pts short of the bar" if short > 0 else "at the bar at search time but not among the recovered points"
    return (f"Nearest searched point to the bar: trial {n}, {best.size_mb:.4f} MB ({best.pruned_pct:.1f} % "
            f"smaller), val accuracy {best.val_accuracy:.4f}, {where} (val {bar:.4f}).")
