"""The arithmetic behind sweep.bench and the --dry-run projection, and the speed settings of a plan."""

import dataclasses
import json

import pytest

from sweep.console import projection
from sweep.errors import UsageError
from sweep.launch import parse_args
from sweep.plan import make_plan
from sweep.throughput import (
    aggregate_rate,
    overhead_fraction,
    project_sweep,
    rate_at,
    rate_when_full,
    sweep_breakdown,
)


def test_aggregate_rate_sums_the_trials_over_their_common_window():
    # trial a: 10 steps/s from t=0; trial b: 20 steps/s from t=2 (started later); both report to t=12
    a = [(t, 10 * t) for t in range(0, 13, 2)]
    b = [(t, 20 * (t - 2)) for t in range(2, 13, 2)]
    rate = aggregate_rate([a, b])
    assert rate["window_s"] == 10  # from b's first report to the first last report
    assert rate["per_trial"] == pytest.approx([10, 20]) and rate["aggregate"] == pytest.approx(30)


def test_aggregate_rate_refuses_trials_that_never_ran_together():
    with pytest.raises(ValueError, match="do not overlap"):
        aggregate_rate([[(0, 0), (1, 10)], [(5, 0), (6, 10)]])


def test_rate_when_full_counts_only_the_stretches_with_every_slot_training():
    # two slots; a and b train together over [2, 10]; c alone over [12, 20]
    a = [(t, 10 * t) for t in range(0, 11, 2)]
    b = [(t, 20 * (t - 2)) for t in range(2, 11, 2)]
    c = [(t, 5 * (t - 12)) for t in range(12, 21, 2)]
    rate = rate_when_full([a, b, c], slots=2)
    assert rate["window_s"] == 8 and rate["aggregate"] == pytest.approx(30)
    with pytest.raises(ValueError, match="no stretch"):
        rate_when_full([a, c], slots=2)


def _trial(begin: float, warmup: float, steps: int, rate: float, after: float) -> list[dict]:
    """Tune's reports of one trial: built 2 s after `begin`, compiled for `warmup` s, trained `steps` at
    `rate` (a report every 100 steps), then `after` s of evaluation (3/4) and final logging (1/4)."""
    start = begin + 2 + warmup
    rows = []
    for step in range(100, steps + 1, 100):
        wall = start + step / rate
        rows.append(
            {
                "step": step,
                "time/wall": wall,
                "time_total_s": wall - begin,
                "time/train": warmup + step / rate,
            }
        )
    train = warmup + steps / rate
    final = {
        "step": steps,
        "time/wall": start + steps / rate + after,
        "status": "completed",
        "time_total_s": 2 + train + after,
        "time/setup": 2.0,
        "time/train": train,
        "time/evaluation": 0.75 * after,
        "time/logging": 0.25 * after,
        "time/evaluation/battery": 1.0,
    }
    return rows + [final]  # fmt: skip


def test_sweep_breakdown_accounts_for_the_whole_wall_time():
    # 2 slots, 3 trials of 1000 steps at 10 steps/s each (20 together): t1 and t2 start at 5 s, t3 when
    # t1's slot frees (1 s of worker start-up later); 20 s compile in the first wave, 5 s once warm
    reports = {
        "t1": _trial(5, 20, 1000, 10, after=8),
        "t2": _trial(5, 20, 1000, 10, after=8),
        "t3": _trial(5 + 2 + 20 + 100 + 8 + 1, 5, 1000, 10, after=8),
    }
    end_t3 = 136 + 2 + 5 + 100 + 8
    out = sweep_breakdown(reports, slots=2, started=0.0, ended=end_t3 + 4)
    parts = out["parts"]
    assert sum(parts.values()) == pytest.approx(out["wall_s"]) and out["wall_s"] == pytest.approx(end_t3 + 4)
    assert parts["start"] == pytest.approx(5) and parts["end"] == pytest.approx(4)
    assert parts["compile warm-up"] == pytest.approx((20 + 20 + 5) / 2, abs=0.5)
    assert parts["set-up"] == pytest.approx(3 * 2 / 2) and parts["evaluation"] == pytest.approx(3 * 6 / 2)
    assert parts["logging"] == pytest.approx(3 * 2 / 2)
    assert out["steps"] == 3000 and out["aggregate_steps_per_s"] == pytest.approx(20)
    assert out["ideal_s"] == pytest.approx(150) and out["ratio"] == pytest.approx(out["wall_s"] / 150)
    # t3 runs alone: its slot partner's span is idle, as is the worker start-up gap
    assert parts["idle slots"] == pytest.approx((1 + (2 + 5 + 100 + 8)) / 2, abs=0.5)


