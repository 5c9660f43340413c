import math

import pytest
import torch

from models import losses
from models.training import (
    Batch,
    StepSettings,
    VAETrainer,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from models.vae import BetaVAE, LatentPredictor, VAEConfig
from sweep.corpus import BUNDLED_CORPUS
from sweep.data import read_audio


@pytest.fixture(scope="module")
def speech_batch(codec):
    """A fixed batch of real speech: 2 crops of 16 frames (1.28 s) and their codec latents."""
    files = sorted(BUNDLED_CORPUS.rglob("*.flac"))[:2]
    audio = torch.stack([torch.from_numpy(read_audio(f)[48000 : 48000 + 16 * 1920]) for f in files])[:, None]
    return Batch(features=codec.encode(audio), audio=audio)


def make_trainer(codec, **config):
    fresh = type(codec).random_init("reduced", seed=0)  # each trainer gets its own decoder copy
    return VAETrainer(BetaVAE(VAEConfig(**config), fresh.decoder))


def test_forward_shapes(codec, speech_batch):
    vae = BetaVAE(VAEConfig(latent_dim=16), codec.decoder)
    audio, mu, logvar, z = vae(speech_batch.features)
    assert audio.shape == speech_batch.audio.shape
    assert mu.shape == logvar.shape == z.shape == (2, 16, 16)
    _, mu2, _, z2 = vae(speech_batch.features, sample=False)
    assert torch.equal(z2, mu2)


def test_loss_drops_30_percent_in_100_steps(codec, speech_batch):
    trainer = make_trainer(codec)  # the seed's defaults: D=32, beta=0.01, lr=1e-4
    first = trainer.train_step(speech_batch)["train/loss"]
    for _ in range(99):
        last = trainer.train_step(speech_batch)["train/loss"]
    assert trainer.step == 100
    assert last <= 0.7 * first, f"loss went {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize(
    "weights",
    [
        dict(beta=0.0, lambda_smooth=0.0, lambda_pred=0.0),
        dict(beta=0.5, lambda_smooth=0.0, lambda_pred=0.0),
        dict(beta=0.0, lambda_smooth=2.0, lambda_pred=0.0),
        dict(beta=0.0, lambda_smooth=0.0, lambda_pred=3.0),
        dict(beta=0.1, lambda_smooth=0.2, lambda_pred=0.3),
    ],
)
def test_each_term_weighted_exactly_by_its_lambda(codec, speech_batch, weights):
    trainer = make_trainer(codec, **weights)
    torch.manual_seed(1)
    terms = trainer.loss_terms(speech_batch)
    expected = terms["recon"]
    if weights["beta"]:
        expected = expected + weights["beta"] * terms["kl"]
    if weights["lambda_smooth"]:
        expected = expected + weights["lambda_smooth"] * terms["smooth"]
    if weights["lambda_pred"]:
        expected = expected + weights["lambda_pred"] * terms["pred"]
    assert terms["loss"].item() == expected.item()
    assert terms["kl"].item() > 0 and terms["smooth"].item() > 0  # reported even when unweighted
    assert ("pred" in terms) == (weights["lambda_pred"] > 0)
    assert (trainer.predictor is None) == (weights["lambda_pred"] == 0)


def test_zero_beta_gives_kl_no_gradient(codec, speech_batch):
    """With beta = 0 the logvar head only sees the reparameterisation noise through recon, never the KL."""
    trainer = make_trainer(codec, beta=0.0)
    torch.manual_seed(2)
    trainer.loss_terms(speech_batch)["loss"].backward()
    grad_zero_beta = trainer.vae.to_logvar.weight.grad.clone()
    trainer.vae.zero_grad()
    torch.manual_seed(2)
    terms = trainer.loss_terms(speech_batch)
    terms["recon"].backward()
    torch.testing.assert_close(trainer.vae.to_logvar.weight.grad, grad_zero_beta, rtol=0, atol=0)


def test_delta_prediction_loss_targets_the_change_of_z():
    """On latents whose every step adds a known change v, predicting v costs exactly 0 and predicting the
    next frame itself does not: L_pred targets z_{t+1} - z_t (the group's definition)."""
    v = torch.tensor([0.5, -1.0, 2.0])
    z = (torch.randn(2, 3, 1) + v[None, :, None] * torch.arange(12.0)).requires_grad_()  # (B, D, F)
    constant = lambda contexts: v.expand(len(contexts), 3)  # noqa: E731
    assert losses.delta_prediction_loss(constant, z, context=4) < 1e-12  # float32 rounding of the ramp
    next_frame = lambda contexts: contexts[:, -3:] + v  # noqa: E731  (the absolute next frame)
    assert losses.delta_prediction_loss(next_frame, z, context=4) > 1.0


