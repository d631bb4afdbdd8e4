"""Data: MIXTURE-style instruction-distillation sets built offline from real packaged data.

    sources.py        seed pairs from the packaged data sets (and jsonl:/hf: sources)
    degrade.py        rated low-quality variants of each seed
    cluster.py        clusters of 2-5 members and the training row each becomes
    content.py        content words; is a target recoverable from its members?
    notes.py          the target's <think> notes, from the members' visible text only
    layout.py         the paper's prompt (chat messages, members numbered) and target layout
    audit.py          what a built MIXTURE's targets ask of the model: python -m lmmixup.data.audit DIR
    build_mixture.py  the resumable build: python -m lmmixup.data.build_mixture out=DIR
    hub.py            the released MIXTURE (hf:dokiik/MIXTURE) in the same row schema
    prompts.py        loading JSONL training rows for train.py
"""
