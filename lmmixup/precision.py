"""Mixed precision: which ops run in bf16, which stay fp32, and how `auto` chooses.

One setting for every job that runs a model (`precision.train`, `precision.rollout`):
  train    the forwards and backwards of training and scoring: the GRPO update, the old-policy
           and reference log-probs, SFT (train.py stage=sft, lmmixup.downstream's fine-tunes);
  rollout  the static engine's sampler (GRPO rollouts and the greedy decoding of train.py's
           evaluation), which runs a bf16 *copy* of the policy's weights, re-cast every call.
Each is `fp32`, `bf16` or `auto`. `auto` is bf16 on CUDA (its tensor cores) and, on a CPU, what
lmmixup.kernel_choice measured on this machine: bf16 where its GEMMs run >= 1.3x faster than
fp32 at SmolLM2-135M's shapes, fp32 on a CPU without bf16 units. `resolve_precision` turns a
setting into a dtype; `autocast` is the context that applies a training dtype. distill.py and
any other script call these two, so every job means the same by the same setting.

Under precision.train=bf16 (torch.autocast on the forward, never on the optimizer):
  bf16  every nn.Linear of the decoder (q, k, v, o, gate, up, down) in the forward and, through
        autograd's record of the casts, the two GEMMs of each in the backward; attention
        (scaled_dot_product_attention, bf16 on the autocast list); the lm_head GEMMs of the
        chunked log-probs (lmmixup/logprobs.py casts hidden states and the head weight to bf16
        explicitly for the forward, the backward's recompute and both backward products) and of
        SFT's chunked cross-entropy. These are ~all of the FLOPs, and where bf16 units pay.
  fp32  the master weights and AdamW's moments (parameters stay fp32; autocast multiplies bf16
        copies made per forward), hence every gradient as accumulated, all-reduced, clipped and
        applied (a bf16 weight-gradient product is cast to fp32 before it is summed into .grad);
        the residual stream and RMSNorm (HF's norm computes in fp32; bf16 GEMM outputs are added
        to the fp32 residual, which promotes); RoPE; the embeddings; the logits per chunk before
        logsumexp / log-softmax and entropy, so log-probs are fp32; the loss, the ratio, the KL
        estimators, advantages, the rollout correction and every sum and mean of lmmixup/grpo.py
        and the SFT loss. Reductions and exp/log are where 8 mantissa bits would lose the
        signal: a GRPO ratio exp(log p - log p_old) near 1 needs more than 2^-8 resolution.
Why a bf16 sampler needs a correction: its log-probs differ from the trainer's by bf16 rounding
(SmolLM2-135M: mean |d log p| 0.03 per token, ESS 0.74-0.77, docs/LOG.md 2026-12-02/03), so
`algo.rollout_is=auto` turns on truncated importance sampling (token_tis) whenever the sampler's
precision is not the trainer's (`precision_gap`); the `mismatch/*` metrics measure the gap.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Dict

import torch

from lmmixup import kernel_choice
from lmmixup.errors import require

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAMES: Dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass
class PrecisionConfig:
    train: str = "auto"
    """auto | fp32 | bf16: GEMMs of every training and scoring forward/backward (GRPO update,
    old-policy and reference log-probs, SFT) under bf16 autocast; weights, optimizer state,
    log-softmax, loss, KL and reductions stay fp32. auto: bf16 on CUDA, on a CPU what
    lmmixup.kernel_choice measured (bf16 where >= 1.3x faster)"""
    rollout: str = "auto"
    """auto | fp32 | bf16: the static engine's sampler (rollouts, eval decoding) runs a copy of
    the weights in this precision; auto as for train, timed at decode shapes. bf16 needs
    rollout.engine=static; a sampler that differs from the trainer turns algo.rollout_is=auto
    into token_tis"""

    def validate(self) -> None:
        for key in ("train", "rollout"):
            require(getattr(self, key) in PRECISIONS, f"precision.{key}",
                    f"unknown {getattr(self, key)!r}; known: {', '.join(PRECISIONS)}")


def resolve_precision(choice: str, device: torch.device, use: str = "train") -> torch.dtype:
    """A precision setting (auto | fp32 | bf16) as the dtype that runs, on `device`.

    use: train (forward/backward GEMMs) or rollout (decode GEMMs): on a CPU, auto reads the
    measured choice for that use from lmmixup.kernel_choice (probed once per CPU model and torch
    version, then cached). On CUDA, auto is bf16 where the GPU supports it."""
    require(choice in PRECISIONS, f"precision.{use}",
            f"unknown {choice!r}; known: {', '.join(PRECISIONS)}")
    if choice != "auto":
        return DTYPES[choice]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu":
        return torch.float32  # no measurement for other devices: the safe choice
    choice_cpu = kernel_choice.current_choice()  # probes once per machine, then cached
    return DTYPES[choice_cpu.train_precision if use == "train" else choice_cpu.rollout_precision]


def autocast(dtype: torch.dtype, device_type: str) -> ContextManager:
    """The context in which a training forward runs at `dtype`: torch.autocast for bf16, nothing
    for fp32 (so the fp32 path is exactly the code that ran before mixed precision existed).
    Run the backward and the optimizer step outside it."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def precision_gap(sampler_dtype: torch.dtype, trainer_dtype: torch.dtype,
                  param_dtype: torch.dtype = torch.float32) -> bool:
    """Whether the sampler's log-probs differ from the trainer's by more than fp32 kernel
    rounding: true unless both run in the parameters' own fp32 (a bf16 sampler rounds its
    weights and activations; a bf16 trainer its GEMMs, differently from a bf16 sampler)."""
    return not (sampler_dtype == trainer_dtype == param_dtype == torch.float32)