def test_delta_predictor_learns_a_known_change():
    """A ramp with a random slope per sequence: the change is the slope, readable from the context."""
    torch.manual_seed(0)
    predictor = LatentPredictor(latent_dim=2, context=3, hidden=32)
    opt = torch.optim.Adam(predictor.parameters(), lr=3e-3)
    for _ in range(400):
        slope = torch.randn(16, 2, 1)
        z = torch.randn(16, 2, 1) + slope * torch.arange(10.0)
        loss = losses.delta_prediction_loss(predictor, z, context=3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss < 0.02  # the slopes' variance is 1


def test_pred_loss_reaches_the_vae_through_the_sampled_z(codec, speech_batch):
    """L_pred acts on the sampled z, so its gradient reaches logvar too (it would not from mu)."""
    trainer = make_trainer(codec, latent_dim=8, lambda_pred=1.0)
    trainer.loss_terms(speech_batch)["pred"].backward()
    assert trainer.vae.to_logvar.weight.grad.abs().sum() > 0
    assert trainer.vae.to_mu.weight.grad.abs().sum() > 0


def test_predictor_trains_with_its_own_lr(codec, speech_batch):
    trainer = make_trainer(codec, lambda_pred=1.0, pred_lr=1e-3, lr=1e-4)
    assert trainer.pred_optimizer.param_groups[0]["lr"] == 1e-3
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-4
    before = [p.clone() for p in trainer.predictor.parameters()]
    metrics = trainer.train_step(speech_batch)
    assert "train/pred" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.predictor.parameters(), strict=True))


def test_checkpoint_round_trip_gives_identical_outputs(codec, speech_batch, tmp_path):
    trainer = make_trainer(codec, latent_dim=8, lambda_pred=0.1)
    for _ in range(3):
        trainer.train_step(speech_batch)
    save_checkpoint(trainer, tmp_path / "ckpt", {"codec": "random:reduced:0"})
    restored = make_trainer(codec, latent_dim=8, lambda_pred=0.1)
    meta = load_checkpoint(tmp_path / "ckpt", restored)
    assert meta["step"] == restored.step == 3 and meta["codec"] == "random:reduced:0"
    for t in (trainer, restored):
        t.vae.eval()
    with torch.no_grad():
        a = trainer.vae(speech_batch.features, sample=False)[0]
        b = restored.vae(speech_batch.features, sample=False)[0]
    assert torch.equal(a, b)
    # The optimiser state came back too: the next step is the same on both.
    torch.manual_seed(3)
    m1 = trainer.train_step(speech_batch)
    torch.manual_seed(3)
    m2 = restored.train_step(speech_batch)
    assert m1 == m2


def test_a_checkpoint_without_optimizer_state_is_the_weights_alone(codec, speech_batch, tmp_path):
    """A finished trial keeps its trained weights once: no AdamW moments (2x the weights)."""
    trainer = make_trainer(codec, latent_dim=8, lambda_pred=0.1)
    trainer.train_step(speech_batch)
    full = save_checkpoint(trainer, tmp_path / "full")
    final = save_checkpoint(trainer, tmp_path / "final", optimizer=False)
    assert sorted(p.name for p in final.iterdir()) == ["meta.json", "weights.pt"]
    size = {d.name: sum(p.stat().st_size for p in d.iterdir()) for d in (full, final)}
    assert 2.5 < size["full"] / size["final"] < 3.5  # weights + Adam's two moments vs weights
    restored = make_trainer(codec, latent_dim=8, lambda_pred=0.1)
    meta = load_checkpoint(final, restored)
    assert meta["step"] == restored.step == 1 and meta["resumable"] is False
    assert load_checkpoint(full, make_trainer(codec, latent_dim=8, lambda_pred=0.1))["resumable"] is True
    for a, b in zip(trainer.vae.state_dict().values(), restored.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_overwrite_is_atomic_and_config_checked(codec, speech_batch, tmp_path):
    trainer = make_trainer(codec, latent_dim=8)
    save_checkpoint(trainer, tmp_path / "ckpt")
    trainer.train_step(speech_batch)
    save_checkpoint(trainer, tmp_path / "ckpt")
    assert read_checkpoint_meta(tmp_path / "ckpt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left
    with pytest.raises(ValueError, match="trained with"):
        load_checkpoint(tmp_path / "ckpt", make_trainer(codec, latent_dim=16))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(latent_dim=0), "latent_dim must be >= 1"),
        (dict(beta=-1.0), "beta must be"),
        (dict(beta=math.nan), "beta must be"),
        (dict(lambda_pred=-0.1), "lambda_pred must be >= 0"),
        (dict(lr=0.0), "learning rates must be > 0"),
    ],
)
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**bad)


def test_kl_closed_form():
    mu = torch.tensor([[[1.0], [0.0]]])  # (B=1, D=2, F=1)
    logvar = torch.tensor([[[0.0], [math.log(4.0)]]])
    # 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 4 - 1 - log 4)
    expected = 0.5 + 0.5 * (3 - math.log(4.0))
    assert losses.gaussian_kl(mu, logvar).item() == pytest.approx(expected)
    assert losses.gaussian_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)).item() == 0


