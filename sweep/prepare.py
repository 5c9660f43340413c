"""What a sweep's trials share, made once by the driver: the data split, the feature cache, the codec's
reference reconstruction and the listening page's reference clips.

    sealed, tags, reference = prepare_sweep(plan)   # the trials' context (sweep.gate.SealedContext),
                                                    # the data's MLflow tags, the codec's reference

The driver runs this in a process of its own (sweep/process_call.py), spawned as the driver starts so
that its imports (torch, the codec, the evaluation code) run beside Ray's start and the trials'
workers'; sweep/gate.py hands the context to the trials.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from evaluation.audio import codec_decoder
from evaluation.trial import reconstruction_metrics
from models.codec import MimiCodec
from models.spec import CodecSpec
from models.training import StepSettings
from sweep import stages_text
from sweep.features import prepare_data
from sweep.gate import SealedContext
from sweep.listening import write_reference_clips
from sweep.plan import SweepPlan
from sweep.trial import TrialContext

log = logging.getLogger(__name__)


def prepare_sweep(plan: SweepPlan) -> tuple[SealedContext, dict, dict]:
    """The data split and the feature cache, built once here; the codec's own reconstruction, measured
    once per sweep (a resumed sweep keeps plan.codec_reference). Returns the trials' context, without
    tracking and sealed for the gate, the MLflow tags that describe the data, and the codec's reference
    (the driver's plan takes it: this runs on the plan's copy in another process)."""
    preset = plan.preset
    data = Path(plan.data)
    began = time.perf_counter()
    codec = MimiCodec.from_spec(CodecSpec.parse(plan.codec))
    seconds = {"codec": time.perf_counter() - began}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundled = preset.data is None and preset.codec.startswith("random:")  # smoke and tiny write it if absent
    prepared = prepare_data(
        data, codec, plan.cache, max_utterances=preset.max_utterances, min_seconds=preset.crop_seconds,
        seed=plan.seed, device=device, write_bundled=bundled,
    )  # fmt: skip
    cache, train_ids, eval_ids = prepared.cache, prepared.train_ids, prepared.eval_ids
    seconds["features"] = time.perf_counter() - began - seconds["codec"]
    if not plan.codec_reference:
        reference_ids = eval_ids[: preset.recon_utterances]  # the utterances each trial's recon/* scores
        decode = codec_decoder(codec.to(device).eval(), device)
        plan.codec_reference = reconstruction_metrics(  # the codec's own: encode -> decode, no bottleneck
            decode, [cache.latents(i) for i in reference_ids], [cache.audio(i) for i in reference_ids]
        )
        listened = eval_ids[: preset.audio_utterances]  # those each trial writes rollout WAVs for
        write_reference_clips(  # the listening page's reference row
            decode, [(cache.utterances[i].utterance_id, cache.latents(i)) for i in listened], plan.summary_dir
        )
        log.info(
            "the codec's own reconstruction (the sweep's reference): %s",
            ", ".join(f"{name} {value:.3f}" for name, value in plan.codec_reference.items()),
        )
    seconds["reference"] = time.perf_counter() - began - sum(seconds.values())
    log.info("prepared the data in %s s", stages_text(seconds))
    tags = {
        "data.fingerprint": cache.directory.name,  # the feature-cache key: files, sizes, mtimes, codec
        "data.utterances": f"{len(train_ids)} train / {len(eval_ids)} eval",
    }
    context = TrialContext(
        preset=preset,
        cache_dir=str(cache.directory.resolve()),
        train_ids=tuple(train_ids),
        eval_ids=tuple(eval_ids),
        codec=plan.codec,
        device="cuda" if plan.gpus_per_trial > 0 else "cpu",
        threads=max(1, int(plan.cpus_per_trial)),
        seed=plan.seed,
        varied=plan.varied,
        probes=plan.scheduler == "asha",
        fixed=dict(plan.fixed),
        step=StepSettings(compile=plan.compiled, fused_optimizer=plan.fused_optimizer),
        keep_optimizer=plan.keep_checkpoints > 1,
        max_recon_mel=plan.recon_bound,
        without=tuple(plan.without),
    )
    return SealedContext.seal(context), tags, plan.codec_reference
