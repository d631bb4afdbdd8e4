"""Benchmarks of lmmixup, outside the library: run from the checkout's root.

    python -m lmmixup.bench       rollouts, log-probs, roofline, GRPO step (grpo.py), distill
    python -m benchmarks.rewards  the paper rewards on one rollout batch
    python -m benchmarks.distill  distill.py's generation stage alone
    python -m benchmarks.ref_nll_base  one model on ref_nll_alpaca, with its power figure
"""