def test_recon_losses_zero_on_identical_signals_and_positive_otherwise():
    x = torch.randn(2, 1, 8192)
    assert losses.multiscale_stft_loss(x, x).item() == 0
    assert losses.waveform_l1(x, x).item() == 0
    assert losses.multiscale_stft_loss(x, 0.5 * x).item() > 0


def test_smoothness_closed_form():
    z = torch.arange(5.0).view(1, 1, 5).repeat(1, 2, 1)  # steps of 1 in every dim
    assert losses.smoothness_loss(z).item() == 1.0
    assert losses.smoothness_loss(torch.ones(1, 3, 7)).item() == 0


def test_context_windows_order():
    z = torch.arange(2 * 3 * 6, dtype=torch.float32).view(2, 3, 6)  # (B, D, F)
    ctx, nxt = losses.context_windows(z, context=4)
    assert ctx.shape == (2 * 2, 4 * 3) and nxt.shape == (4, 3)
    # First row: frames 0..3 of batch 0, each frame's D values together; target frame 4.
    assert ctx[0].tolist() == z[0, :, 0:4].T.reshape(-1).tolist()
    assert nxt[0].tolist() == z[0, :, 4].tolist()
    assert nxt[3].tolist() == z[1, :, 5].tolist()
    with pytest.raises(ValueError, match="more than 4 frames"):
        losses.context_windows(z[..., :4], context=4)


def test_async_step_returns_the_same_terms_as_train_step(codec, speech_batch):
    """train_step_async's row is train_step's dict in metric_names order, on the device, unsynced."""
    noise = torch.randn(2, 32, 16, generator=torch.Generator().manual_seed(3))
    a, b = (torch.manual_seed(0) and make_trainer(codec, lambda_pred=0.5) for _ in range(2))
    row = a.train_step_async(speech_batch, noise)
    metrics = b.train_step(speech_batch, noise)
    assert a.metric_names == tuple(metrics) == (
        "train/stft", "train/l1", "train/kl", "train/smooth", "train/recon", "train/pred", "train/loss"
    )  # fmt: skip
    assert row.shape == (7,) and row.device == a.device and not row.requires_grad
    assert row.tolist() == pytest.approx(list(metrics.values()), rel=1e-6)
    assert a.step == b.step == 1


class _LinearDecoder(torch.nn.Module):
    """A stand-in with the decoder's contract, (B, 512, F) -> (B, 1, F * 1920): compiles in seconds."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose1d(512, 1, kernel_size=1920, stride=1920)

    def forward(self, latents):
        return torch.tanh(self.up(latents))


@pytest.mark.slow
def test_compiled_step_computes_what_the_eager_step_does(speech_batch):
    """The compiled path (StepSettings(compile=True); CUDA graphs on a GPU) computes the same step:
    from the same weights, batch and noise, the same loss terms and the same gradients.
    (Trajectories then drift at rounding level: Adam's first update is about lr * sign(grad),
    so a near-zero gradient's rounding decides its direction.)"""
    noise = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(4))
    trainers, rows = [], []
    for settings in (StepSettings(), StepSettings(compile=True)):
        torch.manual_seed(0)
        vae = BetaVAE(VAEConfig(latent_dim=16, lambda_smooth=0.1), _LinearDecoder())
        trainers.append(VAETrainer(vae, "cpu", settings))
        rows.append(trainers[-1].train_step(speech_batch, noise))
    assert list(rows[1].values()) == pytest.approx(list(rows[0].values()), rel=1e-5)
    grads = [torch.cat([p.grad.flatten() for p in t.vae.parameters()]) for t in trainers]
    assert (grads[1] - grads[0]).norm() <= 1e-4 * grads[0].norm()


def test_fastest_settings_use_the_gpu_only_paths_only_on_a_gpu():
    assert StepSettings.fastest("cpu") == StepSettings(compile=False, fused_optimizer=False)
    assert StepSettings.fastest("cuda") == StepSettings(compile=True, fused_optimizer=True)
    with pytest.raises(ValueError, match="fused_optimizer needs a CUDA device"):
        VAETrainer(
            BetaVAE(VAEConfig(latent_dim=4), _LinearDecoder()), "cpu", StepSettings(fused_optimizer=True)
        )


def test_one_compiled_graph_serves_every_beta_and_lambda(codec, speech_batch):
    """The loss weights enter the compiled step as a tensor: two trials that differ only in beta and
    lambda_smooth trace to the same graph, so the second finds the first's compiled kernels in the
    shared compile cache instead of compiling again (as it did while the weights were constants)."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    for beta, smooth in ((0.01, 0.1), (0.0443, 0.3)):
        trainer = make_trainer(codec, beta=beta, lambda_smooth=smooth)
        torch._dynamo.reset()
        compiled = torch.compile(trainer._loss_row, backend=record)
        loss, _ = compiled(speech_batch.features, speech_batch.audio, None, trainer.loss_weights)
        assert torch.isfinite(loss)
    torch._dynamo.reset()
    assert len(graphs) == 2 and graphs[0] == graphs[1]
    assert "0.0443" not in graphs[1] and "0.3" not in graphs[1]