def resolve_rollout_is(mode: str, gap: bool, records_logprobs: bool) -> str:
    """algo.rollout_is with auto resolved: token_tis when the sampler and trainer differ in
    precision (`precision_gap`) and the engine records the sampler's log-probs, else none."""
    if mode != "auto":
        return mode
    return "token_tis" if gap and records_logprobs else "none"


@dataclass(frozen=True)
class RunPrecision:
    """The precisions one run uses, resolved once at start-up (train.py `run_precision`)."""

    train: torch.dtype  # forward GEMMs of training and scoring (bf16: under autocast)
    rollout: torch.dtype  # the static engine's copy of the weights
    gap: bool  # the sampler's log-probs differ from the trainer's beyond fp32 rounding
    rollout_is: str  # algo.rollout_is with auto resolved

    def names(self) -> Dict[str, str]:
        """{"train": "bf16", "rollout": "fp32"}: what a checkpoint fingerprints, so a resume on a
        CPU where auto resolves otherwise is refused with the key that differs."""
        return {"train": NAMES[self.train], "rollout": NAMES[self.rollout]}


def run_precision(cfg: PrecisionConfig, device: torch.device, engine: str, records_logprobs: bool,
                  rollout_is: str, param_dtype: torch.dtype) -> RunPrecision:
    """cfg's settings as dtypes on `device`. Only the static engine samples in a precision of its
    own; any other engine samples in the model's (fp32 here). records_logprobs: the engine keeps
    the sampler's log-probs, which the correction needs."""
    train = resolve_precision(cfg.train, device, "train")
    rollout = resolve_precision(cfg.rollout, device, "rollout") if engine == "static" else torch.float32
    gap = precision_gap(rollout, train, param_dtype)
    return RunPrecision(train=train, rollout=rollout, gap=gap,
                        rollout_is=resolve_rollout_is(rollout_is, gap, records_logprobs))


def describe(cfg: PrecisionConfig, run: RunPrecision, device: torch.device) -> str:
    """One line for the run's log: each setting, what it resolved to, and why when auto."""
    line = (f"precision: train {NAMES[run.train]} (precision.train={cfg.train}), rollout "
            f"{NAMES[run.rollout]} (precision.rollout={cfg.rollout}), algo.rollout_is "
            f"{run.rollout_is}")
    if "auto" in (cfg.train, cfg.rollout) and torch.device(device).type == "cpu":
        choice_cpu = kernel_choice.current_choice()
        line += f"; {choice_cpu.cpu_model}: {kernel_choice.describe_precision(choice_cpu)}"
    return line
