"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from lmmixup.errors import require


@dataclass
class OptimConfig:
    lr: float = 1e-5
    """peak learning rate. train.py's default, for the 135M default policy: the paper's 1e-6 (for
    GRPO on its 1.5B policy; 2e-5 for SFT) barely moves a model this small (docs/LOG.md, 2026-12-01:
    2e-6 gave KL ~1e-4 in four steps). The pipeline passes its own (grpo_lr, sft_lr)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay"""
    beta1: float = 0.9
    """AdamW first-moment decay"""
    beta2: float = 0.999
    """AdamW second-moment decay"""
    adam_eps: float = 1e-8
    """AdamW epsilon"""
    warmup_frac: float = 0.0
    """fraction of the run's optimizer updates spent warming the lr up linearly from 0"""
    schedule: str = "constant"
    """after warm-up: constant | cosine (to 0)"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (<= 0 disables clipping but still measures it)"""

    def validate(self) -> None:
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(0 <= self.warmup_frac < 1, "optim.warmup_frac", "must be in [0, 1)")
        require(self.schedule in ("constant", "cosine"), "optim.schedule",
                f"must be constant or cosine, got {self.schedule!r}")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel does the whole update in one pass per tensor instead of several kernels
    # per tensor (measured in docs/LOG.md, 2026-11).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(update: int, total_updates: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr for optimizer update `update` (0-based)."""
    warmup = int(cfg.warmup_frac * total_updates)
    if update < warmup:
        return (update + 1) / (warmup + 1)
    if cfg.schedule == "cosine":
        progress = (update - warmup) / max(1, total_updates - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(optimizer, cfg: OptimConfig, total_updates: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_factor(update, total_updates, cfg))


def advance_schedule(scheduler, slots: int) -> None:
    """Move the schedule past `slots` update slots that no optimizer update used (a mini-batch
    DAPO filtered away, a step skipped as non-finite), so the lr of step s is fixed by s alone."""
    with warnings.catch_warnings():  # torch warns when this happens before any optimizer.step()
        warnings.filterwarnings("ignore", message="Detected call of")
        for _ in range(slots):
            scheduler.step()
