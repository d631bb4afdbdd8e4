"""Distilling a real instruction pool into a small high-quality training set (distill.py).

The script `distill.py` is the loop; these modules are its parts:
    formats    pool specs and file formats -> normalised instruction/input/output rows
    rate       embeddings and the 0-5 quality rating (the configured quality scorer or judge)
    cluster    capacity-limited k-means: clusters of 2-5 low-quality samples per source
    generate   cluster -> distillation prompt -> greedy rollout -> parsed pair
    longtail   the long-tail diversity score (mean cosine distance to the k nearest neighbours)
    mix        original high-quality rows + top distilled rows at an exact size and ratio
    report     report.json, report.md and the plots
    state      stage records, resume checks, the config-change refusal, the test kill hook
    config     the root schema (DistillConfig) registered with Hydra
"""
