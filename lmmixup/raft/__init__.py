"""RAFT: rejection-sampling fine-tuning, the baseline GRPO has to clear (issue 24).

Sample n completions of each training prompt from the SFT model, score them with the reward GRPO
trains on, keep each prompt's best completion where it beats its group's mean by more than the
scorer's noise, and fine-tune the SFT model on the kept (prompt, completion) pairs through the
project's one SFT code path (train.py stage=sft). At equal sampled completions it reuses what
GRPO throws away: GRPO learns from every sample's advantage once, RAFT from the winners only,
with plain cross-entropy (arXiv 2304.06767; as a small-budget baseline, 2403.04642, 2504.11343).

    select.py   the rule: which group's best is kept (pure tensor arithmetic)
    run.py      the command: sampling and scoring as lmmixup.headroom does, then rows.jsonl
"""
