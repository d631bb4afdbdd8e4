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
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lmmixup.cli import precheck_overrides, report_errors
from lmmixup.checkpoint import (TrainState, find_resume_checkpoint, load_checkpoint,
                                new_checkpoint_folder, rank_rng_state, save_checkpoint)
from lmmixup.config import TrainConfig, register_configs, to_train_config
from lmmixup.data.jsonl import atomic_write_text
from lmmixup.data.prompts import PromptSampler, check_prompt_lengths, load_rows
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
from lmmixup.sampling.rounds import collect, gather_batch
from lmmixup.step import (frac_zero_std_groups, frozen_logprobs, grpo_update, reward_metrics,
                          update_config, update_metrics)

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


def run(dcfg: DictConfig, run_dir: Path) -> None:
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
    reward_fns = build_rewards(cfg.reward)

    if cfg.stage == "eval":
        if not dist.is_main:  # scoring is one process's job; the other ranks have none
            return
        # an eval run has one line, at step 0; a re-run (resume) replaces it (-1 keeps none)
        log = MetricsLog(cfg.logger, run_dir, config_dict, resume_step=-1 if cfg.resume else None)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        print(describe(cfg.precision, prec, device), flush=True)
        evaluate(policy, cfg, reward_fns=reward_fns, run_dir=run_dir, step=0, log=log)
        log.finish()
        return
    if cfg.stage == "sft":
        run_sft(cfg, rows, policy, reward_fns, run_dir, config_dict, config_yaml, dist, prec,
                resume_config)
        return

    sampler = PromptSampler(rows, cfg.data.shuffle_seed)
    ref_model = frozen_copy(model) if cfg.algo.beta > 0 else None
    G, B = cfg.algo.group_size, cfg.prompts_per_step
    upd = update_config(cfg, dist.world_size, compute_dtype=prec.train, precision_gap=prec.gap)
    dist.wrap(model)  # DDP or FSDP2 (dist.strategy; one process: nothing)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps * upd.update_slots)

    state = TrainState(step=0, model=model, optimizer=optimizer, scheduler=scheduler,
                       sampler=sampler)
    checkpoint = find_resume_checkpoint(cfg.resume, run_dir)
    if checkpoint is not None:
        load_checkpoint(checkpoint, state, config=resume_config, rank=dist.rank,
                        load_sharded=sharded_loader(dist, optimizer))
        print(f"resumed from {checkpoint} at step {state.step}", file=sys.stderr)
    start_step = state.step
    log = open_log(cfg, run_dir, config_dict, config_yaml, start_step, dist,
                   describe(cfg.precision, prec, device))
    stop = StopRequest()
    inspector = StepInspector(cfg, run_dir, log, resume_step=start_step) if dist.is_main else None

    def save(step: int) -> None:
        state.step = step
        save_everywhere(dist, run_dir, state, resume_config=resume_config,
                        config_yaml=config_yaml, cfg=cfg)

    score = functools.partial(compute_rewards, reward_fns, cfg.reward)  # (texts, G) -> R

    from tqdm import tqdm

    bar = tqdm(range(start_step + 1, cfg.steps + 1), initial=start_step, total=cfg.steps,
               desc="grpo", disable=not (cfg.logger.progress_bar and dist.is_main),
               dynamic_ncols=True)
    nonfinite_skips = 0
    step = start_step
    for step in bar:
        seed_step(cfg.seed, step)
        t_step = time.perf_counter()

        # 1-2. Rollout and rewards (DAPO's dynamic sampling may take extra rounds).
        t_rollout = time.perf_counter()
        # the policy on its current weights: FSDP2's replica all-gathered once; else the model
        policy = policy.using(dist.full_model(model))
        prompts = StepPrompts(sampler.next_batch, cfg.seed, step, block=cfg.mini_batch_prompts or B,
                              world_size=dist.world_size, rank=dist.rank)  # this rank's share
        batch = collect(prompts, policy, score, batch_prompts=B, algo=cfg.algo,
                        max_prompt_tokens=cfg.data.max_prompt_tokens, source=cfg.data.train_file,
                        pad_id=tokenizer.pad_token_id, dist=dist)
        rollout_s = time.perf_counter() - t_rollout
        rollout = batch.rollout
        everyone = gather_batch(batch, dist, tokenizer.pad_token_id)  # every rank's rows
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
        if not dist.is_main:
            if evaluate_and_checkpoint(cfg, step, stop_now, save, dist, model, run_eval=None):
                return
            continue
        batch, rollout, advantages = everyone, everyone.rollout, all_advantages
        tokens = float(rollout.completion_lengths.sum())
        metrics = {
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
            "grpo/frac_zero_std_groups": frac_zero_std_groups(batch.total, G),
            "grpo/frac_zero_std_groups_sampled": frac_zero_std_groups(batch.sampled_total, G),
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
        # Attribution (attr/*), reward-hacking signals (hacking/*), rollout dump: lmmixup/inspect.
        metrics.update(inspector.after_step(step, batch, advantages, all_old, all_ref, metrics))
        log.log(step, metrics)
        bar.set_postfix(reward=f"{metrics['reward/total_mean']:.3f}", kl=f"{stats.kl:.4f}")

        def run_eval(weights) -> None:
            evaluate(policy.using(weights), cfg, reward_fns=reward_fns, run_dir=run_dir, step=step,
                     log=log)

        if evaluate_and_checkpoint(cfg, step, stop_now, save, dist, model, run_eval):
            print(f"stopped by {stop.signal_name or 'a signal to another rank'} after step {step}; "
                  f"checkpoint saved, continue with resume=auto hydra.run.dir={run_dir}",
                  file=sys.stderr)
            log.finish()
            return
    save(cfg.steps)
    policy = policy.using(dist.full_model(model))  # every rank takes part in FSDP2's all-gather
    if dist.is_main:
        save_final_model(policy.model, tokenizer, run_dir)
        if cfg.data.eval_file and not (cfg.eval_every and cfg.steps % cfg.eval_every == 0):
            evaluate(policy, cfg, reward_fns=reward_fns, run_dir=run_dir, step=cfg.steps,
                     log=log)
    dist.barrier()
    log.finish()


def evaluate_and_checkpoint(cfg: TrainConfig, step: int, stop_now: bool, save, dist: DistContext,
                            model, run_eval) -> bool:
    """The end of a step on every rank: rank 0 evaluates (the others wait), every rank takes
    part in a checkpoint. Returns True when the run stops here (a signal reached some rank)."""
    if cfg.eval_every and step % cfg.eval_every == 0 and cfg.data.eval_file:
        weights = dist.full_model(model)  # every rank takes part in FSDP2's all-gather
        if dist.is_main:
            run_eval(weights)
        dist.barrier()
    if stop_now:
        save(step)
        return True
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
        save(step)
    return False


def run_sft(cfg: TrainConfig, rows, policy: Policy, reward_fns, run_dir: Path, config_dict,
            config_yaml: str, dist: DistContext, prec: RunPrecision, resume_config) -> None:
    """The SFT cold start: cross-entropy on target tokens only (prompt masked), lr warm-up,
    token-exact gradient accumulation, forwards at prec.train. Checkpoints and resume work as
    in GRPO. Under torchrun each rank takes a contiguous 1/N of every step's examples; the
    token normaliser is global. `policy` holds the model trained and evaluates it at the end."""
    from tqdm import tqdm

    from lmmixup.sft import encode_rows, sft_backward

    model, tokenizer, device = policy.model, policy.tokenizer, policy.device
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
    checkpoint = find_resume_checkpoint(cfg.resume, run_dir)
    if checkpoint is not None:
        load_checkpoint(checkpoint, state, config=resume_config, rank=dist.rank,
                        load_sharded=sharded_loader(dist, optimizer))
    start_step = state.step
    log = open_log(cfg, run_dir, config_dict, config_yaml, start_step, dist,
                   describe(cfg.precision, prec, device))
    stop = StopRequest()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(range(start_step + 1, cfg.steps + 1), initial=start_step, total=cfg.steps,
               desc="sft", disable=not (cfg.logger.progress_bar and dist.is_main),
               dynamic_ncols=True)
    step = start_step
    for step in bar:
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
        state.step = step
        if stop_now or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            save_everywhere(dist, run_dir, state, resume_config=resume_config,
                            config_yaml=config_yaml, cfg=cfg)
        if stop_now:
            if dist.is_main:
                print(f"stopped by {stop.signal_name or 'a signal to another rank'} after step "
                      f"{step}; checkpoint saved", file=sys.stderr)
            log.finish()
            return
    state.step = cfg.steps
    save_everywhere(dist, run_dir, state, resume_config=resume_config, config_yaml=config_yaml,
                    cfg=cfg)
    policy = policy.using(dist.full_model(model))  # every rank takes part in FSDP2's all-gather
    if dist.is_main:
        save_final_model(policy.model, tokenizer, run_dir)
        if cfg.data.eval_file:
            evaluate(policy, cfg, reward_fns=reward_fns, run_dir=run_dir, step=cfg.steps,
                     log=log)
    dist.barrier()
    log.finish()


def open_log(cfg: TrainConfig, run_dir: Path, config_dict, config_yaml: str, start_step: int,
             dist: DistContext, precision_line: str):
    """Rank 0's MetricsLog (and config.yaml, written only now that every check has passed), and
    the precision line on stdout (stderr is for errors: one line each); the others log nothing."""
    if not dist.is_main:
        return NullMetricsLog()
    log = MetricsLog(cfg.logger, run_dir, config_dict, resume_step=start_step if cfg.resume else None)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    print(precision_line, flush=True)
    return log


def save_everywhere(dist: DistContext, run_dir: Path, state: TrainState, *, resume_config,
                    config_yaml: str, cfg: TrainConfig) -> None:
    """A checkpoint of `state`: rank 0 writes it, with every rank's RNG state (one gather); the others
    wait until it is on disk (DDP: replicated weights and optimizer, rank 0's are everyone's).
    FSDP2: every rank first writes its shards of the model and optimizer into the checkpoint's
    temporary folder (torch.distributed.checkpoint), which rank 0 completes and renames."""
    rank_rng = dist.gather_objects(rank_rng_state()) if dist.distributed else None
    prepared = None
    if dist.sharded is not None:
        prepared = Path(dist.gather_objects(str(new_checkpoint_folder(run_dir, state.step))
                                            if dist.is_main else None)[0])
        dist.sharded.save_sharded(prepared / "dcp", state.optimizer)
        if cfg.checkpoint.save_hf:  # hf/ is a save_pretrained folder: full weights
            state = dataclasses.replace(state, model=dist.full_model(state.model))
    if dist.is_main:
        save_checkpoint(run_dir, state, config=resume_config, config_yaml=config_yaml,
                        cfg=cfg.checkpoint, rank_rng=rank_rng, prepared=prepared)
    dist.barrier()


def sharded_loader(dist: DistContext, optimizer):
    """For load_checkpoint: FSDP2's DCP loader of model + optimizer shards, else None."""
    if dist.sharded is None:
        return None
    return lambda folder: dist.sharded.load_sharded(folder, optimizer)


def save_final_model(model, tokenizer, run_dir: Path) -> None:
    """<run dir>/model: a save_pretrained folder, usable as model.name_or_path (atomic)."""
    import shutil
    import tempfile

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
