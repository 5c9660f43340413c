"""Markdown tables in the shape of the seed's report, and the decision-gate verdict (docs/science.md §1).

    print(battery_report(result, recon={"recon/mel": 2.4, "recon/l1": 0.03}, title="beta=0.01 dim=32"))
    print(decision_gate({"beta=0.01 dim=32": metrics_a, "beta=0.1 dim=16": metrics_b}))  # one line a gate

Non-finite values print as inf / nan: nothing is clipped on the way to the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

GATE_HORIZON = 4


def markdown_table(frame: pd.DataFrame, no: str = "no") -> str:
    """The one table renderer of reports and summaries: floats to 3 decimals (inf / nan as they are),
    booleans as yes / `no` (the battery's tables say NO, a failed check being the news there)."""

    def cell(value) -> str:
        if isinstance(value, bool | np.bool_):
            return "yes" if value else no
        if isinstance(value, float | np.floating):
            return f"{value:.3f}" if math.isfinite(value) else str(value)
        return str(value)

    return frame.map(cell).to_markdown(index=False, disable_numparse=True)


def _markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame, no="NO")


def rollout_markdown(table: pd.DataFrame) -> str:
    """| h | teacher | rollout | gap | finite |, delta-NLL in nats per frame."""
    return _markdown(table[["h", "teacher", "rollout", "gap", "finite"]])


def injection_markdown(injection: pd.DataFrame) -> str:
    """| mode | cos | state_err | state_err_rel | dnll |, means over the injection steps."""
    return _markdown(injection[["mode", "cos", "state_err", "state_err_rel", "dnll"]])


def recon_markdown(recon: Mapping[str, float]) -> str:
    """| metric | value | for the reconstruction metrics (`recon/mel`, `recon/l1`, ...)."""
    return _markdown(pd.DataFrame({"metric": list(recon), "value": [float(v) for v in recon.values()]}))


def audio_markdown(levels: pd.DataFrame) -> str:
    """| file | peak | clipped % |: each rollout WAV's level before it was clipped to [-1, 1]."""
    shown = levels.assign(clipped=100 * levels["clipped"]).rename(columns={"clipped": "clipped %"})
    return _markdown(shown[["file", "peak", "clipped %"]])


def battery_report(
    result,
    recon: Mapping[str, float] | None = None,
    title: str | None = None,
    audio: pd.DataFrame | None = None,
) -> str:
    """One trial's report: rollout table, horizon, injection table, reconstruction, audio levels."""
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
    if audio is not None and len(audio):
        parts += ["### Rollout audio (peak |sample| and the share clipped to [-1, 1] on writing)",
                  audio_markdown(audio)]  # fmt: skip
    return "\n\n".join(parts) + "\n"


def finite_at(metrics: Mapping[str, float], horizon: int = GATE_HORIZON) -> bool:
    """The research's gate for one configuration: its k-step rollout stayed finite as the research's
    float32 arithmetic would see it (every fed-back state and NLL within float32's range)."""
    return bool(metrics.get(f"rollout/finite/k{horizon}", 0.0))


def finite_and_informative_at(metrics: Mapping[str, float], horizon: int = GATE_HORIZON) -> bool:
    """The strict gate: finite (finite_at) and informative (k-step rollout delta-NLL < 0)."""
    value = metrics.get(f"rollout/k{horizon}", math.nan)
    return finite_at(metrics, horizon) and math.isfinite(value) and value < 0


GATES = (
    ("research gate", "a finite k={h} rollout", finite_at),
    ("strict gate", "a finite and informative k={h} rollout (delta-NLL < 0)", finite_and_informative_at),
)


def decision_gate(configs: Mapping[str, Mapping[str, float]], horizon: int = GATE_HORIZON) -> str:
    """The verdict over configurations (name -> metrics), one line per gate, each naming itself: is the
    k=4 ceiling breakable? `configs` holds the configurations that count (completed, feasible)."""
    if not configs:
        return "no configuration counts: no verdict."
    best = max(int(m.get("rollout/horizon", 0)) for m in configs.values())
    lines = []
    for gate, asks, passes in GATES:
        wanted = asks.format(h=horizon)
        passing = [name for name, m in configs.items() if passes(m, horizon)]
        if passing:
            lines.append(f"{gate} ({wanted}): MET by {', '.join(passing)}; the ceiling is breakable.")
        else:
            where = f"k={best}" if best else "k=0 (no rollout beats p0)"
            lines.append(f"{gate} ({wanted}): not met by any of {len(configs)}; the rollout horizon "
                         f"reaches {where} at best.")  # fmt: skip
    return "\n".join(lines)


def tables_from_metrics(metrics: Mapping[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rollout and injection tables back from a flat metrics dict (as logged and reported)."""
    horizons = sorted(
        int(k.removeprefix("rollout/k")) for k in metrics if k.removeprefix("rollout/k").isdigit()
    )
    rollout = pd.DataFrame(
        [
            {
                "h": h,
                "teacher": float(metrics.get(f"teacher/k{h}", math.nan)),
                "rollout": float(metrics[f"rollout/k{h}"]),
                "gap": float(metrics.get(f"gap/k{h}", math.nan)),
                "finite": bool(metrics.get(f"rollout/finite/k{h}", 0.0)),
            }
            for h in horizons
        ],
        columns=["h", "teacher", "rollout", "gap", "finite"],
    )
    modes = dict.fromkeys(k.split("/")[1] for k in metrics if k.startswith("injection/"))
    injection = pd.DataFrame(
        [
            {"mode": mode, **{m: float(metrics.get(f"injection/{mode}/{m}", math.nan)) for m in _INJECTION}}
            for mode in modes
        ],  # fmt: skip
        columns=["mode", *_INJECTION],
    )
    return rollout, injection


_INJECTION = ("cos", "state_err", "state_err_rel", "dnll")


def metrics_report(metrics: Mapping[str, float], title: str | None = None) -> str:
    """battery_report's tables from a flat metrics dict: what the sweep's summary prints per trial."""
    rollout, injection = tables_from_metrics(metrics)
    horizon = int(metrics.get("rollout/horizon", 0))
    parts = [f"## {title}"] if title else []
    parts += [
        "### Rollout (delta-NLL vs p0, nats/frame; negative = informative)",
        rollout_markdown(rollout),
        f"Rollout horizon: k={horizon}" if horizon else "Rollout horizon: none (no rollout beats p0)",
        "### Injection (MDN_1)",
        injection_markdown(injection),
    ]
    recon = {k: float(metrics[k]) for k in ("recon/mel", "recon/l1") if k in metrics}
    if recon:
        parts += ["### Reconstruction", recon_markdown(recon)]
    return "\n\n".join(parts) + "\n"
