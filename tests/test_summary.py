"""The sweep's summary: keyed by trial, repeats aggregated, stopped trials apart, who the verdict counts."""

import math
from types import SimpleNamespace

import pytest

from sweep.config import PRESETS
from sweep.objective import (
    COMPLETED,
    CONSTRAINT,
    DIVERGED,
    SCHEDULER_METRIC,
    STATUS,
    objective_values,
    pending,
)
from sweep.summary import results_frame, summarise

PAPER = PRESETS["paper"]


def _completed(name, beta, dim, rollout_k4, teacher_k1, recon_mel):
    metrics = {"rollout/k4": rollout_k4, "rollout/finite/k4": 1.0, "teacher/k1": teacher_k1,
               "rollout/k1": teacher_k1, "recon/mel": recon_mel, "rollout/horizon": 4.0, "step": 10_000,
               STATUS: COMPLETED, "trial_id": f"id_{name}"}  # fmt: skip
    metrics.update(objective_values(metrics, dim, max_recon_mel=4.0))
    return SimpleNamespace(metrics=metrics, config={"beta": beta, "dim": dim}, error=None, path=f"/x/{name}")


def _stopped(name, beta, dim, probe_k4):
    metrics = {"step": 2500, SCHEDULER_METRIC: probe_k4, "probe/objective/teacher_k1": -3.0, "trial_id": name,
               **pending()}  # fmt: skip
    return SimpleNamespace(metrics=metrics, config={"beta": beta, "dim": dim}, error=None, path=f"/x/{name}")


@pytest.fixture
def frame():
    results = [
        _completed("t000", 0.01, 32, -32.0, -64.0, 3.0),  # -1.0 nats/dim at k=4
        _completed("t004", 0.01, 32, -16.0, -64.0, 3.5),  # a repeat of t000's configuration
        _completed("t001", 0.04431, 16, -8.0, -48.0, 2.0),
        _completed("t005", 0.04434, 16, -4.0, -40.0, 2.0),  # near-equal beta: the same label
        _completed("t003", 0.1, 64, -640.0, -640.0, 9.0),  # best objectives, but recon over the limit
        _stopped("t002", 1.0, 128, -50.0),  # a probe value better than every final one
        SimpleNamespace(
            metrics={"step": 7, STATUS: DIVERGED, "diverged/step": 7, "trial_id": "d"},
            config={"beta": 1.0, "dim": 16},
            error=None,
            path="/x/t006",
        ),  # fmt: skip
    ]
    return results_frame(results, ("beta", "dim"), PAPER, seed=3)


def test_every_trial_keeps_its_row_and_its_own_seed(frame):
    assert sorted(frame["trial"]) == ["t000", "t001", "t002", "t003", "t004", "t005", "t006"]
    assert len(set(frame["seed"])) == 7 and frame.set_index("trial").loc["t004", "seed"] == 30_004
    labels = frame.set_index("trial")["label"]
    assert labels["t001"] == labels["t005"] == "beta=0.0443 dim=16"  # and yet two rows


def test_stopped_and_infeasible_trials_are_never_on_the_front(frame):
    rows = frame.set_index("trial")
    assert not rows.loc["t002", "pareto"] and math.isnan(rows.loc["t002", "objective/rollout_k4"])
    assert not rows.loc["t003", "feasible"] and not rows.loc["t003", "pareto"]
    assert rows.loc["t000", "pareto"] and rows.loc["t003", CONSTRAINT] > 0
    assert set(frame[frame["pareto"]]["trial"]) <= {"t000", "t001", "t004", "t005"}


def test_summary_lists_stopped_trials_apart_with_probe_values_and_aggregates_repeats(frame):
    summary = summarise(frame)
    main_rows = summary.table.splitlines()[2:]
    assert not any("t002" in row for row in main_rows) and any("t006" in row for row in main_rows)
    assert "t002" in summary.stopped and "2500" in summary.stopped and "probe rollout_k4" in summary.stopped
    assert "-50.000" in summary.stopped
    repeats = summary.repeats.splitlines()
    assert len(repeats) == 3  # header, rule, beta=0.01 dim=32: betas 0.04431 and 0.04434 are no repeat
    row = repeats[2]
    assert "| 2 " in row and "t000 t004" in row and "-0.750 ± 0.354" in row  # (-1.0, -0.5)
    assert summary.counts == "7 trials: 5 completed, 1 stopped early, 1 diverged."
    text = summary.text()
    assert text.index(summary.table) < text.index("Stopped early") < text.index("Verdict:")


def test_verdict_counts_only_completed_feasible_trials_and_names_the_rest(frame):
    research, strict, rest = summarise(frame).verdict.splitlines()
    assert research.startswith("research gate (a finite k=4 rollout): MET by t000 (beta=0.01 dim=32)")
    assert strict.startswith("strict gate (a finite and informative k=4 rollout")
    assert "t003" not in research + strict and "t002" not in research + strict
    assert rest.startswith("Not counted: ")
    assert "t003 (beta=0.1 dim=64): recon/mel 9 over the limit 4" in rest
    assert "t002 (beta=1 dim=128): stopped early by ASHA at step 2500" in rest
    assert "t006 (beta=1 dim=16): diverged at step 7" in rest


def test_a_random_init_codec_makes_the_verdict_a_plumbing_check(frame):
    verdict = summarise(frame, codec="random:full").verdict
    assert verdict.splitlines()[-1].startswith("Plumbing check, not a finding: the codec is random-init")
    assert "Plumbing" not in summarise(frame, codec="kyutai/mimi").verdict
    closing = summarise(frame, codec="random:full").closing()
    assert closing.count("\n- ") == 4 and "Verdict:\n- research gate" in closing


def test_the_codec_reference_is_the_tables_first_row(frame):
    table = summarise(frame, reference={"recon/mel": 2.25, "recon/l1": 0.031}).table.splitlines()
    codec = [c.strip() for c in table[2].split("|")[1:-1]]
    assert codec[:4] == ["codec", "codec only, no bottleneck", "", "reference"]
    assert codec[-4:-2] == ["2.250", "0.031"]
    assert len(table) == 3 + 6  # header, rule, codec, the six trials that ran to their end


def test_a_page_that_fails_leaves_the_summary_and_says_how_to_rebuild_it(
    frame, tmp_path, monkeypatch, caplog
):
    import sweep.summary

    def broken_page(*args):
        raise TypeError("string indices must be integers")  # the bug 567d349 fixed, as any bug would

    monkeypatch.setattr(sweep.summary, "write_listening_page", broken_page)
    folder, experiment = tmp_path / "summary", str(tmp_path / "sweep-x")
    written = sweep.summary.write_summary(frame, summarise(frame), folder, experiment)
    assert {p.name for p in written.files} == {"summary.md", "verdict.md", "importances.json", "summary.csv"}
    assert all(p.exists() for p in written.files + written.plots) and written.trials == len(frame)
    warning = next(r.getMessage() for r in caplog.records if "listening page" in r.getMessage())
    assert "TypeError: string indices" in warning and "python -m sweep.report sweep-x" in warning
