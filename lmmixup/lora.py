"""LoRA (Hu et al., 2021, arXiv:2106.09685) through `peft`, as an option of the model config.

    model.lora.enabled=true model.lora.r=64 model.lora.alpha=16 model.lora.dropout=0.1

Choices, and why:
  * The adapter wraps the model inside `load_model`, so every train.py stage (SFT, GRPO, eval)
    trains or scores it with the same code as a full model: no second trainer. Only the LoRA
    matrices require gradients, so `build_optimizer` (which takes `requires_grad` parameters)
    optimises just them.
  * The default targets are every attention and MLP projection of a Llama-style block, as
    QLoRA does (Dettmers et al., 2023): the paper's downstream runs use r = 64, alpha = 16,
    dropout 0.1 (LM-Mixup, "Downstream use").
  * At the end of a run `save_lora_and_merged` writes the adapter (`adapter/`, loadable with
    `peft.PeftModel.from_pretrained`) and a merged copy (`model/`, W + (alpha/r) B A folded in)
    that any tool loads as a plain causal LM, i.e. as `model.name_or_path`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from lmmixup.errors import require

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    enabled: bool = False
    """train a LoRA adapter instead of every weight (the base weights stay frozen)"""
    r: int = 64
    """rank of the update B A (the paper: 64)"""
    alpha: int = 16
    """scale: the update is (alpha / r) B A (the paper: 16)"""
    dropout: float = 0.1
    """dropout on the adapter's input (the paper: 0.1)"""
    target_modules: List[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    """names of the linear layers that get an adapter (default: every Llama projection)"""

    def validate(self) -> None:
        require(self.r > 0, "model.lora.r", f"must be > 0, got {self.r}")
        require(self.alpha > 0, "model.lora.alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, "model.lora.dropout", "must be in [0, 1)")
        require(bool(self.target_modules), "model.lora.target_modules", "must name a module")


def apply_lora(model, cfg: LoraConfig):
    """The model wrapped in a peft LoRA adapter; only the adapter requires gradients."""
    # lazy: peft imports transformers (~4 s); only a LoRA run needs it
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none",
                              task_type="CAUSAL_LM")
    # With model.gradient_checkpointing, peft itself makes the frozen embeddings' output
    # require grad, so the checkpointed blocks still pass gradients to the adapters
    # (tests/test_downstream.py checks it).
    return get_peft_model(model, peft_cfg)


def is_lora(model) -> bool:
    from peft import PeftModel  # lazy: as apply_lora's

    return isinstance(model, PeftModel)


def save_lora_and_merged(model, tokenizer, adapter_dir: Path, merged_dir: Path) -> None:
    """Write the adapter to adapter_dir and a merged plain model to merged_dir (both
    save_pretrained folders; the caller makes them atomic). The live model is left as it was:
    the merge runs on a copy."""
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
