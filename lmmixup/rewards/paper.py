"""The paper's three rewards as registered builders: `quality`, `alignment`, `format`.

    R = 0.5 * Q + 0.4 * A + 0.1 * F            (conf/reward/paper.yaml; 0.6/0.3/0.1 earlier)
All three score the text inside the last <answer>…</answer> (lmmixup/rewards/answer.py); a
completion without one gets Q = 0 and A = 0. The maths lives in quality.py, alignment.py and
task_format.py; this module only wires batches through it.

Embedding budget per rollout batch: alignment embeds every answer plus every reference in one
encode call; quality then finds the answers in the embedder's memo. (If quality runs first it
embeds the answers and alignment only the references: two calls, same total work.)
"""

from __future__ import annotations

from typing import List, Optional

import torch

from lmmixup.errors import LmmixupError
from lmmixup.rewards.alignment import alignment_from_embeddings
from lmmixup.rewards.answer import extract_answer, reference_text
from lmmixup.rewards.embedder import get_embedder
from lmmixup.rewards.quality import build_quality_scorer, quality_from_expected
from lmmixup.rewards.batch import RewardBatch
from lmmixup.rewards.config import RewardConfig
from lmmixup.rewards.task_format import format_score


def _answers(batch: RewardBatch) -> List[Optional[str]]:
    return [extract_answer(c) for c in batch.completions]


def build_format(cfg: RewardConfig):
    def score(batch: RewardBatch):
        return [format_score(c, t) for c, t in zip(batch.completions, batch.tasks)]

    return score


def build_alignment(cfg: RewardConfig):
    embedder = get_embedder(cfg.embedder)
    weight = cfg.weights["alignment"] if "alignment" in cfg.weights else 0.0
    mode, threshold = cfg.alignment.mode, cfg.alignment.threshold

    def score(batch: RewardBatch):
        answers = _answers(batch)
        refs = [reference_text(r) for r in batch.references]
        if weight > 0 and any(r is None for r in refs):
            raise LmmixupError(
                f"no reference for this completion's prompt; alignment (reward.weights."
                f"alignment={weight}) compares the answer with the reference: give every prompt "
                f"a reference or set reward.weights.alignment=0")
        with_answer = [i for i, a in enumerate(answers) if a is not None]  # quality reuses these
        rows = [i for i in with_answer if refs[i] is not None]  # M rows scored
        emb = embedder.encode([answers[i] for i in with_answer] + [refs[i] for i in rows])
        pos = {i: p for p, i in enumerate(with_answer)}
        ans_emb = emb[[pos[i] for i in rows]]  # (M, D)
        ref_emb = emb[len(with_answer):]  # (M, D)
        out = torch.zeros(len(batch))  # (N,) no answer or no reference -> 0
        if rows:
            out[rows] = alignment_from_embeddings(ans_emb, ref_emb, mode, threshold).cpu()
        return out.tolist()

    return score


def build_quality(cfg: RewardConfig):
    qcfg = cfg.quality
    expected_fn = build_quality_scorer(qcfg, cfg.embedder)  # reward.quality.backend

    def score(batch: RewardBatch):
        answers = _answers(batch)
        rows = [i for i, a in enumerate(answers) if a is not None]
        out = torch.zeros(len(batch))  # (N,) no answer -> 0
        if rows:
            out[rows] = quality_from_expected(expected_fn([answers[i] for i in rows]), qcfg)
        return out.tolist()

    return score
