"""Does distillation pay off? Fine-tune a base model on the full pool, a random subset, the
high-quality originals and distill.py's mix, score each with lm-eval, and compare with CIs.
Entry point: `python -m lmmixup.downstream` (lmmixup/downstream/__main__.py)."""
