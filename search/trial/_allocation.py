"""Per-key ratios from a sensitivity map, without any fine-tune: the peers' threshold allocation and
a cost-aware one. Pure functions of the map; the measure of a whole plan is the caller's.

The map holds, for every plan key pruned *alone* at each ratio of a grid, the validation accuracy
after adaptive BatchNorm and the amount of the study's size measure it saves. Each key's drop is
fitted non-decreasing in the ratio (pool-adjacent-violators, AIMET's "monotone fit"), with a drop of
0 at ratio 0; noise that makes a heavier ratio look better is averaged away, never allocated.

- :func:`threshold_plan` is NVIDIA Model Optimizer's FastNAS / AIMET's greedy selection: one
  degradation threshold, every key at the largest ratio whose fitted drop stays under it. It treats
  every key alike, though one LeNet5 ``conv2`` channel carries ~3,150 parameters and one ``conv1``
  channel ~430.
- :func:`costaware_plan` weighs each key's drop against the measure it saves: keys advance along the
  lower convex hull of their (saved, drop) curves in order of the cheapest drop per unit saved (the
  greedy solution of the continuous knapsack, HALP's idea with the size as the cost).

Both are monotone in their one parameter, so :func:`bisect` finds the plan of a target measure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class SensitivityMap:
    """Accuracy and saved measure of every key pruned alone at each ratio of ``ratios``.

    ``accuracy[key][i]`` is a fraction; ``saved[key][i]`` is in the unit of ``measure`` (MB, params or
    MACs) removed from the unpruned ``base_measure``; ``base_accuracy`` is the unpruned model's on the
    same images after the same recalibration."""

    ratios: tuple[float, ...]
    base_accuracy: float
    accuracy: dict[str, tuple[float, ...]]
    saved: dict[str, tuple[float, ...]]
    measure: str
    base_measure: float

    def drops(self, key: str) -> list[float]:
        """Fitted drop in points at ratio 0 and at each grid ratio: non-decreasing, never below 0."""
        raw = [0.0] + [100.0 * (self.base_accuracy - a) for a in self.accuracy[key]]
        return [max(0.0, d) for d in isotonic(raw)]

    def savings(self, key: str) -> list[float]:
        """Saved measure at ratio 0 and at each grid ratio, made non-decreasing."""
        out, top = [0.0], 0.0
        for s in self.saved[key]:
            top = max(top, float(s))
            out.append(top)
        return out

    def grid(self) -> list[float]:
        return [0.0, *self.ratios]

    def to_plain(self) -> dict:
        return {"ratios": list(self.ratios), "base_accuracy": self.base_accuracy, "measure": self.measure,
                "base_measure": self.base_measure, "accuracy": {k: list(v) for k, v in self.accuracy.items()},
                "saved": {k: list(v) for k, v in self.saved.items()}}

    @classmethod
    def from_plain(cls, plain: dict) -> SensitivityMap:
        return cls(ratios=tuple(float(r) for r in plain["ratios"]), base_accuracy=float(plain["base_accuracy"]),
                   accuracy={k: tuple(float(a) for a in v) for k, v in plain["accuracy"].items()},
                   saved={k: tuple(float(s) for s in v) for k, v in plain["saved"].items()},
                   measure=str(plain["measure"]), base_measure=float(plain["base_measure"]))


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing least-squares fit of ``values`` (pool-adjacent-violators, equal weights)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(int(c))]


def _largest_ratio_within(xs: list[float], ys: list[float], t: float) -> float:
    """The largest x of the piecewise-linear, non-decreasing curve (xs, ys) with y <= t."""
    if t < ys[0]:
        return xs[0]
    for i in range(1, len(xs)):
        if ys[i] > t:
            rise = ys[i] - ys[i - 1]
            return xs[i - 1] + (xs[i] - xs[i - 1]) * ((t - ys[i - 1]) / rise if rise > 0 else 0.0)
    return xs[-1]


TIE = 0.01  # points per unit ratio added to every fitted drop, so keys of equal drop advance together


def threshold_plan(smap: SensitivityMap, threshold: float) -> dict[str, float]:
    """Every key at the largest ratio whose fitted drop is at most ``threshold`` points.

    Where several keys lose nothing over a range of ratios (a flat fitted drop of 0), a plain
    threshold of 0 would take them all to the range's end at once, and no threshold could give a
    plan of the sizes in between. A slope of :data:`TIE` points per unit ratio breaks those ties
    towards the uniform plan, far below any measurable drop."""
    grid = smap.grid()
    return {k: _largest_ratio_within(grid, [d + TIE * r for d, r in zip(smap.drops(k), grid)], threshold)
            for k in smap.accuracy}


def _hull(xs: list[float], ys: list[float], rs: list[float]) -> list[tuple[float, float, float]]:
    """The lower convex hull of the points (saved, drop), from (0, 0), as (saved, drop, ratio)."""
    hull: list[tuple[float, float, float]] = []
    for p in sorted(zip(xs, ys, rs)):
        if hull and p[0] <= hull[-1][0]:
            if p[1] < hull[-1][1] or (p[1] == hull[-1][1] and p[2] > hull[-1][2]):
                hull.pop()  # the same saving at less drop (or a larger ratio at the same drop)
            else:
                continue
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # the middle point is not below the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def costaware_segments(smap: SensitivityMap) -> list[tuple[str, float, float, float, float]]:
    """Every key's hull segments (key, saved from, saved to, ratio from, ratio to), cheapest drop per
    unit saved first. Convex hulls make each key's slopes increase, so the order keeps each key's
    segments in sequence."""
    grid, segments = smap.grid(), []
    for k in smap.accuracy:
        hull = _hull(smap.savings(k), smap.drops(k), grid)
        for (x0, y0, r0), (x1, y1, r1) in zip(hull, hull[1:]):
            if x1 > x0 and r1 > r0:
                segments.append(((y1 - y0) / (x1 - x0), k, x0, x1, r0, r1))
    segments.sort(key=lambda s: s[0])
    return [s[1:] for s in segments]


def costaware_plan(smap: SensitivityMap, budget: float) -> dict[str, float]:
    """The plan that saves ``budget`` (in the map's measure, counted as if the keys' savings added
    up) along the cheapest segments first; the last segment is taken in part."""
    plan = {k: 0.0 for k in smap.accuracy}
    left = budget
    for key, x0, x1, r0, r1 in costaware_segments(smap):
        if left <= 0:
            break
        take = min(1.0, left / (x1 - x0))
        plan[key] = r0 + take * (r1 - r0)
        left -= x1 - x0
    return plan


def additive_saving(smap: SensitivityMap, plan: dict[str, float]) -> float:
    """The measure ``plan`` saves if the keys' savings added up (interpolated on the grid)."""
    grid = smap.grid()
    total = 0.0
    for k, r in plan.items():
        xs = smap.savings(k)
        i = max(j for j in range(len(grid)) if grid[j] <= r)
        if i == len(grid) - 1:
            total += xs[-1]
        else:
            total += xs[i] + (xs[i + 1] - xs[i]) * (r - grid[i]) / (grid[i + 1] - grid[i])
    return total


def bisect_parameter(measure_at: Callable[[float], float], target: float, low: float, high: float, *,
                     steps: int = 24) -> float:
    """The smallest ``u`` in [low, high] (to ``steps`` halvings) whose ``measure_at(u)``, non-increasing
    in ``u``, is at most ``target``; ``high`` when none is."""
    if measure_at(low) <= target:
        return low
    if measure_at(high) > target:
        return high
    for _ in range(steps):
        mid = (low + high) / 2
        if measure_at(mid) <= target:
            high = mid
        else:
            low = mid
    return high


def bisect(plan_of: Callable[[float], dict[str, float]], measure_of: Callable[[dict[str, float]], float],
           target: float, low: float, high: float, *, steps: int = 24) -> dict[str, float]:
    """The lightest plan of ``plan_of(u)`` (pruning more as ``u`` grows) whose measure is at most
    ``target``; ``high``'s plan when none is (the heaviest there is)."""
    return plan_of(bisect_parameter(lambda u: measure_of(plan_of(u)), target, low, high, steps=steps))
