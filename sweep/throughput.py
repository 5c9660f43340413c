"""Throughput arithmetic for the benchmark and the --dry-run projection: no Ray, no GPU.

    rate = aggregate_rate([[(wall, step), ...], ...])      # steps/s of trials running at once
    fraction = overhead_fraction(overhead_s=45.0, steps=10_000, steps_per_s=19.0)
    seconds = project_sweep([10_000] * 16 + [50_000] * 16, slots=8, rates={1: 40, 8: 150}, overhead_s=60)

Rates come from `python -m sweep.bench` (sweep/bench.py), measured through the real Ray Tune path.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from models.spec import FRAME_RATE
from sweep.config import PAPER_STEPS, Preset
from sweep.objective import STARTED, STATUS, TIME_ATTR, WALL

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
    per_trial = [_steps_between(curve, start, end) / (end - start) for curve in _curves(series)]
    return {"aggregate": sum(per_trial), "per_trial": per_trial, "window_s": end - start}


def rate_when_full(series: Sequence[Sequence[tuple[float, int]]], slots: int) -> dict:
    """Steps/s of the trials while `slots` of them trained at once (every slot busy training), from each
    trial's (wall seconds, step) training reports; a trial trains from its first report (past its
    warm-up) to its last. Sums over every such stretch of a sweep, across its waves."""
    curves = _curves([s for s in series if len(s) >= 2])
    times = sorted({t for wall, _ in curves for t in (wall[0], wall[-1])})
    steps, seconds = 0.0, 0.0
    for a, b in itertools.pairwise(times):
        active = [c for c in curves if c[0][0] <= a and b <= c[0][-1]]
        if len(active) < slots:
            continue
        steps += sum(_steps_between(c, a, b) for c in active)
        seconds += b - a
    if seconds <= 0:
        raise ValueError(f"no stretch of the sweep had {slots} trials training at once: run longer trials.")
    return {"aggregate": steps / seconds, "window_s": seconds}


def _curves(series: Sequence[Sequence[tuple[float, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each trial's (wall seconds, steps) reports as two arrays, for interpolation."""
    return [
        (np.array([t for t, _ in s], dtype=float), np.array([k for _, k in s], dtype=float)) for s in series
    ]


def _steps_between(curve: tuple[np.ndarray, np.ndarray], a: float, b: float) -> float:
    """Steps a trial took between wall times a and b (interpolated between its reports)."""
    wall, steps = curve
    return float(np.interp(b, wall, steps) - np.interp(a, wall, steps))


