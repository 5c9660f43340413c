"""Linear-Gaussian processes and their oracle: the battery's numbers for the true model.

A process is z_t = mu + sum_{i=1..p} A_i (z_{t-i} - mu) + e_t, e_t ~ N(0, Sigma). In companion form,
s_t = (z_t - mu, ..., z_{t-p+1} - mu) and s_{t+1} = F s_t + G e_{t+1}, so

    teacher_h: z_{t+h} | z_{..t} ~ N(mu + [F^h s_t]_1, S_h),  S_h = sum_{j<h} [F^j G Sigma G^T F^jT]_11
    p0:        the stationary N(mu, P_11), P = F P F^T + G Sigma G^T
    rollout_h: the true one-step model fed its own means scores z_{t+h} under N(mu + [F^h s_t]_1, Sigma)

all as the battery scores them (delta-NLL against p0 of the same frame, nats per frame, same
positions). The processes below keep every S_h diagonal, so the battery's diagonal mixtures can
represent the truth and any difference is the battery's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Process:
    name: str
    mu: np.ndarray  # (D,)
    lags: tuple[np.ndarray, ...]  # A_1 .. A_p, each (D, D)
    noise_cov: np.ndarray  # Sigma, (D, D)

    @property
    def dim(self) -> int:
        return len(self.mu)

    def companion(self) -> tuple[np.ndarray, np.ndarray]:
        d, p = self.dim, len(self.lags)
        f = np.zeros((d * p, d * p))
        f[:d] = np.hstack(self.lags)
        f[d:, :-d] = np.eye(d * (p - 1))
        g = np.zeros((d * p, d))
        g[:d] = np.eye(d)
        return f, g

    def simulate(self, n: int, length: int, seed: int, burn_in: int = 300) -> list[np.ndarray]:
        """`n` independent (length, D) float32 sequences, after `burn_in` steps from mu (all at once)."""
        rng = np.random.default_rng(seed)
        chol = np.linalg.cholesky(self.noise_cov)
        history = [np.zeros((n, self.dim))] * len(self.lags)  # deviations from mu, newest first
        out = np.empty((length, n, self.dim), dtype=np.float32)
        for t in range(burn_in + length):
            noise = rng.standard_normal((n, self.dim)) @ chol.T
            x = sum(h @ a.T for a, h in zip(self.lags, history, strict=True)) + noise
            history = [x, *history[:-1]]
            if t >= burn_in:
                out[t - burn_in] = self.mu + x
        return list(out.transpose(1, 0, 2))

    def oracle(self, sequences: list[np.ndarray], context: int, horizons: tuple[int, ...]) -> dict:
        """{"p0/nll", "teacher/k<h>", "rollout/k<h>"} over every window of `context` frames with h_max
        frames after it: the positions the battery scores when there are fewer than its max_positions."""
        f, g = self.companion()
        d, p, h_max = self.dim, len(self.lags), horizons[-1]
        stationary = _stationary_cov(f, g @ self.noise_cov @ g.T)[:d, :d]
        ahead = {}
        cov, power = np.zeros((d, d)), np.eye(d * p)
        for h in range(1, h_max + 1):
            cov = cov + (power @ g @ self.noise_cov @ g.T @ power.T)[:d, :d]
            power = f @ power
            ahead[h] = (np.linalg.matrix_power(f, h)[:d], cov.copy())
        keys = ["p0/nll"] + [f"{kind}/k{h}" for h in horizons for kind in ("teacher", "rollout")]
        sums = dict.fromkeys(keys, 0.0)
        count = 0
        for seq in sequences:
            x = seq.astype(np.float64) - self.mu
            ends = np.arange(max(context, p) - 1, len(seq) - h_max)
            # s_t stacked: (N, p*D), newest lag first
            state = np.hstack([x[ends - i] for i in range(p)])
            for h in horizons:
                target = x[ends + h]
                base = _gauss_nll(target, np.zeros(d), stationary)
                mean = state @ ahead[h][0].T
                sums[f"teacher/k{h}"] += (_gauss_nll(target - mean, np.zeros(d), ahead[h][1]) - base).sum()
                sums[f"rollout/k{h}"] += (_gauss_nll(target - mean, np.zeros(d), self.noise_cov) - base).sum()
            sums["p0/nll"] += _gauss_nll(x[ends + 1], np.zeros(d), stationary).sum()
            count += len(ends)
        return {key: value / count for key, value in sums.items()}


def _stationary_cov(f: np.ndarray, q: np.ndarray) -> np.ndarray:
    """P = F P F^T + Q by doubling (F stable)."""
    p, a = q.copy(), f.copy()
    for _ in range(60):
        p = p + a @ p @ a.T
        a = a @ a
    return p


def _gauss_nll(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(N, D) -> (N,) negative log-density of N(mean, cov)."""
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    r = x - mean
    mahalanobis = np.einsum("nd,de,ne->n", r, np.linalg.inv(cov), r)
    return 0.5 * (len(mean) * math.log(2 * math.pi) + logdet + mahalanobis)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


PROCESSES = (
    # independent dims, time constants from 0.2 to 0.97 frames^-1 decay, offsets, unequal noise
    Process(
        "AR(1) D=6, a 0.2..0.97",
        mu=np.linspace(-2.0, 3.0, 6),
        lags=(np.diag(np.linspace(0.2, 0.97, 6)),),
        noise_cov=np.diag(np.linspace(0.05, 0.5, 6) ** 2),
    ),
    # second-order, oscillating (complex poles r e^{+-i theta}: a1 = 2 r cos theta, a2 = -r^2), per dim
    Process(
        "AR(2) D=4, oscillating",
        mu=np.array([1.0, -0.5, 0.0, 2.0]),
        lags=(
            np.diag(2 * np.array([0.9, 0.8, 0.7, 0.95]) * np.cos([0.3, 0.6, 1.0, 0.15])),
            np.diag(-(np.array([0.9, 0.8, 0.7, 0.95]) ** 2)),
        ),
        noise_cov=np.diag([0.1, 0.2, 0.3, 0.05]) ** 2,
    ),  # fmt: skip
    # all dims coupled: A = 0.9 Q with Q a rotation, isotropic noise (so every S_h is isotropic)
    Process(
        "coupled D=8, A = 0.9 Q",
        mu=np.linspace(-1.0, 1.0, 8),
        lags=(0.9 * _rotation(8, seed=3),),
        noise_cov=0.04 * np.eye(8),
    ),
)
