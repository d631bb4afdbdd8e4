"""The sampling layer: prompts in, completions out. Every job that samples calls it.

    policy.py  `Policy`: the model, tokenizer, stop ids, device, sampler precision and rollout
               config, built once per job. `policy.sample(rows, G)` encodes the rows, samples G
               completions of each with the rollout engine, `policy.decode` turns them into
               the texts every reward scores, `policy.greedy(rows)` is held-out evaluation's
               decoding. train.py (GRPO), lmmixup/evaluate.py, distill.py (through
               lmmixup/distill/generate.py) and the benchmarks sample through it.
    rounds.py  GRPO's rollout rounds: sample and score B prompts, DAPO's refill of filtered
               groups, and the `ScoredBatch` a step trains on (lmmixup/dist/gather.py joins
               the ranks' batches with the same code).

A package and not one `policy.py`: the object that samples and the rounds that turn samples
into a scored training batch are two parts that change for different reasons (a new engine
option vs a new filtering rule), and the package boundary is what the import test
(tests/test_imports.py) checks. Below it sit the engines (lmmixup/rollout.py,
lmmixup/engine.py, lmmixup/rollout_batch.py); above it the GRPO update (lmmixup/step.py), which
imports from here and never the reverse.
"""
