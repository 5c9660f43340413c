"""The named search spaces (docs/science.md §5), each a small function of the search kind.

    space = SPACES["beta_dim"]("optuna")   # {"beta": tune.loguniform(0.001, 1.0), "dim": tune.choice([...])}
    space = SPACES["beta_dim"]("grid")     # {"beta": tune.grid_search([...]), "dim": tune.grid_search([...])}

Parameters a space does not vary keep the baseline of the seed experiment (`TrialParams`'s
defaults: beta=0.01, dim=32, 10k steps, no smoothness or prediction loss). Step values are
paper-scale; the preset scales them (sweep/config.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from ray import tune

from models.spec import VAEConfig
from sweep.config import TrialParams

SEARCHES = ("optuna", "grid")


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple  # the grid; Optuna draws from the same set, or log-uniformly over its range
    log_uniform: bool = False

    def domain(self, search: str):
        if search == "grid":
            return tune.grid_search(list(self.values))
        if self.log_uniform:
            return tune.loguniform(min(self.values), max(self.values))
        return tune.choice(list(self.values))

    def describe(self) -> str:
        values = ", ".join(f"{v:g}" for v in self.values)
        extra = (
            f" (Optuna: log-uniform on [{min(self.values):g}, {max(self.values):g}])"
            if self.log_uniform
            else ""
        )
        return f"{self.name} in {{{values}}}{extra}"


BETA = Param("beta", (0.001, 0.01, 0.1, 1.0), log_uniform=True)
DIM = Param("dim", (16, 32, 64, 128))
STEPS = Param("steps", (10_000, 50_000))
LAMBDA_SMOOTH = Param("lambda_smooth", (0.0, 0.1))
LAMBDA_PRED = Param("lambda_pred", (0.0, 0.01, 0.1, 1.0))

# The seed experiment's configuration (TrialParams' defaults): Optuna's first trial (points_to_evaluate).
IDENTITY = ("beta", "dim", "steps", "lambda_smooth", "lambda_pred")  # what a space can vary
BASELINE = {name: getattr(TrialParams, name) for name in IDENTITY}


def baseline(search: str) -> dict:
    """The seed's configuration alone (beta=0.01, dim=32, 10k steps); --num-samples N repeats it."""
    return _space(search)


def beta_dim(search: str) -> dict:
    """KL weight x bottleneck size: the first question (16 grid points)."""
    return _space(search, BETA, DIM)


def beta_dim_steps(search: str) -> dict:
    """The full grid of the research plan: beta x dim x {10k, 50k} steps (32 grid points)."""
    return _space(search, BETA, DIM, STEPS)


def steps(search: str) -> dict:
    """Does training longer move the ceiling? beta=0.01, dim=32 at 10k and 50k steps."""
    return _space(search, STEPS)


def ar_losses(search: str) -> dict:
    """Losses that shape the latents for prediction: lambda_smooth x lambda_pred (8 grid points)."""
    return _space(search, LAMBDA_SMOOTH, LAMBDA_PRED)


SPACES: dict[str, Callable[[str], dict]] = {
    "beta_dim": beta_dim,
    "beta_dim_steps": beta_dim_steps,
    "steps": steps,
    "ar_losses": ar_losses,
    "baseline": baseline,
}
PARAMS = {p.name: p for p in (BETA, DIM, STEPS, LAMBDA_SMOOTH, LAMBDA_PRED)}
_SPACE_PARAMS = {
    "beta_dim": (BETA, DIM),
    "beta_dim_steps": (BETA, DIM, STEPS),
    "steps": (STEPS,),
    "ar_losses": (LAMBDA_SMOOTH, LAMBDA_PRED),
    "baseline": (),
}


def _space(search: str, *params: Param) -> dict:
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; choose one of {', '.join(SEARCHES)}.")
    return {p.name: p.domain(search) for p in params}


def space_params(name: str) -> tuple[Param, ...]:
    check_space(name)
    return _SPACE_PARAMS[name]


def check_space(name: str) -> None:
    if name not in SPACES:
        raise ValueError(f"unknown space {name!r}; choose one of: {', '.join(SPACES)}.")


def grid_size(name: str) -> int:
    return math.prod(len(p.values) for p in space_params(name))


def grid_points(name: str, repeats: int = 1, fixed: dict | None = None) -> list[dict]:
    """The grid of space `name`, each point `repeats` times, in the order a sweep runs it: the longest
    trials first (the last wave is then short ones, not one long trial alone), and among equally long
    ones the compiled step's distinct shapes in turn (dim, and which loss terms are on), so the first
    wave compiles each shape once, side by side, and later waves find every one in the compile cache.
    (Tune's own grid order varies beta fastest: every wave a new dim, every wave compiling again.)"""
    params = space_params(name)
    points = [dict(zip([p.name for p in params], values, strict=True))
              for values in itertools.product(*(p.values for p in params))] * repeats  # fmt: skip
    full = [{**BASELINE, **(fixed or {}), **point} for point in points]

    def shape(c: dict) -> tuple:
        return c["dim"], c["beta"] > 0, c["lambda_smooth"] > 0, c["lambda_pred"] > 0

    ordered = []
    for steps in sorted({c["steps"] for c in full}, reverse=True):
        groups: dict[tuple, list[dict]] = {}
        for point, c in zip(points, full, strict=True):
            if c["steps"] == steps:
                groups.setdefault(shape(c), []).append(point)
        queues = list(groups.values())
        while any(queues):
            ordered += [q.pop(0) for q in queues if q]
    return ordered


def baseline_point(name: str) -> dict:
    """The seed configuration restricted to the parameters `name` varies."""
    return {p.name: BASELINE[p.name] for p in space_params(name)}


def validate_values(values: dict) -> None:
    """Reject values no trial can run with, before any compute: the VAE's own rules (VAEConfig: beta a
    finite number >= 0, dim >= 1, loss weights >= 0) and the sweep's (dim an integer, steps >= 1)."""
    problems = []
    if "dim" in values and not float(values["dim"]).is_integer():
        problems.append(f"dim must be an integer (got {values['dim']})")
    if "steps" in values and not values["steps"] >= 1:
        problems.append(f"steps must be >= 1 (got {values['steps']})")
    vae = {"latent_dim" if k == "dim" else k: v for k, v in values.items() if k in IDENTITY and k != "steps"}
    try:
        VAEConfig(**{**vae, "latent_dim": int(vae.get("latent_dim", 1))})
    except ValueError as err:
        problems.append(str(err).replace("latent_dim", "dim"))
    if problems:
        raise ValueError("bad trial parameters: " + "; ".join(problems) + ".")


def describe_spaces() -> str:
    """For --help: every space with its docstring and domains."""
    lines = []
    for name, fn in SPACES.items():
        doc = (fn.__doc__ or "").strip()
        domains = "; ".join(p.describe() for p in _SPACE_PARAMS[name])
        lines.append(f"  {name:15s} {doc}\n  {'':15s} {domains}; grid {grid_size(name)} trials")
    return "\n".join(lines)
