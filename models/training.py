"""One beta-VAE training step, usable without Ray, and checkpoints.

    trainer = VAETrainer(BetaVAE(VAEConfig(latent_dim=32), codec.decoder), device)
    metrics = trainer.train_step(batch)      # {"train/loss": ..., "train/recon": ..., ...}
    row = trainer.train_step_async(batch)    # the same values as a device tensor: no host sync
    fast = VAETrainer(vae, "cuda", StepSettings.fastest("cuda"))   # compiled (CUDA graphs), fused AdamW
    save_checkpoint(trainer, "ckpt/", {"codec": codec.spec.describe()})   # resumable: weights + optimizer
    save_checkpoint(trainer, "final/", optimizer=False)                     # the trained model alone
    load_checkpoint("ckpt/", trainer)

Loss (docs/science.md §2.3): multi-scale STFT + waveform L1 + beta * KL + lambda_smooth * L_smooth
+ lambda_pred * L_pred. A term whose weight is 0 is not added to the loss at all (and L_pred's
predictor is not even built), so a zero weight means exactly zero influence on the gradients.
L_smooth acts on the posterior means mu, the latents the diagnostics model; L_pred, as in the
group's code, on the sampled z: a small MLP predicts z_{t+1} - z_t from the W frames up to t, and
its error trains both the MLP and, through the reparameterisation, the VAE.

Speed (issue 7, measured by `python -m sweep.bench`): a batch-4 step leaves a GPU mostly idle and
its time goes to launching many small kernels. `StepSettings` turns on what pays there:
torch.compile of forward + loss in "reduce-overhead" mode (fused elementwise kernels, the forward
and backward replayed as CUDA graphs), AdamW's fused kernel, and a step that never waits for the
GPU (`train_step_async`; audio goes to the GPU from pinned memory). They compute the same function:
tests/test_vae.py and the benchmark compare them with the eager step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from models import losses
from models.runtime import autocast
from models.spec import CHECKPOINT_META, CHECKPOINT_OPTIMIZER, CHECKPOINT_WEIGHTS, VAEConfig
from models.vae import BetaVAE, LatentPredictor

TERM_NAMES = ("stft", "l1", "kl", "smooth", "recon")  # then "pred" when L_pred is on, then "loss"


@dataclass
class Batch:
    """Codec latents and the audio they came from, aligned frame by frame."""

    features: torch.Tensor  # (B, 512, F)
    audio: torch.Tensor  # (B, 1, F * 1920)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.features.to(device, non_blocking=True), self.audio.to(device, non_blocking=True))


@dataclass(frozen=True)
class StepSettings:
    """How a training step runs: operational, not part of a trial's identity (each setting computes
    the same function, to bf16 rounding)."""

    compile: bool = False  # torch.compile forward + loss; on CUDA in "reduce-overhead" mode (CUDA graphs)
    fused_optimizer: bool = False  # AdamW(fused=True): one kernel for all parameters (CUDA only)

    @classmethod
    def fastest(cls, device: torch.device | str) -> StepSettings:
        """Everything that pays on `device`: all of it on CUDA, nothing on the CPU (compiling even the
        reduced codec's decoder took 60 s on 2 cores, longer than a smoke trial's training)."""
        cuda = torch.device(device).type == "cuda"
        return cls(compile=cuda, fused_optimizer=cuda)


class VAETrainer:
    """Owns the VAE, the optional L_pred predictor and their optimisers; counts steps."""

    def __init__(
        self, vae: BetaVAE, device: torch.device | str = "cpu", settings: StepSettings = StepSettings()
    ):
        self.device = torch.device(device)
        self.settings = settings
        if settings.fused_optimizer and self.device.type != "cuda":
            raise ValueError(
                f"fused_optimizer needs a CUDA device, got {self.device}; turn it off on the CPU."
            )
        self.config: VAEConfig = vae.config
        self.vae = vae.to(self.device).train()
        trainable = [p for p in self.vae.parameters() if p.requires_grad]
        fused = {"fused": True} if settings.fused_optimizer else {}
        self.optimizer = torch.optim.AdamW(trainable, lr=self.config.lr, weight_decay=0.0, **fused)
        self.predictor: LatentPredictor | None = None
        self.pred_optimizer = None
        if self.config.lambda_pred > 0:
            self.predictor = LatentPredictor(
                self.config.latent_dim, self.config.pred_context, self.config.pred_hidden
            ).to(self.device)
            self.pred_optimizer = torch.optim.AdamW(
                self.predictor.parameters(), lr=self.config.pred_lr, **fused
            )
        self.term_names = TERM_NAMES + (("pred",) if self.predictor is not None else ()) + ("loss",)
        self.metric_names = tuple(f"train/{name}" for name in self.term_names)
        # The terms' weights enter the compiled step as a tensor, not as constants: one compiled graph
        # (and one entry in the shared compile cache) serves every beta and lambda of a sweep.
        self.loss_weights = torch.tensor(
            [self.config.beta, self.config.lambda_smooth, self.config.lambda_pred], device=self.device
        )
        self._losses = self._loss_row
        if settings.compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._losses = torch.compile(self._loss_row, mode=mode)
        self.step = 0

    def loss_terms(
        self, batch: Batch, noise: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Every loss term of `batch` and their weighted sum under "loss". `noise` (B, D, F): the
        reparameterisation's standard normal draw (fresh when None); fixing it makes a step repeatable.
        `weights`: (beta, lambda_smooth, lambda_pred) as a tensor (default: the config's, `loss_weights`)."""
        cfg = self.config
        beta, lambda_smooth, lambda_pred = (self.loss_weights if weights is None else weights).unbind()
        with autocast(self.device):
            audio_hat, mu, logvar, z = self.vae(batch.features, noise=noise)
        terms = {
            "stft": losses.multiscale_stft_loss(audio_hat, batch.audio, cfg.stft_windows),
            "l1": losses.waveform_l1(audio_hat, batch.audio),
            "kl": losses.gaussian_kl(mu, logvar),
            "smooth": losses.smoothness_loss(mu),
        }
        terms["recon"] = terms["stft"] + terms["l1"]
        loss = terms["recon"]
        if cfg.beta > 0:
            loss = loss + beta * terms["kl"]
        if cfg.lambda_smooth > 0:
            loss = loss + lambda_smooth * terms["smooth"]
        if self.predictor is not None:
            terms["pred"] = losses.delta_prediction_loss(self.predictor, z, cfg.pred_context)
            loss = loss + lambda_pred * terms["pred"]
        terms["loss"] = loss
        return terms

    def _loss_row(
        self, features: torch.Tensor, audio: torch.Tensor, noise: torch.Tensor | None, weights: torch.Tensor
    ):
        """(loss, every term stacked in `term_names` order): the part that torch.compile captures."""
        terms = self.loss_terms(Batch(features, audio), noise, weights)
        return terms["loss"], torch.stack([terms[name].float() for name in self.term_names])

    def train_step_async(self, batch: Batch, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One optimiser step on `batch` without waiting for the GPU: returns the loss terms as a
        (len(term_names),) tensor on the device, in `metric_names` order. `noise` as in loss_terms."""
        batch = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.pred_optimizer is not None:
            self.pred_optimizer.zero_grad(set_to_none=True)
        if self.settings.compile and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done with
        loss, row = self._losses(batch.features, batch.audio, noise, self.loss_weights)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.pred_optimizer is not None:
            self.pred_optimizer.step()
        self.step += 1
        return row.detach().clone()  # a CUDA graph's outputs are overwritten by its next replay

    def train_step(self, batch: Batch, noise: torch.Tensor | None = None) -> dict[str, float]:
        """One optimiser step on `batch`; returns namespaced scalars (`train/loss`, `train/kl`, ...)."""
        values = self.train_step_async(batch, noise).tolist()  # one host sync for all terms
        return dict(zip(self.metric_names, values, strict=True))

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type != "cuda" or batch.audio.device == self.device:
            return batch.to(self.device)
        # From pinned memory the copy is asynchronous: the CPU goes on to queue the step.
        return Batch(batch.features.pin_memory(), batch.audio.pin_memory()).to(self.device)

    def weights(self) -> dict:
        """What the trained model is: the VAE's (and L_pred's predictor's) weights, and the step."""
        state = {"step": self.step, "vae": self.vae.state_dict()}
        if self.predictor is not None:
            state["predictor"] = self.predictor.state_dict()
        return state

    def optimizer_state(self) -> dict:
        """What training needs on top of the weights to continue: the optimisers' moments (AdamW: 2x
        the weights' size)."""
        state = {"optimizer": self.optimizer.state_dict()}
        if self.pred_optimizer is not None:
            state["pred_optimizer"] = self.pred_optimizer.state_dict()
        return state

    def load_weights(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        if self.predictor is not None:
            self.predictor.load_state_dict(state["predictor"])
        self.step = int(state["step"])

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.pred_optimizer is not None:
            self.pred_optimizer.load_state_dict(state["pred_optimizer"])


def save_checkpoint(
    trainer: VAETrainer,
    directory: str | os.PathLike,
    metadata: dict | None = None,
    optimizer: bool = True,
) -> Path:
    """Write `directory`/weights.pt, optimizer.pt (unless `optimizer` is False: a trained model
    rather than a resumable one, a third of the size) and meta.json (step, VAE config, `metadata`).
    Tensors only. Written to a temporary folder beside it, then renamed, so a crash never leaves half
    a checkpoint."""
    return write_checkpoint_state(checkpoint_state(trainer, metadata, optimizer), directory)


def checkpoint_state(
    trainer: VAETrainer, metadata: dict | None = None, optimizer: bool = True, copy: bool = False
) -> dict:
    """What save_checkpoint writes, in memory. copy=True clones every tensor where it lies (on a GPU:
    milliseconds), so training can go on while another thread writes the copy (write_checkpoint_state)."""
    state = {
        "weights": trainer.weights(),
        "optimizer": trainer.optimizer_state() if optimizer else None,
        "meta": {"step": trainer.step, "vae_config": trainer.config.to_dict(), **(metadata or {})},
    }
    if copy:
        state["weights"], state["optimizer"] = _cloned(state["weights"]), _cloned(state["optimizer"])
    return state


def _cloned(value):
    """`value` (state dicts: dicts, lists, tensors, numbers) with every tensor cloned."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cloned(v) for v in value)
    return value


def write_checkpoint_state(state: dict, directory: str | os.PathLike) -> Path:
    """A checkpoint_state as save_checkpoint's files, atomically (a temporary folder, then a rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state["weights"], tmp / CHECKPOINT_WEIGHTS)
    if state["optimizer"] is not None:
        torch.save(state["optimizer"], tmp / CHECKPOINT_OPTIMIZER)
    (tmp / CHECKPOINT_META).write_text(json.dumps(state["meta"], indent=2, sort_keys=True))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return directory


def read_checkpoint_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CHECKPOINT_META
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint: it has no {CHECKPOINT_META}.")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | os.PathLike, trainer: VAETrainer) -> dict:
    """Load the weights, and the optimiser state where the checkpoint has it, into `trainer`
    (weights_only: no code runs); returns the metadata, with `resumable` saying whether the optimiser
    state was there."""
    meta = read_checkpoint_meta(directory)
    saved = VAEConfig.from_dict(meta["vae_config"])
    if saved != trainer.config:
        raise ValueError(
            f"checkpoint {directory} was trained with {saved}, but the trainer is configured with "
            f"{trainer.config}; build the trainer from the checkpoint's vae_config."
        )
    directory = Path(directory)
    trainer.load_weights(_load_tensors(directory / CHECKPOINT_WEIGHTS, trainer.device))
    meta["resumable"] = (directory / CHECKPOINT_OPTIMIZER).is_file()
    if meta["resumable"]:
        trainer.load_optimizer_state(_load_tensors(directory / CHECKPOINT_OPTIMIZER, trainer.device))
    return meta


def _load_tensors(path: Path, device: torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)