def sweep_breakdown(reports: dict[str, list[dict]], slots: int, started: float, ended: float) -> dict:
    """Where a sweep's wall time went, from Tune's stored reports of its trials and the wall clock
    (`started`, `ended`: time.time()) around the launch command.

    Returns the wall time, the training steps, the aggregate rate while every slot trained
    (rate_when_full), the time those steps alone would take at that rate (`ideal_s`) and their
    ratio; and `parts`: the wall seconds by cause, summing to the wall time. Within the trials' span,
    slot-seconds are divided by the slots: a trial's set-up, compile warm-up, training, evaluation,
    checkpoints, logging; `idle slots` is slot time no trial held (worker start-up, scheduling, the
    last wave's empty slots). `start` is the launch up to the first trial (Ray, data, the codec's
    reference, MLflow), `end` the last trial's end up to the launch's exit (summary, shutdown)."""
    trials, series = [], []
    for rows in reports.values():
        training = [r for r in rows if STATUS not in r]
        final = rows[-1]
        first = rows[0]
        begin = first.get(STARTED, first[WALL] - first["time_total_s"])  # when the trial's code began
        clock = {
            k[len("time/") :]: float(v)
            for k, v in final.items()
            if k.startswith("time/") and "/" not in k[5:]
        }
        warmup = _warmup(training)
        trials.append({
            "begin": begin, "end": final[WALL], "steps": final[TIME_ATTR], "warmup": warmup,
            **clock,
        })  # fmt: skip
        series.append([(r[WALL], r[TIME_ATTR]) for r in training])
    if not trials:
        raise ValueError("the sweep stored no reports.")
    first_begin, last_end = min(t["begin"] for t in trials), max(t["end"] for t in trials)
    slot_seconds = {name: 0.0 for name in SWEEP_PARTS[2:]}
    for t in trials:
        span = t["end"] - t["begin"]
        timed = {k: t.get(k, 0.0) for k in ("setup", "train", "probe", "evaluation", "checkpoint", "logging")}
        slot_seconds["set-up"] += timed["setup"] + max(0.0, span - sum(timed.values()))  # Ray's share too
        slot_seconds["compile warm-up"] += t["warmup"]
        slot_seconds["training"] += timed["train"] - t["warmup"]
        slot_seconds["evaluation"] += timed["evaluation"] + timed["probe"]
        slot_seconds["checkpoints"] += timed["checkpoint"]
        slot_seconds["logging"] += timed["logging"]
        slot_seconds["idle slots"] -= span
    slot_seconds["idle slots"] += slots * (last_end - first_begin)
    parts = {"start": first_begin - started, "end": ended - last_end}
    parts.update({name: value / slots for name, value in slot_seconds.items()})
    steps = sum(t["steps"] for t in trials)
    rate = rate_when_full(series, min(slots, len(trials)))
    ideal = steps / rate["aggregate"]
    wall = ended - started
    return {
        "trials": len(trials), "slots": slots, "steps": steps, "wall_s": wall,
        "aggregate_steps_per_s": rate["aggregate"], "rate_window_s": rate["window_s"], "ideal_s": ideal,
        "ratio": wall / ideal, "parts": parts,
        "per_trial": {k: statistics.median(t.get(k, 0.0) for t in trials)
                      for k in ("setup", "warmup", "evaluation", "checkpoint", "logging")}
                     | {k: _median_reported(reports, f"time/{k}") for k in _parts_of(reports)},
    }  # fmt: skip


def _parts_of(reports: dict[str, list[dict]]) -> list[str]:
    """The parts of a phase that the trials' final reports time (setup/codec, evaluation/battery, ...)."""
    keys = {k[len("time/") :] for rows in reports.values() for k in rows[-1] if k.startswith("time/")}
    return sorted(k for k in keys if "/" in k)


def _median_reported(reports: dict[str, list[dict]], key: str) -> float:
    """The median of `key` over the trials whose final report has it (a reused worker's trials do not
    report its imports); 0.0 where none has."""
    values = [float(rows[-1][key]) for rows in reports.values() if key in rows[-1]]
    return statistics.median(values) if values else 0.0


def sweep_overheads(entry: dict) -> tuple[float, float]:
    """From a sweep_breakdown: (seconds a trial holds its slot outside training, on average; the sweep's
    fixed start and end). What project_sweep needs besides the rates."""
    parts = entry["parts"]
    outside = sum(v for k, v in parts.items() if k not in ("start", "end", "training"))
    return outside * entry["slots"] / entry["trials"], parts["start"] + parts["end"]


SWEEP_PARTS = ("start", "end", "set-up", "compile warm-up", "training", "evaluation", "checkpoints",
               "logging", "idle slots")  # fmt: skip


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


def summarise_trials(reports: dict[str, list[dict]], steps: int) -> dict:
    """Aggregate rate and a typical (median) trial's time budget from Tune's stored reports."""
    series, budgets, warmups = [], [], []
    for rows in reports.values():
        training = [r for r in rows if STATUS not in r]
        final = rows[-1]
        if final.get(STATUS) != "completed":
            raise RuntimeError(f"a benchmark trial ended as {final.get(STATUS)!r}, not completed.")
        series.append([(r[WALL], r[TIME_ATTR]) for r in training])
        budgets.append(final)
        warmups.append(_warmup(training))
    rate = aggregate_rate(series)
    per_trial = statistics.median(rate["per_trial"])

    def median(key: str) -> float:
        return statistics.median(float(b.get(key, 0.0)) for b in budgets)

    phases = {k: median(f"time/{k}") for k in ("train", "probe", "evaluation", "logging", "checkpoint")}
    trial = {
        "wall_s": median("time_total_s"),
        **{f"{k}_s": v for k, v in phases.items()},
        "setup_s": median("time_total_s") - sum(phases.values()),  # the trial's build and Ray's part
        "build_s": median("time/setup"),  # of which the trial's build (codec, VAE, MLflow run, restore)
        "warmup_s": statistics.median(warmups),
        "eval_battery_s": median("time/evaluation/battery"),
        "eval_recon_audio_s": median("time/evaluation/recon_audio"),
        "gpu_peak_gib": max(float(b.get("gpu/peak_gib", 0.0)) for b in budgets),
    }
    return {
        "steps": steps,
        "aggregate_steps_per_s": rate["aggregate"],
        "per_trial_steps_per_s": per_trial,
        "window_s": rate["window_s"],
        "trial": trial,
    }


