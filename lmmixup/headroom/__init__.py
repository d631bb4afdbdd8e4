"""The headroom of GRPO on a model and a reward, measured before training (issue 24).

GRPO learns from the ranking inside each group of n samples. It can only win where that
ranking holds something: the best of n must beat the group's mean on R, the groups must have a
spread, and the spread must exceed what the scorer gives to trivially different versions of
one answer. And the best of n should not keep less of the reference than an average sample, or
the reward is won by losing the content. `python -m lmmixup.headroom` measures all four on
held-out prompts, each with a 95% bootstrap CI over prompts:

    measure.py   the arithmetic: best of n, groups with no spread, noise against spread
    variants.py  the trivially different versions of a completion
    checks.py    what R does not choose by: alignment cosine and the answer's words kept
    report.py    headroom.json's numbers and headroom.md's table
    run.py       the command: configs, sampling (lmmixup.sampling.Policy), scoring, writing
"""
