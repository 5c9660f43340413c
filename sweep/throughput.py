"""Throughput arithmetic for the benchmark and the --dry-run projection: no Ray, no GPU.

    rate = aggregate_rate([[(wall, step), ...], ...])      # steps/s of trials running at once
    fraction = overhead_fraction(overhead_s=45.0, steps=10_000, steps_per_s=19.0)
    seconds = project_sweep([10_000] * 16 + [50_000] * 16, slots=8, rates={1: 40, 8: 150}, overhead_s=60)

Rates come from `python -m sweep.bench` (sweep/bench.py), measured through the real Ray Tune path.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BENCH_FILE = Path("sweep-bench") / "bench.json"  # written by sweep.bench, read by --dry-run


def aggregate_rate(series: Sequence[Sequence[tuple[float, int]]]) -> dict:
    """Steps/s of trials that trained at the same time, from each trial's (wall seconds, step) reports.

    The window runs from the moment the last trial made its first report (every trial past its
    warm-up: compilation, CUDA graph capture) to the moment the first trial made its last training
    report (none yet in its final evaluation); each trial's step count is interpolated at both ends.
    """
    if not series or any(len(s) < 2 for s in series):
        raise ValueError("each trial needs at least two training reports; run longer trials.")
    start = max(s[0][0] for s in series)
    end = min(s[-1][0] for s in series)
    if end <= start:
        raise ValueError(
            f"the trials' steady phases do not overlap (window {end - start:.1f} s): run longer trials."
        )
    per_trial = []
    for s in series:
        wall, steps = np.array([t for t, _ in s], dtype=float), np.array([k for _, k in s], dtype=float)
        per_trial.append(float(np.interp(end, wall, steps) - np.interp(start, wall, steps)) / (end - start))
    return {"aggregate": sum(per_trial), "per_trial": per_trial, "window_s": end - start}


def overhead_fraction(overhead_s: float, steps: int, steps_per_s: float) -> float:
    """Share of a trial's wall time spent outside training steps."""
    return overhead_s / (overhead_s + steps / steps_per_s)


def rate_at(rates: dict[int, float], running: int) -> float:
    """Aggregate steps/s with `running` trials at once: measured, or interpolated linearly between
    measured counts (flat beyond the largest)."""
    counts = sorted(rates)
    return float(np.interp(running, counts, [rates[n] for n in counts]))


def project_sweep(
    trial_steps: Sequence[int], slots: int, rates: dict[int, float], overhead_s: float
) -> float:
    """Wall seconds for trials of `trial_steps` steps, `slots` at a time in the given order.

    Each trial trains, sharing the aggregate rate equally with the trials training beside it,
    then spends `overhead_s` outside training (set-up, warm-up, evaluation, logging) holding its slot.
    """
    if slots < 1 or not rates:
        raise ValueError(f"need at least one slot and one measured rate, got {slots} and {rates}.")
    queue = list(trial_steps)[::-1]
    training: list[float] = []  # remaining steps of each trial in training
    finishing: list[float] = []  # heap: times at which trials in their overhead free their slot
    now = 0.0
    while queue or training or finishing:
        while queue and len(training) + len(finishing) < slots:
            training.append(float(queue.pop()))
        per_trial = rate_at(rates, len(training)) / len(training) if training else 0.0
        next_done = min(training) / per_trial if training else float("inf")
        next_free = finishing[0] - now if finishing else float("inf")
        step = min(next_done, next_free)
        now += step
        training = [left - per_trial * step for left in training]
        for left in [x for x in training if x <= 1e-6]:
            training.remove(left)
            heapq.heappush(finishing, now + overhead_s)
        while finishing and finishing[0] <= now + 1e-9:
            heapq.heappop(finishing)
    return now