def _warmup(training: list[dict]) -> float:
    """Seconds the first report interval took beyond its steps at the trial's later pace
    (compilation, CUDA graph capture, first-touch allocations)."""
    clock = [(r[TIME_ATTR], r.get("time/train", 0.0)) for r in training]
    if len(clock) < 3:
        return 0.0
    pace = statistics.median((t2 - t1) / (s2 - s1) for (s1, t1), (s2, t2) in itertools.pairwise(clock[1:]))
    return max(0.0, clock[0][1] - clock[0][0] * pace)


def overhead_table(results: dict, preset: Preset, steps: int = PAPER_STEPS) -> list[dict]:
    """Per tune entry: the time outside training of a `steps`-step trial, with the battery at paper
    scale (the battery part's figure) in place of the bench's small-corpus battery."""
    battery = results.get("battery", {}).get("seconds_total")
    rows = []
    for entry in results.get("tune", []):
        t, scale = entry["trial"], steps / entry["steps"]
        paper_battery = battery if battery is not None else t["eval_battery_s"]
        outside = {
            "setup": t["setup_s"],
            "warm-up": t["warmup_s"],
            "battery": paper_battery,
            # decoding scales with the utterances decoded: the preset's count, not the bench corpus's
            "recon+audio": t["eval_recon_audio_s"]
            * preset.recon_utterances
            / max(1, min(preset.recon_utterances, t["eval_utterances"])),
            "logging": t["logging_s"] * scale,
            "checkpoints": t["checkpoint_s"] * scale,
        }
        total = sum(outside.values())
        train = steps / entry["per_trial_steps_per_s"]
        rows.append({
            "trials": entry["trials"], "mps": entry["mps"], "steps": steps, "train_s": train,
            "outside_s": outside, "outside_total_s": total, "setup_build_s": t.get("build_s"),
            "fraction": overhead_fraction(total, steps, entry["per_trial_steps_per_s"]),
        })  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    """Every part in `results` as markdown tables (pandas)."""
    m = results["machine"]
    out = [f"# sweep.bench on {m['device']} ({m['cpus']} CPUs, torch {m['torch']}), {results['updated']}"]
    if "step" in results:
        s = results["step"]
        steps = pd.DataFrame(s["variants"])
        eager = steps.loc[steps["variant"] == "eager", "steps_per_s"].iloc[0]
        steps["vs eager"] = steps["steps_per_s"] / eager
        a = s["agreement"]
        out += [
            f"\n## One trial: batch {s['batch']} x {s['crop_seconds']:g} s, codec {s['codec']}\n",
            _table(
                steps,
                {
                    "variant": "step variant",
                    "steps_per_s": "VAE steps/s",
                    "vs eager": "vs eager",
                    "warmup_s": "warm-up s",
                    "peak_gib": "peak GPU GiB",
                },
            ),  # fmt: skip
            f"\nFast vs eager, one step from the same weights, batch and noise: loss terms max. rel. error "
            f"{a['loss_terms_max_rel_err']:.1e}, gradient rel. error {a['grad_rel_err']:.1e}; after "
            f"{a['trajectory_steps']} steps the mean loss of the last 20 differs by "
            f"{100 * a['trajectory_last20_rel_diff']:.2f} %.",
        ]
    if "battery" in results:
        b = results["battery"]
        seconds = b["frames_per_utterance"] / FRAME_RATE
        line = (
            f"\n## Battery at scale: {b['utterances']} utterances x {seconds:g} s, D = {b['dim']}: "
            f"{b['seconds_total']:.1f} s (fit {b['seconds_by_phase']['fit']:.1f} s)"
        )
        if "without_cuda_graphs" in b:
            e = b["without_cuda_graphs"]
            line += (
                f"; without CUDA graphs {e['seconds_total']:.1f} s (fit {e['seconds_by_phase']['fit']:.1f} s)"
            )
        out.append(line)
    if results.get("tune"):
        tune = pd.DataFrame(
            [
                {
                    **e,
                    "gpu": f"1/{e['trials']}" if e["gpu_per_trial"] else "0",
                    "mps": "on" if e["mps"] else "off",
                    "peak": e["trial"]["gpu_peak_gib"],
                    "warmup": e["trial"]["warmup_s"],
                }  # fmt: skip
                for e in results["tune"]
            ]
        )
        out += [
            "\n## N trials sharing one GPU, through Ray Tune\n",
            _table(
                tune,
                {
                    "trials": "trials",
                    "gpu": "GPU each",
                    "mps": "MPS",
                    "aggregate_steps_per_s": "aggregate steps/s",
                    "per_trial_steps_per_s": "per trial",
                    "window_s": "window s",
                    "warmup": "warm-up s",
                    "peak": "peak GiB/trial",
                },
            ),  # fmt: skip
        ]
    if results.get("sweeps"):
        rows = [
            {"space": e["space"], "trials": e["trials"], "steps": e["steps"] // e["trials"],
             "GPUs": e["gpus"], "MPS": "on" if e["mps"] else "off", "without": e["without"] or "-",
             "wall s": e["wall_s"], "training at the aggregate rate s": e["ideal_s"], "ratio": e["ratio"],
             "aggregate steps/s": e["aggregate_steps_per_s"], "errored": len(e["errored"])}
            for e in results["sweeps"]
        ]  # fmt: skip
        parts = [{"space": e["space"], "trials": e["trials"], "without": e["without"] or "-", **e["parts"]}
                 for e in results["sweeps"]]  # fmt: skip
        out += [
            "\n## Whole sweeps through sweep.launch (--scheduler none): wall time against training alone\n",
            _table(pd.DataFrame(rows)),
            "\nWhere the wall time went (seconds; slot time divided by the slots, so the columns add up to"
            " the wall time):\n",
            _table(pd.DataFrame(parts)),
            "\nThe start, a new worker, the build and the end, stage by stage (seconds; trials' medians):\n",
            _table(pd.DataFrame([_stages(e) for e in results["sweeps"]])),
        ]
    if results.get("overhead"):
        rows = [
            {"trials": r["trials"], "MPS": "on" if r["mps"] else "off", "training s": r["train_s"],
             **r["outside_s"], "outside s": r["outside_total_s"], "share %": 100 * r["fraction"],
             "of set-up: build": r.get("setup_build_s")}
            for r in results["overhead"]
        ]  # fmt: skip
        out += [
            "\n## Outside training, per 10k-step trial (seconds)\n",
            _table(pd.DataFrame(rows)),
            "\nSet-up is the trial's wall time (Ray's time_total_s) outside every timed phase; its build part"
            " (codec, VAE, MLflow run, restore) is timed by the trial itself, the rest is Ray's (worker,"
            " reports).",
        ]
    return "\n".join(out)


def _stages(entry: dict) -> dict:
    """A sweep's start, a new worker's start, the trial's build and the sweep's end, in stages: what the
    driver logged and the trials reported (sweep.bench's entry; older entries lack some)."""
    trial = entry.get("per_trial", {})
    row = {"space": entry["space"], "trials": entry["trials"], "steps": entry["steps"] // entry["trials"],
           "driver to Tune": entry.get("driver_ready_s"),
           "worker: Ray's": trial.get("setup/process/before_imports"),
           "worker: imports": trial.get("setup/process/imports"), "gate": trial.get("setup/driver"),
           "build: codec": trial.get("setup/codec"), "build: VAE": trial.get("setup/model")}  # fmt: skip
    return row | {f"end: {stage}": seconds for stage, seconds in entry.get("end_stages", {}).items()}


def _table(frame: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    if columns:
        frame = frame[list(columns)].rename(columns=columns)
    frame = frame.astype(object).where(frame.notna(), None)  # tabulate writes None as "-", not NaN
    return frame.to_markdown(index=False, floatfmt=".1f", missingval="-")
