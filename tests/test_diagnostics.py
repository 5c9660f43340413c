"""The battery against closed forms on a linear-Gaussian process (docs/science.md §3 sanity facts).

z_{t+1} = A z_t + e, e ~ N(0, s I), A = c Q with Q orthogonal: every covariance involved is
isotropic, so the diagonal mixtures can represent them exactly:
  k-step predictive N(A^k z, S_k), S_k = s * sum_{j<k} c^{2j} I;  p0 = N(0, s / (1 - c^2) I);
  mean-feedback rollout NLL = 0.5 (D log 2 pi + log|S| + tr(S^-1 S_k)).
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from evaluation.diagnostics import (
    INJECTION_MODES,
    BatteryConfig,
    rollout_horizon,
    run_battery,
    score_battery,
)
from models.mdn import MDN

D, C, S = 4, 0.8, 0.1
LOG_2PI = math.log(2 * math.pi)
# Small MLPs fit this process without overfitting 57k windows. M = 2 rather than the default 8: the
# closed forms are single Gaussians, and a fitted 8-component mixture has slightly heavier tails,
# which scores the wider 4-step errors of a rollout ~0.06 nats below the Gaussian closed form.
CONFIG = BatteryConfig(hidden=(64, 64), components=2, horizons=(1, 2, 4), steps=4000, injection_steps=6)


def simulate(n, length, seed, a=None):
    rng = np.random.default_rng(seed)
    if a is None:
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))
        a = C * q
    out = []
    for _ in range(n):
        z = rng.standard_normal(D) * math.sqrt(S / (1 - C * C))  # start stationary
        seq = np.empty((length, D), dtype=np.float32)
        for t in range(length):
            seq[t] = z
            z = a @ z + rng.standard_normal(D) * math.sqrt(S)
        out.append(seq)
    return out


def closed_forms():
    p0 = 0.5 * D * (LOG_2PI + math.log(S / (1 - C * C)) + 1)
    forms = {"p0": p0}
    for h in (1, 2, 4):
        s_h = S * sum(C ** (2 * j) for j in range(h))
        forms[f"teacher{h}"] = 0.5 * D * (LOG_2PI + math.log(s_h) + 1)
        forms[f"rollout{h}"] = 0.5 * D * (LOG_2PI + math.log(S) + s_h / S)
    return forms


@pytest.fixture(scope="module")
def linear_gaussian():
    train, evaluation = simulate(400, 150, seed=1), simulate(200, 150, seed=2)
    return train, evaluation, run_battery(train, evaluation, CONFIG)


def within(value, expected):
    return abs(value - expected) <= max(0.02 * abs(expected), 0.02 * D)


def test_nlls_match_closed_forms(linear_gaussian):
    *_, result = linear_gaussian
    forms = closed_forms()
    table = result.rollout_table.set_index("h")
    assert within(result.p0_nll, forms["p0"]), (result.p0_nll, forms["p0"])
    for h in (1, 2, 4):
        assert within(table.loc[h, "teacher_nll"], forms[f"teacher{h}"]), (h, table.loc[h].to_dict(), forms)
        assert within(table.loc[h, "rollout_nll"], forms[f"rollout{h}"]), (h, table.loc[h].to_dict(), forms)
        # and the delta-NLLs the table reports, against closed-form deltas
        assert within(table.loc[h, "teacher"], forms[f"teacher{h}"] - forms["p0"])
        assert within(table.loc[h, "rollout"], forms[f"rollout{h}"] - forms["p0"])
    assert result.seconds["total"] < 60


def test_rollout_1_equals_teacher_1_exactly(linear_gaussian):
    *_, result = linear_gaussian
    row = result.rollout_table.set_index("h").loc[1]
    assert row["rollout"] == row["teacher"] and row["gap"] == 0.0
    assert result.metrics["rollout/k1"] == result.metrics["teacher/k1"] == result.metrics["eval/dnll"]


def test_table_and_metrics_shape(linear_gaussian):
    *_, result = linear_gaussian
    assert list(result.rollout_table["h"]) == [1, 2, 4]
    assert {"h", "teacher", "rollout", "gap", "finite"} <= set(result.rollout_table.columns)
    assert result.rollout_table["finite"].all()
    assert list(result.injection["mode"]) == list(INJECTION_MODES)
    assert list(result.injection.columns) == ["mode", "cos", "state_err", "state_err_rel", "dnll"]
    for h in (1, 2, 4):
        for name in ("teacher", "rollout", "gap"):
            assert f"{name}/k{h}" in result.metrics
    for mode in INJECTION_MODES:
        for name in ("cos", "state_err", "state_err_rel", "dnll"):
            assert f"injection/{mode}/{name}" in result.metrics
    # Closed-form rollout deltas: k=1, 2 informative (< 0); k=4 is worse than p0 (> 0), so the horizon is 2.
    assert result.metrics["rollout/horizon"] == 2.0
    assert all(isinstance(v, float) for v in result.metrics.values())


def test_injection_modes_behave(linear_gaussian):
    *_, result = linear_gaussian
    curves = result.injection_curves
    assert len(curves) == len(INJECTION_MODES) * CONFIG.injection_steps
    a = curves[curves["mode"] == "A_teacher"]
    d = curves[curves["mode"] == "D_rollout"]
    assert (a["state_err"] == 0).all()
    # Step 1 of the free-running mode conditions on the true state: identical to teacher forcing.
    assert (
        d.iloc[0][["cos", "dnll", "state_err"]].tolist() == a.iloc[0][["cos", "dnll", "state_err"]].tolist()
    )
    # Free running drifts: its state error grows with the step; the noisy and last-frame modes sit in between.
    assert d["state_err"].iloc[-1] > d["state_err"].iloc[1] > 0
    inj = result.injection.set_index("mode")
    assert inj.loc["A_teacher", "dnll"] < inj.loc["C_last", "dnll"]
    assert inj.loc["A_teacher", "dnll"] < inj.loc["D_rollout", "dnll"]
    assert inj.loc["A_teacher", "cos"] > inj.loc["D_rollout", "cos"]
    assert 0 < inj.loc["C_last", "state_err_rel"] < inj.loc["B_noise", "state_err_rel"]


def test_sample_feedback_is_seeded_and_keeps_rollout_1(linear_gaussian):
    _, evaluation, result = linear_gaussian
    sampled = BatteryConfig(**{**CONFIG.__dict__, "feedback": "sample"})
    a = score_battery(result.models, evaluation, sampled).rollout_table
    b = score_battery(result.models, evaluation, sampled).rollout_table
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[0, "rollout"] == a.loc[0, "teacher"]
    # Feeding samples back is noisier than feeding the mean: worse rollout NLL at k = 4.
    assert a.set_index("h").loc[4, "rollout"] > result.rollout_table.set_index("h").loc[4, "rollout"]


class ExplodingMDN(MDN):
    """Predicts 1e80 times the newest frame: fed back, the state overflows float64 within a few steps."""

    def mixture(self, contexts):
        log_w, means, log_scales = super().mixture(contexts)
        return log_w, torch.zeros_like(means) + 1e80 * contexts[:, -1:, :], log_scales


def test_exploding_feedback_is_reported_not_raised(linear_gaussian):
    _, evaluation, result = linear_gaussian
    models = dict(result.models)
    boom = ExplodingMDN(D, CONFIG.context, CONFIG.components, CONFIG.hidden)
    boom.load_state_dict(result.models["h1"].state_dict())
    models["h1"] = boom
    scored = score_battery(models, evaluation, CONFIG)
    table = scored.rollout_table.set_index("h")
    # k = 1 already scores ~1e160 nats: a float64 number, beyond float32 (the research's "inf")
    assert table["finite"].tolist() == [False, False, False]
    assert not math.isfinite(table.loc[2, "rollout"]) and not math.isfinite(table.loc[4, "rollout"])
    assert math.isfinite(table.loc[1, "rollout"]) and table.loc[1, "rollout"] > 1e38
    assert scored.metrics["rollout/horizon"] == 0.0
    assert scored.metrics["rollout/finite/k4"] == 0.0


class ExplosiveMDN(MDN):
    """Predicts 1e6 times the newest frame: fed back, states grow by 1e6 a step, NLLs by 1e12."""

    def mixture(self, contexts):
        log_w, means, log_scales = super().mixture(contexts)
        return log_w, torch.zeros_like(means) + 1e6 * contexts[:, -1:, :], log_scales


def test_explosive_rollouts_are_non_finite_as_float32_sees_them_though_float64_scores_them(linear_gaussian):
    """docs/science.md §3: the MDNs ran in float32 in the research; a rollout whose NLLs pass 3.4e38
    counts as blown up, even where float64 still gives a number (reported beside the flag, never clipped)."""
    _, evaluation, result = linear_gaussian
    models = dict(result.models)
    boom = ExplosiveMDN(D, CONFIG.context, CONFIG.components, CONFIG.hidden)
    boom.load_state_dict(result.models["h1"].state_dict())
    models["h1"] = boom
    table = score_battery(models, evaluation, CONFIG).rollout_table.set_index("h")
    assert table["finite"].tolist() == [True, True, False]  # NLLs ~1e12, ~1e24, ~1e48
    assert all(math.isfinite(v) for v in table["rollout"]) and table.loc[4, "rollout"] > 1e38


def test_the_battery_leaves_the_callers_random_stream_alone(linear_gaussian):
    """A trial's batches and noise come from its own seeded stream: running a (probe) battery in the middle
    of training must not reset it, or a trial would train differently with and without ASHA."""
    train, evaluation, _ = linear_gaussian
    small = BatteryConfig(hidden=(8,), components=2, horizons=(1, 2), steps=20, injection_steps=2, seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run_battery(train[:20], evaluation[:5], small)
    assert torch.equal(torch.get_rng_state(), before)
    second = run_battery(train[:20], evaluation[:5], small)  # and the battery itself stays repeatable
    pd.testing.assert_frame_equal(first.rollout_table, second.rollout_table)


def test_the_mdn_step_size_shrinks_with_width_beyond_256():
    """docs/science.md §3: 1e-3 up to 256 wide, 1e-3 x 256 / width beyond; an explicit lr wins."""
    assert BatteryConfig(hidden=(64, 64)).mdn_lr() == BatteryConfig(hidden=(256,)).mdn_lr() == 1e-3
    assert BatteryConfig().mdn_lr() == pytest.approx(2.5e-4)  # the default 1024
    assert BatteryConfig(hidden=(512, 2048)).mdn_lr() == pytest.approx(1.25e-4)
    assert BatteryConfig(lr=5e-4).fit_config().lr == 5e-4


def test_horizon_definition():
    table = pd.DataFrame(
        {"h": [1, 2, 4, 8], "rollout": [-3.0, -1.0, -0.2, math.inf], "finite": [True, True, True, False]}
    )
    assert rollout_horizon(table) == 4
    table.loc[2, "rollout"] = 0.5  # k = 4 no better than p0
    assert rollout_horizon(table) == 2
    table["rollout"] = [math.nan] * 4
    table["finite"] = False
    assert rollout_horizon(table) == 0


@pytest.mark.parametrize(
    "train, evaluation, message",
    [
        ([], [np.zeros((50, 4))], "train has no utterances"),
        ([np.zeros((50, 4))], [np.zeros(50)], r"eval\[0\] has shape"),
        ([np.zeros((50, 4))], [np.zeros((50, 3))], "share one latent dim"),
        ([np.full((50, 4), np.nan)], [np.zeros((50, 4))], "NaN or inf"),
        ([np.zeros((50, 4))], [np.zeros((10, 4))], "no eval utterance has the"),
    ],
)
def test_bad_inputs_are_explained(train, evaluation, message):
    with pytest.raises(ValueError, match=message):
        run_battery(train, evaluation, CONFIG)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(horizons=(2, 4)), "must include 1"),
        (dict(horizons=(1, 4, 2)), "increasing order"),
        (dict(feedback="median"), r"not one of \('mean', 'sample'\)"),
        (dict(holdout_fraction=1.5), "holdout_fraction"),
        (dict(lr=0.0), "lr and p0_lr must be > 0"),
        (dict(p0_lr=-1e-3), "lr and p0_lr must be > 0"),
    ],
)
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        BatteryConfig(**bad)
