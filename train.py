"""Train a policy for instruction distillation: GRPO (default) or the SFT cold start.

    python train.py                                   GRPO on the embedded SmolLM2-135M-Instruct
    python train.py experiment=smoke                  tiny random model, seconds
    python train.py algo=dr_grpo reward=paper         variants are config groups
    python train.py -m reward.weights.format=0.1,0.5  a sweep, one folder per run
    python train.py stage=sft data=mixture            supervised cold start on MIXTURE targets
    python train.py stage=eval model.name_or_path=DIR score data.eval_file with greedy decoding
    python train.py resume=auto hydra.run.dir=DIR     continue a run from its newest checkpoint
    torchrun --nproc_per_node=N train.py ...          data-parallel (README: "Scaling out")

One GRPO step, top to bottom (the math lives in lmmixup/grpo.py):
  1. take B prompts; sample G completions each (N = B*G) with the rollout engine;
  2. score every completion with the weighted rewards, R = sum_i w_i r_i;
  3. advantages A = (R - mean_group) / scale, with scale = group std | batch std | 1;
  4. log-probs of the old policy (skipped at mu=1 with one mini-batch: the ratio is then 1) and
     of the frozen reference (skipped when beta = 0);
  5. mu passes of clipped-surrogate + beta*KL updates, split into mini-batches (one optimizer
     update each) and micro-batches (gradient accumulation, exact in every aggregation mode).
Precision (lmmixup/precision.py): `precision.train` puts the forwards of steps 4-5 (and SFT's)
under bf16 autocast, weights, optimizer, log-probs, loss and KL staying fp32; `precision.rollout`
is the sampler's copy of the weights (and eval's decoding). `auto`, the default, is what this
CPU measured faster (lmmixup/kernel_choice.py), bf16 on CUDA; a sampler whose precision is not
the trainer's turns algo.rollout_is=auto into token_tis.
Everything each step computes is logged to <run dir>/metrics.jsonl and to W&B (offline).
Step s re-seeds every RNG with (seed, s), so a resumed run repeats the uninterrupted one.
Under torchrun each rank samples and trains on its slice of the global batch; normalisers,
gradients and metrics are reduced over ranks exactly (lmmixup/dist/), only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.checkpoint import (TrainState, find_resume_checkpoint, load_checkpoint,
                                new_checkpoint_folder, rank_rng_state, save_checkpoint)
from lmmixup.config import TrainConfig, register_configs, to_train_config
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.data.prompts import PromptRow, PromptSampler, check_prompt_lengths, load_rows
from lmmixup.device import resolve_device
from lmmixup.dist.context import DistContext, close_distributed, init_distributed
from lmmixup.dist.gather import gather_optional_rows
from lmmixup.dist.shard import StepPrompts, shard_positions
from lmmixup.errors import LmmixupError, require
from lmmixup.evaluate import evaluate
from lmmixup.grpo import group_advantages
from lmmixup.inspect.hook import StepInspector
from lmmixup.logging import MetricsLog, NullMetricsLog, redact
from lmmixup.lora import is_lora, save_lora_and_merged
from lmmixup.models import frozen_copy, load_model, load_tokenizer
from lmmixup.optim import advance_schedule, build_optimizer, build_scheduler
from lmmixup.precision import RunPrecision, describe, run_precision
from lmmixup.rewards import build_rewards, compute_rewards, reward_extra_metrics
from lmmixup.rollout import RECORDS_LOGPROBS
from lmmixup.sampling.policy import Policy
from lmmixup.sampling.rounds import ScoredBatch, collect, gather_batch
from lmmixup.sft import encode_rows, sft_backward
from lmmixup.step import (UpdateStats, frac_zero_std_groups, frozen_logprobs, grpo_update,
                          reward_metrics, update_config, update_metrics)

register_configs()


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.signal_name = ""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


def seed_step(seed: int, step: int) -> None:
    s = seed * 1_000_003 + step
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


@dataclass(frozen=True)
class Setup:
    """What every stage starts from, built once by `run`. No behaviour of its own: the stages
    below are plain functions that read it."""

    cfg: TrainConfig
    run_dir: Path
    dist: DistContext  # one process: a no-op context
    prec: RunPrecision  # the resolved precisions (auto -> fp32 | bf16)
    policy: Policy  # model (the one trained), tokenizer, stop ids, device, cfg.rollout
    reward_fns: Dict[str, Any]  # the run's rewards by name (lmmixup/rewards)
    config_dict: Dict[str, Any]  # the resolved config, secrets redacted (metrics log, W&B)
    config_yaml: str  # the same, as config.yaml and each checkpoint's copy
    resume_config: Dict[str, Any]  # what a checkpoint fingerprints: what actually ran


def run(dcfg: DictConfig, run_dir: Path) -> None:
    """The start-up every stage shares, then the stage: eval, sft or grpo."""
    # Every check runs before anything is written, so a failed start (bad data, a checkpoint
    # that does not fit) leaves an earlier run's config.yaml, metrics and checkpoints as they were.
    cfg: TrainConfig = to_train_config(dcfg)
    config_dict = redact(OmegaConf.to_container(dcfg, resolve=True))  # no secrets in any file
    config_yaml = OmegaConf.to_yaml(config_dict)
    # Read the data before the (slow) model load: a bad line fails in a second.
    rows = load_rows(cfg.data.train_file) if cfg.stage != "eval" else []
    eval_rows = load_rows(cfg.data.eval_file)[: cfg.eval_max_rows] if cfg.data.eval_file else []
    device = resolve_device(cfg.device)
    dist = init_distributed(cfg.dist, device, cfg.rollout.engine)  # one process: a no-op context
    if dist.distributed:  # rank 0's folder for all (hydra's ${now:...} may differ by a second)
        run_dir = Path(dist.gather_objects(str(run_dir))[0])
        device = torch.device("cuda", dist.local_rank) if device.type == "cuda" else device
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_step(cfg.seed, 0)

    tokenizer = load_tokenizer(cfg.model)
    if cfg.stage == "grpo":  # SFT skips (and counts) rows over sft.max_seq_len instead
        check_prompt_lengths(tokenizer, rows, cfg.data.max_prompt_tokens, cfg.data.train_file)
    check_prompt_lengths(tokenizer, eval_rows, cfg.data.max_prompt_tokens, cfg.data.eval_file)
    model = load_model(cfg.model, tokenizer).to(device)
    model.train()
    # auto -> fp32 | bf16 (measured on this CPU, cached); under torchrun rank 0's choice is all's
    prec = dist.gather_objects(run_precision(
        cfg.precision, device, cfg.rollout.engine, cfg.rollout.engine in RECORDS_LOGPROBS,
        cfg.algo.rollout_is, next(model.parameters()).dtype))[0]
    # Checkpoints fingerprint what ran, not "auto": the device (CPU and CUDA draw other numbers)
    # and the precisions, so a resume where auto resolves otherwise names the key that differs.
    resume_config = {**config_dict, "device": device.type, "precision": prec.names(),
                     **dist.fingerprint()}
    # what samples (GRPO's rollouts, evaluation's greedy answers): model, tokenizer, stop ids,
    # device, the sampler's precision and cfg.rollout, in one object (lmmixup/sampling/)
    policy = Policy.build(model, tokenizer, device, cfg.rollout, dtype=prec.rollout)
    job = Setup(cfg=cfg, run_dir=run_dir, dist=dist, prec=prec, policy=policy,
                reward_fns=build_rewards(cfg.reward), config_dict=config_dict,
                config_yaml=config_yaml, resume_config=resume_config)
    if cfg.stage == "eval":
        run_eval(job)
    elif cfg.stage == "sft":
        run_sft(job, rows)
    else:
        run_grpo(job, rows)


def run_eval(job: Setup) -> None:
    """stage=eval: score data.eval_file with the loaded model's greedy answers, at step 0."""
    cfg = job.cfg
    if not job.dist.is_main:  # scoring is one process's job; the other ranks have none
        return
    # an eval run has one line, at step 0; a re-run (resume) replaces it (-1 keeps none)
    log = MetricsLog(cfg.logger, job.run_dir, job.config_dict,
                     resume_step=-1 if cfg.resume else None)
    atomic_write_text(job.run_dir / "config.yaml", job.config_yaml)
    print(describe(cfg.precision, job.prec, job.policy.device), flush=True)
    evaluate(job.policy, cfg, reward_fns=job.reward_fns, run_dir=job.run_dir, step=0, log=log)
    log.finish()


