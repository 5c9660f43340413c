"""Mixture density networks over latent frames (docs/science.md §3).

    mdn = MDN(dim=32, context=8)                   # p(z_{t+h} | z_{t-7..t}), M = 8 diagonal Gaussians
    p0 = MDN(dim=32, context=0)                    # unconditional mixture p0(z), same head
    fit_mdn(mdn, frames, starts, horizon=1, config=FitConfig())
    nll = mdn.nll(contexts, targets)               # (N,) nats per frame, in the caller's dtype

A model standardises its inputs and targets with the training frames' per-dim mean and std
(buffers) and reports densities in the original space (the log-Jacobian, sum_d log std_d, is
added back), so NLLs of different models, and against closed forms, compare directly.
The component means are residual on the newest context frame; log-scales are bounded.
Score in float64 with `mdn.double()`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

LOG_SCALE_RANGE = (-9.0, 3.0)  # in standardised units: std between 1.2e-4 and 20 data stds
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class MDN(nn.Module):
    """Diagonal-Gaussian mixture over (D,) frames, conditioned on W context frames (W = 0: unconditional).

    Context (N, W, D), oldest first -> logits (N, M), means (N, M, D), log_scales (N, M, D).
    """

    def __init__(
        self, dim: int, context: int = 8, components: int = 8, hidden: tuple[int, ...] = (1024, 1024)
    ):
        super().__init__()
        self.dim, self.context, self.components = dim, context, components
        out = components * (2 * dim + 1)
        if context == 0:
            self.trunk = None
            self.params = nn.Parameter(torch.zeros(out))
            nn.init.normal_(self.params, std=0.5)
        else:
            layers, width = [], context * dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.GELU()]
                width = h
            layers.append(nn.Linear(width, out))
            self.trunk = nn.Sequential(*layers)
            nn.init.zeros_(self.trunk[-1].weight)  # start as "next = last frame, unit scale"
            nn.init.normal_(self.trunk[-1].bias, std=0.1)
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def set_standardisation(self, frames: torch.Tensor) -> None:
        """Per-dim mean and std of (N, D) training frames (std floored, so dead latent dims stay finite)."""
        self.loc.copy_(frames.mean(dim=0))
        self.scale.copy_(frames.std(dim=0).clamp_min(1e-6))

    def mixture(self, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixture parameters in the original space:
        log-weights (N, M), means (N, M, D), log-scales (N, M, D)."""
        n, m, d = contexts.shape[0], self.components, self.dim
        x = (contexts - self.loc) / self.scale  # (N, W, D)
        raw = self.params.expand(n, -1) if self.trunk is None else self.trunk(x.reshape(n, -1))
        logits, means, log_scales = raw.split([m, m * d, m * d], dim=1)
        means = means.reshape(n, m, d)
        if self.context > 0:
            means = means + x[:, -1:, :]  # residual on the newest context frame
        lo, hi = LOG_SCALE_RANGE
        # raw 0 maps to log-scale 0 (unit std in standardised units): sigmoid(log(-lo / hi)) = -lo / (hi - lo)
        log_scales = lo + (hi - lo) * torch.sigmoid(log_scales.reshape(n, m, d) + math.log(-lo / hi))
        return (
            torch.log_softmax(logits, dim=1),
            means * self.scale + self.loc,
            log_scales + self.scale.log(),
        )

    def forward(self, contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The NLL (what torch.func.functional_call calls when fitting models together)."""
        return self.nll(contexts, targets)

    def nll(self, contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, W, D), (N, D) -> (N,) negative log-density of targets, nats per frame (sum over D)."""
        log_w, means, log_scales = self.mixture(contexts)
        z = (targets[:, None, :] - means) * torch.exp(-log_scales)  # (N, M, D)
        log_comp = -(0.5 * z.square() + log_scales + _HALF_LOG_2PI).sum(dim=2)  # (N, M)
        return -torch.logsumexp(log_w + log_comp, dim=1)

    def mean(self, contexts: torch.Tensor) -> torch.Tensor:
        """(N, W, D) -> (N, D): the mixture mean sum_m w_m mu_m."""
        log_w, means, _ = self.mixture(contexts)
        return (log_w.exp()[:, :, None] * means).sum(dim=1)

    def sample(self, contexts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, W, D) -> (N, D): one draw per row (component by its weight, then its Gaussian)."""
        log_w, means, log_scales = self.mixture(contexts)
        pick = torch.multinomial(log_w.exp(), 1, generator=generator)[:, 0]  # (N,)
        rows = torch.arange(len(pick), device=pick.device)
        noise = torch.randn(
            means.shape[0], means.shape[2], generator=generator, device=means.device, dtype=means.dtype
        )
        return means[rows, pick] + log_scales[rows, pick].exp() * noise


@dataclass(frozen=True)
class FitConfig:
    steps: int = 3000  # at most; early stopping usually ends sooner
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eval_every: int = 100
    patience: int = 5  # evaluations without held-out improvement before stopping
    holdout_fraction: float = 0.1
    seed: int = 0
    # On a GPU, capture one training step (forward, backward, AdamW) as a CUDA graph and replay it: the
    # fits are launch-bound (small MLPs), and a replay costs one launch instead of hundreds of kernels'
    # worth of Python. The same arithmetic either way (tests/test_gpu.py compares them).
    cuda_graphs: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise ValueError(f"steps, batch_size, eval_every and patience must be >= 1, got {self}.")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be between 0 and 1, got {self.holdout_fraction}.")


def gather(
    frames: torch.Tensor, starts: torch.Tensor, context: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts (N, W, D) = frames[t - W + 1 .. t] and targets (N, D) = frames[t + h] for t in `starts`.

    `frames` is (T, D), all utterances one after another; `starts` are global indices t for which
    the whole window lies inside one utterance (see `valid_starts`).
    """
    offsets = torch.arange(-context + 1, 1, device=frames.device)
    return frames[starts[:, None] + offsets], frames[starts + horizon]


def valid_starts(lengths: list[int], context: int, horizon: int, device=None) -> torch.Tensor:
    """Global indices t with t - W + 1 >= start and t + horizon <= end of their own utterance."""
    out, offset = [], 0
    for n in lengths:
        first, last = max(context - 1, 0), n - 1 - horizon
        if last >= first:
            out.append(torch.arange(offset + first, offset + last + 1))
        offset += n
    return torch.cat(out).to(device) if out else torch.zeros(0, dtype=torch.long, device=device)


def fit_mdn(model: MDN, frames: torch.Tensor, starts: torch.Tensor, horizon: int, config: FitConfig) -> dict:
    """Teacher-forced maximum likelihood with AdamW on minibatches; early stop on a held-out slice.

    The held-out slice is the last `holdout_fraction` of `starts` (whole utterances at the end, so it
    is not a shuffled copy of the training windows). Restores the best held-out weights.
    Returns {"steps", "best_holdout_nll", "train_nll"}.
    """
    return fit_mdns([model], frames, [starts], [horizon], config)[0]


def fit_mdns(
    models: list[MDN],
    frames: torch.Tensor,
    starts: list[torch.Tensor],
    horizons: list[int],
    config: FitConfig,
) -> list[dict]:
    """`fit_mdn` for several models of one architecture at once, each on its own windows and horizon,
    with its own held-out slice, early stopping and step-size halving, as if fitted alone; but each
    training step is one batched forward and backward (torch.func.vmap) for all of them. On a GPU the
    fits are launch-bound (small MLPs), so the battery's four horizons cost about what one did."""
    for s in starts:
        if len(s) < 2:
            raise ValueError(f"need at least 2 training windows to fit an MDN, got {len(s)}.")
    for model in models:
        model.set_standardisation(frames)
        model.train()
    splits = [_split(s, config.holdout_fraction) for s in starts]
    picks = _minibatch_starts(splits, config)  # (K, steps, batch) global window ends, drawn up front
    step_once = _TrainingStep(models, frames, horizons, config, picks[:, 0])
    best = [math.inf] * len(models)
    best_state = [copy.deepcopy(m.state_dict()) for m in models]
    bad, stopped_at = [0] * len(models), [None] * len(models)
    for step in range(1, config.steps + 1):
        losses = step_once(picks[:, step - 1])  # (K,)
        if step % config.eval_every and step != config.steps:
            continue
        for k, model in enumerate(models):
            if stopped_at[k] is not None:
                continue
            held = _mean_nll(model, frames, splits[k][1], horizons[k])
            if held < best[k] - 1e-4:
                best[k], best_state[k], bad[k] = held, copy.deepcopy(model.state_dict()), 0
                continue
            bad[k] += 1  # a plateau: halve the step size; stop after `patience` evaluations without progress
            step_once.scale_lr(k, 0.5)
            if bad[k] >= config.patience:
                stopped_at[k] = step
                step_once.scale_lr(k, 0.0)  # lr 0: AdamW leaves the weights as they are
        if all(s is not None for s in stopped_at):
            break
    for model, state in zip(models, best_state, strict=True):
        model.load_state_dict(state)
        model.eval()
    return [
        {"steps": stopped_at[k] or step, "best_holdout_nll": best[k], "train_nll": float(losses[k].detach())}
        for k in range(len(models))
    ]


class _TrainingStep:
    """One AdamW step of every model on its minibatch (window ends `t`, (K, batch)); returns the (K,)
    minibatch NLLs. On a GPU with `config.cuda_graphs`, the first steps run eagerly on a side stream
    (AdamW's state, cuBLAS's workspace), then one step is captured as a CUDA graph and replayed: the
    minibatch goes in through a static index tensor, the step sizes through per-model tensors."""

    WARMUP = 3  # eager steps before the capture, as torch.cuda.graph's documentation asks

    def __init__(self, models: list[MDN], frames, horizons, config: FitConfig, first: torch.Tensor):
        self.frames = frames
        self.graphed = config.cuda_graphs and frames.is_cuda
        # per model: a tensor the graph reads at each replay, so that halving one model's step size needs
        # no new capture
        lrs = [torch.tensor(config.lr, device=frames.device) if self.graphed else config.lr for _ in models]
        self.optimizer = torch.optim.AdamW(
            [{"params": list(m.parameters()), "lr": lr} for m, lr in zip(models, lrs, strict=True)],
            lr=config.lr,
            weight_decay=config.weight_decay,
            **({"fused": True} if frames.is_cuda else {}),
            **({"capturable": True} if self.graphed else {}),
        )
        self.offsets = torch.arange(-models[0].context + 1, 1, device=frames.device)
        self.ahead = torch.tensor(horizons, device=frames.device)[:, None]  # (K, 1)
        self.batched_nll = _batched_nll(models)
        self.t = first.clone()  # the graph's input: this step's window ends
        self.taken, self.graph, self.losses = 0, None, None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.t.copy_(t)
        self.taken += 1
        if not self.graphed:
            return self._step()
        if self.graph is not None:
            self.graph.replay()
            return self.losses
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            losses = self._step()
        torch.cuda.current_stream().wait_stream(side)
        if self.taken == self.WARMUP:  # capture the next steps (capturing runs nothing: no step is lost)
            self.optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients from its pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.losses = self._step(zero_grad=False)
        return losses

    def _step(self, zero_grad: bool = True) -> torch.Tensor:
        t, frames = self.t, self.frames
        losses = self.batched_nll(frames[t[..., None] + self.offsets], frames[t + self.ahead]).mean(dim=1)
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # model k's parameters get exactly the gradient of losses[k]
        self.optimizer.step()
        return losses.detach()

    def scale_lr(self, k: int, factor: float) -> None:
        group = self.optimizer.param_groups[k]
        if self.graphed:
            group["lr"].mul_(factor)  # in place: the graph reads this tensor at every replay
        else:
            group["lr"] *= factor


def _split(starts: torch.Tensor, holdout_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    n_hold = max(1, int(len(starts) * holdout_fraction))
    return starts[:-n_hold], starts[-n_hold:]


def _minibatch_starts(splits, config: FitConfig) -> torch.Tensor:
    """(K, steps, batch): each model's minibatches from a CPU generator seeded with config.seed."""
    batch = min(config.batch_size, *(len(train) for train, _ in splits))
    picks = []
    for train, _ in splits:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        index = torch.randint(len(train), (config.steps, batch), generator=generator)
        picks.append(train[index.to(train.device)])
    return torch.stack(picks)


def _batched_nll(models: list[MDN]):
    """(K, N, W, D) contexts, (K, N, D) targets -> (K, N) NLLs, model k on slice k, in one vmap call.
    Parameters are stacked afresh at each call, so gradients flow to each model's own parameters."""
    template = copy.deepcopy(models[0]).to("meta")
    names = [name for name, _ in models[0].named_parameters()]
    buffers = {
        name: torch.stack([dict(m.named_buffers())[name] for m in models])
        for name, _ in models[0].named_buffers()
    }

    def one(params, bufs, contexts, targets):
        return functional_call(template, (params, bufs), (contexts, targets))

    def nll(contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]) for n in names}
        return vmap(one)(params, buffers, contexts, targets)

    return nll


@torch.no_grad()
def _mean_nll(
    model: MDN, frames: torch.Tensor, starts: torch.Tensor, horizon: int, chunk: int = 65536
) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(starts), chunk):
        contexts, targets = gather(frames, starts[i : i + chunk], model.context, horizon)
        total += model.nll(contexts, targets).sum().item()
    model.train()
    return total / len(starts)
