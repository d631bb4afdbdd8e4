"""lmmixup: instruction distillation (LM-Mixup) with GRPO, from scratch in PyTorch.

Tensor legend used in every shape comment:
    B prompts per step, G completions per prompt (group), N = B*G sequences,
    P prompt tokens, T completion tokens, V vocabulary size.
"""

__version__ = "0.1.0"