def run_grpo(job: Setup, rows: List[PromptRow]) -> None:
    """GRPO, one step as the module docstring lists it, steps start+1 .. cfg.steps."""
    cfg, dist, prec = job.cfg, job.dist, job.prec
    policy, model = job.policy, job.policy.model
    pad_id = policy.tokenizer.pad_token_id
    G, B = cfg.algo.group_size, cfg.prompts_per_step
    sampler = PromptSampler(rows, cfg.data.shuffle_seed)
    ref_model = frozen_copy(model) if cfg.algo.beta > 0 else None
    upd = update_config(cfg, dist.world_size, compute_dtype=prec.train, precision_gap=prec.gap)
    dist.wrap(model)  # DDP or FSDP2 (dist.strategy; one process: nothing)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps * upd.update_slots)
    state = TrainState(step=0, model=model, optimizer=optimizer, scheduler=scheduler,
                       sampler=sampler)
    resume(job, state)
    log = open_log(job, state.step)
    stop = StopRequest()
    inspector = (StepInspector(cfg, job.run_dir, log, resume_step=state.step) if dist.is_main
                 else None)
    score = functools.partial(compute_rewards, job.reward_fns, cfg.reward)  # (texts, G) -> R
    nonfinite_skips = 0
    bar = progress_bar(job, state.step, "grpo")
    for step in bar:
        state.step = step
        seed_step(cfg.seed, step)
        t_step = time.perf_counter()

        # 1-2. Sample G completions of B prompts, score them (DAPO's refill may take rounds).
        t_rollout = time.perf_counter()
        # the policy on its current weights: FSDP2's replica all-gathered once; else the model
        policy = policy.using(dist.full_model(model))
        prompts = StepPrompts(sampler.next_batch, cfg.seed, step, block=cfg.mini_batch_prompts or B,
                              world_size=dist.world_size, rank=dist.rank)  # this rank's share
        batch = collect(prompts, policy, score, batch_prompts=B, algo=cfg.algo,
                        max_prompt_tokens=cfg.data.max_prompt_tokens, source=cfg.data.train_file,
                        pad_id=pad_id, dist=dist)
        rollout_s = time.perf_counter() - t_rollout
        rollout = batch.rollout
        everyone = gather_batch(batch, dist, pad_id)  # every rank's rows
        if not torch.isfinite(everyone.total).all():
            bad = [repr(name) for name, v in everyone.components.items()
                   if not torch.isfinite(v).all()]
            nonfinite_skips = handle_nonfinite(cfg, f"reward {', '.join(bad) or 'total'}", step,
                                               nonfinite_skips)
            advance_schedule(scheduler, upd.update_slots)  # the lr of step s depends on s only
            continue

        # 3. Group-relative advantages.
        advantages = group_advantages(batch.total, G, cfg.algo.adv_scale, cfg.algo.adv_eps,
                                      population=everyone.total)  # (N,), batch_std: global

        # 4. Old-policy and reference log-probs (no gradients).
        single_update = (cfg.algo.num_iterations == 1 and everyone.rollout.num_sequences
                         <= upd.mini_batch_size * dist.world_size)
        old_logp = None  # single update: the current log-probs, detached (grpo_update)
        # The sampler's log-probs serve as old_logp when it ran in the trainer's precision (both
        # fp32); otherwise (a bf16 sampler or trainer, the hf engine) the trainer computes them,
        # at its own precision (prec.train), as it computes the reference's.
        sampler_is_trainer = (rollout.rollout_logp is not None and cfg.rollout.engine == "static"
                              and not prec.gap)
        if not single_update:
            old_logp = rollout.rollout_logp if sampler_is_trainer else frozen_logprobs(
                policy.model, rollout, cfg.rollout.temperature, cfg.micro_batch_size,
                cfg.logprob_chunk_size, compute_dtype=prec.train)
        ref_logp = None
        if ref_model is not None:
            ref_logp = frozen_logprobs(ref_model, rollout, cfg.rollout.temperature,
                                       cfg.micro_batch_size, cfg.logprob_chunk_size,
                                       compute_dtype=prec.train)

        # 5. Policy updates.
        stats = grpo_update(model, optimizer, scheduler, rollout, advantages, old_logp=old_logp,
                            ref_logp=ref_logp, cfg=upd, dist=dist,
                            group_positions=batch.positions)
        if stats.skipped_nonfinite:
            nonfinite_skips = handle_nonfinite(cfg, stats.skipped_nonfinite[0], step, nonfinite_skips)
            if stats.updates == 0:
                continue
        step_s = time.perf_counter() - t_step

        # Metrics of the global batch (one process: this batch), written by rank 0 only.
        all_advantages = dist.cat_rows(advantages)  # (N_all,)
        all_old, all_ref = gather_optional_rows(old_logp, dist), gather_optional_rows(ref_logp, dist)
        stop_now = dist.any_true(bool(stop.signal_name))
        if dist.is_main:
            metrics = step_metrics(everyone, all_advantages, stats, prec, group_size=G,
                                   rollout_s=rollout_s, step_s=step_s)
            # Attribution (attr/*), reward-hacking signals (hacking/*), rollout dump: lmmixup/inspect
            metrics.update(inspector.after_step(step, everyone, all_advantages, all_old, all_ref,
                                                metrics))
            log.log(step, metrics)
            bar.set_postfix(reward=f"{metrics['reward/total_mean']:.3f}", kl=f"{stats.kl:.4f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and cfg.data.eval_file:
            evaluate_on_rank0(job, model, step, log)
        if checkpoint_or_stop(job, state, stop_now, stop.signal_name, log):
            return
    finish(job, state, log, evaluated=bool(cfg.eval_every and cfg.steps % cfg.eval_every == 0))


def step_metrics(batch: ScoredBatch, advantages: torch.Tensor, stats: UpdateStats,
                 prec: RunPrecision, *, group_size: int, rollout_s: float,
                 step_s: float) -> Dict[str, float]:
    """One GRPO step's line of metrics.jsonl, of the global batch (every rank's groups) and its
    advantages (N_all,)."""
    rollout = batch.rollout
    tokens = float(rollout.completion_lengths.sum())
    return {
        # reward/* and grpo/frac_zero_std_groups: the batch trained on (after DAPO's
        # filtering); reward_sampled/*, grpo/frac_zero_std_groups_sampled: all sampled.
        **reward_metrics(batch.total, batch.components),
        **reward_metrics(batch.sampled_total, batch.sampled_components, prefix="reward_sampled"),
        **reward_extra_metrics(batch.components),
        "grpo/loss": stats.loss,
        "grpo/kl": stats.kl,
        "grpo/entropy": stats.entropy,
        "grpo/clip_frac_low": stats.clip_frac_low,
        "grpo/clip_frac_high": stats.clip_frac_high,
        "grpo/ratio_mean": stats.ratio_mean,
        "grpo/ratio_max": stats.ratio_max,
        "grpo/adv_mean": float(advantages.mean()),
        "grpo/adv_std": float(advantages.std()),
        "grpo/frac_zero_std_groups": frac_zero_std_groups(batch.total, group_size),
        "grpo/frac_zero_std_groups_sampled": frac_zero_std_groups(batch.sampled_total, group_size),
        "grpo/grad_norm": stats.grad_norm,
        "grpo/updates": stats.updates,
        "grpo/lr": stats.lr,  # the mean rate this step's updates used
        **update_metrics(stats),  # mismatch/*: sampler vs trainer log-probs
        "rollout/completion_len_mean": float(rollout.completion_lengths.mean()),
        "rollout/frac_truncated": float(rollout.truncated.float().mean()),
        "rollout/rounds": batch.rounds,
        "rollout/dropped_groups": batch.dropped_groups,
        "rollout/tokens_per_s": tokens / max(rollout_s, 1e-9),
        "time/rollout_s": rollout_s,
        "time/step_s": step_s,
        "precision/train_bf16": float(prec.train == torch.bfloat16),
        "precision/rollout_bf16": float(prec.rollout == torch.bfloat16),
    }


def run_sft(job: Setup, rows: List[PromptRow]) -> None:
    """The SFT cold start: cross-entropy on target tokens only (prompt masked), lr warm-up,
    token-exact gradient accumulation, forwards at prec.train. Checkpoints and resume work as
    in GRPO. Under torchrun each rank takes a contiguous 1/N of every step's examples; the
    token normaliser is global."""
    cfg, dist, prec = job.cfg, job.dist, job.prec
    model, tokenizer, device = job.policy.model, job.policy.tokenizer, job.policy.device
    examples, skipped = encode_rows(tokenizer, rows, cfg.sft.max_seq_len, cfg.data.train_file)
    if not examples:
        raise LmmixupError(f"{cfg.data.train_file}: every row is longer than "
                           f"sft.max_seq_len={cfg.sft.max_seq_len}")
    if skipped:
        print(f"sft: skipped {skipped} rows longer than sft.max_seq_len", file=sys.stderr)
    sampler = PromptSampler(examples, cfg.data.shuffle_seed)
    require(cfg.sft.examples_per_step % dist.world_size == 0, "sft.examples_per_step",
            f"must be divisible by the {dist.world_size} ranks")
    dist.wrap(model)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    state = TrainState(step=0, model=model, optimizer=optimizer, scheduler=scheduler,
                       sampler=sampler)
    resume(job, state)
    log = open_log(job, state.step)
    stop = StopRequest()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = progress_bar(job, state.step, "sft")
    for step in bar:
        state.step = step
        seed_step(cfg.seed, step)
        t_step = time.perf_counter()
        batch = sampler.next_batch(cfg.sft.examples_per_step)  # the global batch
        mine = shard_positions(len(batch), len(batch), dist.world_size, dist.rank)
        optimizer.zero_grad(set_to_none=True)
        loss, tokens = sft_backward(model, [batch[i] for i in mine], cfg.micro_batch_size,
                                    tokenizer.pad_token_id, device, cfg.logprob_chunk_size, dist,
                                    compute_dtype=prec.train)
        clip_to = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
        grad_norm = dist.clip_grad_norm(params, clip_to)
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            raise LmmixupError(f"step {step}: non-finite SFT {'loss' if not np.isfinite(loss) else 'gradient'}; "
                               "stopping with the last checkpoint intact")
        optimizer.step()
        scheduler.step()
        step_s = time.perf_counter() - t_step
        log.log(step, {"sft/loss": loss, "sft/target_tokens": tokens, "sft/grad_norm": grad_norm,
                       "sft/lr": scheduler.get_last_lr()[0], "time/step_s": step_s,
                       "sft/tokens_per_s": tokens / max(step_s, 1e-9),
                       "precision/train_bf16": float(prec.train == torch.bfloat16)})
        bar.set_postfix(loss=f"{loss:.3f}")
        stop_now = dist.any_true(bool(stop.signal_name))
        if checkpoint_or_stop(job, state, stop_now, stop.signal_name, log):
            return
    finish(job, state, log, evaluated=False)


# ----------------------------------------------------------------------------- shared by stages


def resume(job: Setup, state: TrainState) -> None:
    """resume=auto|PATH: restore `state` (weights, optimizer, lr schedule, sampler position,
    every RNG) from the checkpoint, after checking it fits this run; else it stays at step 0."""
    checkpoint = find_resume_checkpoint(job.cfg.resume, job.run_dir)
    if checkpoint is None:
        return
    load_checkpoint(checkpoint, state, config=job.resume_config, rank=job.dist.rank,
                    load_sharded=sharded_loader(job.dist, state.optimizer))
    print(f"resumed from {checkpoint} at step {state.step}", file=sys.stderr)


def open_log(job: Setup, start_step: int):
    """Rank 0's MetricsLog (and config.yaml, written only now that every check has passed), and
    the precision line on stdout (stderr is for errors: one line each); the others log nothing."""
    cfg = job.cfg
    if not job.dist.is_main:
        return NullMetricsLog()
    log = MetricsLog(cfg.logger, job.run_dir, job.config_dict,
                     resume_step=start_step if cfg.resume else None)
    atomic_write_text(job.run_dir / "config.yaml", job.config_yaml)
    print(describe(cfg.precision, job.prec, job.policy.device), flush=True)
    return log


def progress_bar(job: Setup, start_step: int, desc: str):
    """Steps start_step + 1 .. cfg.steps, drawn as a bar by rank 0 (logger.progress_bar)."""
    cfg = job.cfg
    return tqdm(range(start_step + 1, cfg.steps + 1), initial=start_step, total=cfg.steps,
                desc=desc, disable=not (cfg.logger.progress_bar and job.dist.is_main),
                dynamic_ncols=True)


def evaluate_on_rank0(job: Setup, model, step: int, log) -> None:
    """Held-out evaluation after `step`: rank 0 scores, the others wait."""
    weights = job.dist.full_model(model)  # every rank takes part in FSDP2's all-gather
    if job.dist.is_main:
        evaluate(job.policy.using(weights), job.cfg, reward_fns=job.reward_fns,
                 run_dir=job.run_dir, step=step, log=log)
    job.dist.barrier()


def checkpoint_or_stop(job: Setup, state: TrainState, stop_now: bool, signal_name: str,
                       log) -> bool:
    """The end of a step on every rank: a checkpoint every checkpoint.every steps, and one when a
    signal reached some rank (stop_now). Returns True when the run stops here."""
    every = job.cfg.checkpoint.every
    if stop_now or (every and state.step % every == 0):
        save_everywhere(job, state)
    if stop_now:
        if job.dist.is_main:
            print(f"stopped by {signal_name or 'a signal to another rank'} after step "
                  f"{state.step}; checkpoint saved, continue with resume=auto "
                  f"hydra.run.dir={job.run_dir}", file=sys.stderr)
        log.finish()
    return stop_now


def finish(job: Setup, state: TrainState, log, *, evaluated: bool) -> None:
    """The end of training on every rank: the last checkpoint, <run dir>/model, and the
    held-out evaluation of the last step unless the loop just ran it (`evaluated`)."""
    save_everywhere(job, state)
    policy = job.policy.using(job.dist.full_model(state.model))  # all take part in FSDP2's gather
    if job.dist.is_main:
        save_final_model(policy.model, policy.tokenizer, job.run_dir)
        if job.cfg.data.eval_file and not evaluated:
            evaluate(policy, job.cfg, reward_fns=job.reward_fns, run_dir=job.run_dir,
                     step=state.step, log=log)
    job.dist.barrier()
    log.finish()


def save_everywhere(job: Setup, state: TrainState) -> None:
    """A checkpoint of `state`: rank 0 writes it, with every rank's RNG state (one gather); the
    others wait until it is on disk (DDP: replicated weights and optimizer, rank 0's are
    everyone's). FSDP2: every rank first writes its shards of the model and optimizer into the
    checkpoint's temporary folder (torch.distributed.checkpoint), which rank 0 completes and
    renames."""
    dist, run_dir = job.dist, job.run_dir
    rank_rng = dist.gather_objects(rank_rng_state()) if dist.distributed else None
    prepared = None
    if dist.sharded is not None:
        prepared = Path(dist.gather_objects(str(new_checkpoint_folder(run_dir, state.step))
                                            if dist.is_main else None)[0])
        dist.sharded.save_sharded(prepared / "dcp", state.optimizer)
        if job.cfg.checkpoint.save_hf:  # hf/ is a save_pretrained folder: full weights
            state = dataclasses.replace(state, model=dist.full_model(state.model))
    if dist.is_main:
        save_checkpoint(run_dir, state, config=job.resume_config, config_yaml=job.config_yaml,
                        cfg=job.cfg.checkpoint, rank_rng=rank_rng, prepared=prepared)
    dist.barrier()


def sharded_loader(dist: DistContext, optimizer):
    """For load_checkpoint: FSDP2's DCP loader of model + optimizer shards, else None."""
    if dist.sharded is None:
        return None
    return lambda folder: dist.sharded.load_sharded(folder, optimizer)


def save_final_model(model, tokenizer, run_dir: Path) -> None:
    """<run dir>/model: a save_pretrained folder, usable as model.name_or_path (atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=run_dir))
    if is_lora(model):  # <run dir>/adapter, and the merged copy as <run dir>/model
        tmp_adapter = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=run_dir))
        save_lora_and_merged(model, tokenizer, adapter_dir=tmp_adapter, merged_dir=tmp)
        if (run_dir / "adapter").exists():
            shutil.rmtree(run_dir / "adapter")
        os.rename(tmp_adapter, run_dir / "adapter")
    else:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    final = run_dir / "model"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def handle_nonfinite(cfg: TrainConfig, what: str, step: int, skips: int) -> int:
    """Count a skipped batch, or stop (the last checkpoint on disk is untouched)."""
    skips += 1
    if cfg.on_nonfinite == "stop":
        raise LmmixupError(f"step {step}: non-finite {what}; stopping with the last checkpoint "
                           "intact (on_nonfinite=stop)")
    if skips > cfg.max_nonfinite_skips:
        raise LmmixupError(f"step {step}: non-finite {what}; stopping with the last checkpoint "
                           f"intact (non-finite batches so far: {skips}, "
                           f"max_nonfinite_skips={cfg.max_nonfinite_skips})")
    print(f"step {step}: non-finite {what}; batch skipped before touching the weights",
          file=sys.stderr)
    return skips


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    try:
        report_errors(lambda: run(dcfg, Path(HydraConfig.get().runtime.output_dir)))
    finally:
        close_distributed()


if __name__ == "__main__":
    precheck_overrides(sys.argv[1:], Path(__file__).parent / "conf", "config", register_configs)
    main()
