"""Multi-objective asynchronous successive halving (MO-ASHA; Salinas et al. 2021, as in Syne Tune).

A candidate's fine-tune is cut into rungs (rung 0 is the adaptive-BatchNorm proxy before any
fine-tune). At each rung the candidate's validation accuracy is recorded, and it goes on only if it
ranks in the top ``ceil(n / eta)`` of the ``n`` searched trials that have reached that rung (the
reference plans are measured at every rung but neither stopped nor ranked against), ranked by
non-dominated sorting on (accuracy at the rung, max; the study's measures, min: size, and latency in a
three-objective study) and, inside the front that straddles
the cut, by crowding distance (the extremes and the sparse parts of the front first, so the
promoted set keeps its spread over sizes). While fewer than ``min_trials`` have reached a rung,
everyone goes on. Decisions read only what is in storage, so any number of workers take them
without a barrier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Point = tuple[float, ...]  # (accuracy at the rung, *measures): accuracy maximized, the measures minimized


def rung_steps(total_steps: int, fractions: tuple[float, ...]) -> list[int]:
    """The fine-tune step of each rung (a fraction 0 is the proxy, before any step), all before the last."""
    return sorted({min(total_steps - 1, max(0, round(f * total_steps))) for f in fractions})


def _dominates(a: Point, b: Point) -> bool:
    mine, theirs = (-a[0], *a[1:]), (-b[0], *b[1:])  # every axis minimized
    return all(x <= y for x, y in zip(mine, theirs)) and mine != theirs


def fronts(points: list[Point]) -> list[list[int]]:
    """Indices of ``points`` by non-dominated front (front 0 first), each in input order."""
    remaining, out = list(range(len(points))), []
    while remaining:
        front = [i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)]
        out.append(front)
        remaining = [i for i in remaining if i not in front]
    return out


def crowding(points: list[Point], front: list[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each member of ``front`` (infinite at the extremes)."""
    dist = {i: 0.0 for i in front}
    for axis in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][axis])
        lo, hi = points[ordered[0]][axis], points[ordered[-1]][axis]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi > lo:
            for prev, mid, nxt in zip(ordered, ordered[1:], ordered[2:]):
                dist[mid] += (points[nxt][axis] - points[prev][axis]) / (hi - lo)
    return dist


def ranking(points: list[Point]) -> list[int]:
    """All indices, best first: by front, then by crowding distance (ties: the earlier trial)."""
    order = []
    for front in fronts(points):
        dist = crowding(points, front)
        order += sorted(front, key=lambda i: (-dist[i], i))
    return order


@dataclass(frozen=True)
class Decision:
    go_on: bool
    reason: str


def decide(me: Point, others: list[Point], *, eta: int, min_trials: int) -> Decision:
    """Whether a trial at ``me`` continues past a rung that ``others`` have also reached."""
    points = others + [me]
    n = len(points)
    if n < min_trials:
        return Decision(True, f"{n} of the {min_trials} trials needed for a decision have reached this rung")
    keep = math.ceil(n / eta)
    position = ranking(points).index(n - 1)
    verdict = f"ranks {position + 1} of {n} at this rung; the top {keep} (1/{eta}) go on"
    return Decision(position < keep, verdict)
