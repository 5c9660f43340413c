"""Markdown tables in the shape of the seed's report, and the decision-gate verdict (DESIGN.md §1).

    print(battery_report(result, recon={"recon/mel": 2.4, "recon/l1": 0.03}, title="beta=0.01 dim=32"))
    print(decision_gate({"beta=0.01 dim=32": metrics_a, "beta=0.1 dim=16": metrics_b}))

Non-finite values print as inf / nan: nothing is clipped on the way to the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

GATE_HORIZON = 4


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def _markdown(frame: pd.DataFrame) -> str:
    return frame.map(_fmt).to_markdown(index=False, disable_numparse=True)


def rollout_markdown(table: pd.DataFrame) -> str:
    """| h | teacher | rollout | gap | finite |, delta-NLL in nats per frame."""
    return _markdown(table[["h", "teacher", "rollout", "gap", "finite"]])


def injection_markdown(injection: pd.DataFrame) -> str:
    """| mode | cos | state_err | state_err_rel | dnll |, means over the injection steps."""
    return _markdown(injection[["mode", "cos", "state_err", "state_err_rel", "dnll"]])


def recon_markdown(recon: Mapping[str, float]) -> str:
    """| metric | value | for the reconstruction metrics (`recon/mel`, `recon/l1`, ...)."""
    return _markdown(pd.DataFrame({"metric": list(recon), "value": [float(v) for v in recon.values()]}))


def battery_report(result, recon: Mapping[str, float] | None = None, title: str | None = None) -> str:
    """One trial's report: rollout table, horizon, injection table, reconstruction."""
    parts = [f"## {title}"] if title else []
    horizon = int(result.metrics["rollout/horizon"])
    parts += [
        "### Rollout (delta-NLL vs p0, nats/frame; negative = informative)",
        rollout_markdown(result.rollout_table),
        f"Rollout horizon: k={horizon}" if horizon else "Rollout horizon: none (no rollout beats p0)",
        f"### Injection (MDN_1, {len(result.injection_curves) // max(len(result.injection), 1)} steps)",
        injection_markdown(result.injection),
    ]
    if recon:
        parts += ["### Reconstruction", recon_markdown(recon)]
    return "\n\n".join(parts) + "\n"


def passes_gate(metrics: Mapping[str, float], horizon: int = GATE_HORIZON) -> bool:
    """k-step rollout both finite (every fed-back state too) and informative (delta-NLL < 0)."""
    value = metrics.get(f"rollout/k{horizon}", math.nan)
    finite = metrics.get(f"rollout/finite/k{horizon}", float(math.isfinite(value)))
    return bool(finite) and math.isfinite(value) and value < 0


def decision_gate(configs: Mapping[str, Mapping[str, float]], horizon: int = GATE_HORIZON) -> str:
    """The verdict over configurations (label -> metrics): is the k=4 ceiling breakable?"""
    if not configs:
        return "no finished configurations: no verdict."
    passing = [label for label, m in configs.items() if passes_gate(m, horizon)]
    if passing:
        return (
            f"k={horizon} rollout finite and informative for configs: {', '.join(passing)}; "
            "the ceiling is breakable."
        )
    best = max(int(m.get("rollout/horizon", 0)) for m in configs.values())
    where = f"k={best}" if best else "k=0 (no rollout beats p0)"
    return f"ceiling holds at {where}: no configuration has a finite, informative k={horizon} rollout."
