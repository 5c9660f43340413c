"""What the console says about a sweep: the plan (--dry-run and a sweep's start), the projected wall
time from sweep.bench's measured rates, the warning for a UI bound beyond loopback, and how loud the
libraries are (quiet unless --verbose; the trial events are sweep/events.py's).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from sweep import spaces
from sweep.config import TrialParams
from sweep.objective import OBJECTIVES, SCHEDULER_METRIC
from sweep.plan import LOOPBACK, SweepPlan


def describe(plan: SweepPlan, cpus: int, gpus: int) -> str:
    """The trial plan and the resource arithmetic (what --dry-run prints)."""
    preset = plan.preset
    params = spaces.space_params(plan.space)
    per_space = TrialParams.from_config({}, preset).train_steps
    at_once = plan.trials_at_once(cpus, gpus)
    lines = [
        f"sweep {plan.experiment}",
        f"  space       {plan.space}: "
        + ("; ".join(p.describe() for p in params) or "the seed's configuration, nothing varied"),
        f"  search      {plan.search}: "
        + (
            f"{plan.trial_count} trials of the exact grid"
            if plan.search == "grid"
            else f"{plan.trial_count} trials, multi-objective TPE minimising {' and '.join(OBJECTIVES)} "
            f"(nats/dim) under the constraint below; first trial: the seed's "
            + ", ".join(f"{k}={v:g}" for k, v in spaces.baseline_point(plan.space).items())
        ),
        f"  constraint  {plan.describe_constraint()} (feasible trials alone count for the verdict)",
        "  fixed       "
        + (
            ", ".join(f"{k}={v:g}" for k, v in plan.fixed.items())
            or "baseline for the rest (" + ", ".join(f"{k}={v:g}" for k, v in spaces.BASELINE.items()) + ")"
        ),
        f"  preset      {preset.name}: {per_space} VAE steps per 10k of the space (longest trial "
        f"{plan.max_train_steps()}), batch {preset.batch_size} x {preset.crop_seconds:g} s, lr {preset.lr:g}",
        "  scheduler   "
        + (
            f"ASHA on {SCHEDULER_METRIC} at steps {_rungs(plan)} (cheap battery there)"
            if plan.scheduler == "asha"
            else "none: every trial runs to the end"
        ),
        f"  codec/data  {plan.codec}; {plan.data}; cache {plan.cache}",
        f"  resources   per trial {plan.cpus_per_trial:g} CPU, {plan.gpus_per_trial:g} GPU; "
        f"here {cpus} CPUs, "
        f"{gpus} GPUs -> {at_once} trials at a time, {math.ceil(plan.trial_count / max(at_once, 1))} waves"
        + ("" if at_once else "  (NOTHING FITS: lower --cpus-per-trial / --gpus-per-trial)"),
        f"  speed       step {'compiled (CUDA graphs)' if plan.compiled else 'eager'}, "
        f"{'fused' if plan.fused_optimizer and plan.gpus_per_trial > 0 else 'multi-tensor'} AdamW, "
        f"MPS {'on' if plan.mps else 'off'}",
        f"  outputs     Tune {plan.experiment_dir}; MLflow {plan.mlflow_uri}"
        + (f"; Optuna {plan.optuna_uri} (study {plan.experiment})" if plan.search == "optuna" else ""),
    ]
    return "\n".join(lines)


def projection(plan: SweepPlan, cpus: int, gpus: int, bench_file: Path, device_name: str | None) -> str:
    """The sweep's wall time from what sweep.bench measured on this kind of GPU (--dry-run): the rates
    of its tune and sweep parts, and from its newest whole sweep the time a trial holds its slot outside
    training and the sweep's start and end (else the tune part's per-trial estimate)."""
    from sweep.throughput import project_sweep, sweep_overheads

    head = "  projection  "
    if plan.gpus_per_trial == 0 or not gpus:
        return head + "for GPU sweeps only (python -m sweep.bench measures a GPU's rates)"
    if not bench_file.is_file():
        return head + f"no measured rates in {bench_file}: run `python -m sweep.bench` here (~12 min) first"
    bench = json.loads(bench_file.read_text())
    measured = [e for e in bench.get("tune", []) if e["mps"] == plan.mps]
    sweeps = [e for e in bench.get("sweeps", []) if e["mps"] == plan.mps and not e["without"] and e["gpus"]]
    if not measured and not sweeps:
        return (
            head + f"{bench_file} has no runs with MPS {'on' if plan.mps else 'off'}: sweep.bench --mps ..."
        )
    per_gpu = max(1, round(1 / plan.gpus_per_trial))
    # Trials spread over the GPUs: k running trials are k / gpus per GPU, each GPU at its measured rate.
    rates = {e["trials"] * gpus: e["aggregate_steps_per_s"] * gpus for e in measured}
    rates |= {e["slots"] // e["gpus"] * gpus: e["aggregate_steps_per_s"] / e["gpus"] * gpus for e in sweeps}
    if sweeps:
        newest = sweeps[-1]
        overhead, fixed = sweep_overheads(newest)
        source = (
            f"{overhead:.0f} s outside training per trial and {fixed:.0f} s to start and end, as in a "
            f"{newest['trials']}-trial sweep"
        )
    else:
        overheads = {
            r["trials"]: r["outside_total_s"] for r in bench.get("overhead", []) if r["mps"] == plan.mps
        }
        nearest = min(measured, key=lambda e: abs(e["trials"] - per_gpu))
        overhead, fixed = overheads.get(nearest["trials"], 0.0), 0.0
        source = f"{overhead:.0f} s outside training per trial"
    slots = plan.trials_at_once(cpus, gpus)
    seconds = fixed + project_sweep(plan.trial_steps(), slots, rates, overhead)
    where = bench["machine"]["device"]
    caveat = "" if where == device_name else f" (measured on {where}, this is {device_name}: a rough guide)"
    together = rates[min(rates, key=lambda n: abs(n - per_gpu * gpus))]
    return (
        f"{head}about {seconds / 3600:.1f} h ({seconds / 60:.0f} min) for {plan.trial_count} trials, "
        f"{slots} at a time: {together:.0f} VAE steps/s together at {per_gpu} trials/GPU on {gpus} GPU(s), "
        f"{source}; no early stopping counted (ASHA shortens it).\n"
        f"{'':14s}From {bench_file} ({where}, {bench.get('updated', '?')}){caveat}"
    )


def _rungs(plan: SweepPlan) -> str:
    rungs = plan.rungs(plan.max_train_steps())
    return ", ".join(map(str, rungs)) or "(none: trials shorter than the first rung)"


def exposure_warning(service: str, host: str) -> str | None:
    """The warning printed when a UI without authentication is bound beyond loopback."""
    if host in LOOPBACK:
        return None
    return (
        f"WARNING: {service} binds to {host}: it has no authentication worth the name and runs code or "
        "shows everything to whoever reaches it. Bind 127.0.0.1 and use an ssh tunnel "
        "(ssh -L PORT:127.0.0.1:PORT host)."
    )


def configure_logging(verbose: bool) -> None:
    """The sweep's own INFO lines always; MLflow's, Optuna's and Ray's only with --verbose."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read as mlflow is imported, here and in trials
    for chatty in ("optuna", "ray", "matplotlib"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # "Token authentication is enabled for this Ray cluster": Ray's default for a local cluster since 2.59;
    # the driver prints the dashboard's URL with how to get its token instead.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import optuna  # it sets its own handler's level at import

    optuna.logging.set_verbosity(optuna.logging.WARNING)