def test_projection_closed_forms():
    # one slot: trials back to back, each steps / rate + overhead
    assert project_sweep([100, 300], slots=1, rates={1: 10.0}, overhead_s=5) == pytest.approx(10 + 5 + 30 + 5)
    # two slots, the GPU's 30 steps/s shared: both 300-step trials end together at 20 s
    assert project_sweep([300, 300], slots=2, rates={1: 20.0, 2: 30.0}, overhead_s=0) == pytest.approx(20)
    # 100 + 300 steps: at 15 steps/s each until the short one ends (100/15 s), then 200 steps alone at 20
    assert project_sweep([100, 300], 2, {1: 20.0, 2: 30.0}, 0) == pytest.approx(100 / 15 + 200 / 20)
    assert rate_at({1: 10.0, 4: 40.0}, 2) == pytest.approx(20.0) and rate_at({1: 10.0, 4: 40.0}, 9) == 40.0
    assert overhead_fraction(10, 900, 10.0) == pytest.approx(0.1)


def test_compile_auto_is_for_long_gpu_trials(corpus_dir, tmp_path):
    argv = ["--space", "steps", "--data", str(corpus_dir), "--preset", "paper", "--codec", "random:full"]
    cpu = make_plan(parse_args(argv), tmp_path)
    assert cpu.gpus_per_trial == 0 and not cpu.compiled  # no GPU here
    assert dataclasses.replace(cpu, gpus_per_trial=0.25).compiled  # paper steps on a GPU
    assert not dataclasses.replace(cpu, gpus_per_trial=0.25, compile="off").compiled
    short = make_plan(parse_args([*argv, "--steps", "300"]), tmp_path)  # longest trial 1500 steps
    assert not dataclasses.replace(short, gpus_per_trial=0.25).compiled  # warm-up not repaid
    assert make_plan(parse_args([*argv, "--compile", "on"]), tmp_path).compiled


def test_dry_run_projects_the_grid_from_measured_rates(corpus_dir, tmp_path):
    argv = ["--space", "beta_dim_steps", "--search", "grid", "--data", str(corpus_dir), "--preset", "paper"]
    argv += ["--codec", "random:full"]
    plan = dataclasses.replace(make_plan(parse_args(argv), tmp_path), gpus_per_trial=0.25, cpus_per_trial=3)
    assert plan.trial_steps() == [50_000] * 16 + [10_000] * 16  # the grid's order: longest first
    bench = tmp_path / "bench.json"
    assert "run `python -m sweep.bench`" in projection(plan, 16, 1, bench, "NVIDIA H200")
    bench.write_text(json.dumps({
        "machine": {"device": "NVIDIA H200"}, "updated": "today",
        "tune": [{"trials": 1, "mps": False, "aggregate_steps_per_s": 100.0},
                 {"trials": 4, "mps": False, "aggregate_steps_per_s": 160.0}],
        "overhead": [{"trials": 4, "mps": False, "outside_total_s": 60.0}],
    }))  # fmt: skip
    text = projection(plan, 16, 1, bench, "NVIDIA H200")
    expected = project_sweep([50_000] * 16 + [10_000] * 16, 4, {1: 100.0, 4: 160.0}, 60.0)
    assert f"about {expected / 3600:.1f} h ({expected / 60:.0f} min) for 32 trials, 4 at a time" in text
    assert "160 VAE steps/s together at 4 trials/GPU on 1 GPU(s), 60 s outside training per trial" in text
    # a whole sweep measured (on 2 GPUs): its rate per GPU, its time outside training, its start and end
    sweep = {"space": "beta_dim", "trials": 16, "slots": 8, "gpus": 2, "mps": False, "without": "",
             "aggregate_steps_per_s": 340.0, "parts": {"start": 20.0, "end": 10.0, "training": 90.0,
             "set-up": 5.0, "compile warm-up": 10.0, "evaluation": 12.0, "checkpoints": 1.0,
             "logging": 1.0, "idle slots": 3.0}}  # fmt: skip
    bench.write_text(json.dumps({**json.loads(bench.read_text()), "sweeps": [sweep]}))
    per_trial = (5 + 10 + 12 + 1 + 1 + 3) * 8 / 16
    text = projection(dataclasses.replace(plan, cpus_per_trial=1), 32, 2, bench, "NVIDIA H200")
    expected = 30 + project_sweep([50_000] * 16 + [10_000] * 16, 8, {2: 200.0, 8: 340.0}, per_trial)
    assert f"about {expected / 3600:.1f} h ({expected / 60:.0f} min) for 32 trials, 8 at a time" in text
    assert f"{per_trial:.0f} s outside training per trial and 30 s to start and end" in text
    assert "rough guide" in projection(plan, 16, 1, bench, "NVIDIA A10G")
    assert "no runs with MPS on" in projection(
        dataclasses.replace(plan, mps=True), 16, 1, bench, "NVIDIA H200"
    )
    assert "for GPU sweeps only" in projection(plan, 16, 0, bench, None)


def test_speed_switches_are_named_and_checked(corpus_dir, tmp_path):
    argv = ["--space", "beta_dim", "--data", str(corpus_dir)]
    plan = make_plan(parse_args([*argv, "--without", "compile-cache,battery-graphs"]), tmp_path)
    assert (
        plan.without == ["compile-cache", "battery-graphs"]
        and make_plan(parse_args(argv), tmp_path).without == []
    )
    with pytest.raises(UsageError, match="--without mps: not a speed switch; choose from compile-cache, "):
        make_plan(parse_args([*argv, "--without", "mps"]), tmp_path)
