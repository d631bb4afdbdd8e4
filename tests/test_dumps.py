"""Rollout dumps (lmmixup/dumps.py): per-token summaries by hand, schema round-trip, schedule."""

import math

import pytest
import torch

from lmmixup import dumps
from lmmixup.dumps import (TokenTensors, build_rows, dump_path, list_dumps, read_dump,
                           should_dump, summarise_tokens, write_dump)


def tokens_case():
    # two completions of T = 3; the second has 2 real tokens (its EOS is the 2nd)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -9.0]])
    ref = torch.tensor([[-1.0, -1.0, -3.0], [-0.5, -0.5, -9.0]])
    ids = torch.tensor([[5, 6, 2], [7, 2, 0]])
    return TokenTensors(token_ids=ids, mask=mask, logprobs=logp, ref_logprobs=ref)


def test_token_summaries_by_hand():
    s = summarise_tokens(tokens_case(), kl_estimator="k3", kl_clamp=10.0, eps_low=0.2, eps_high=0.2)
    # means over real tokens: (-1-2-3)/3 = -2; (-0.5-1.5)/2 = -1 (the padded -9 is ignored)
    assert s.logprob_mean.tolist() == [-2.0, -1.0]
    assert s.logprob_min.tolist() == [-3.0, -1.5]
    # k3 with log rho = ref - logp: row 0 = [0, 1, 0] -> (e^1 - 1 - 1)/3; row 1 = [0, 1] -> (e - 2)/2
    assert s.kl.tolist() == pytest.approx([(math.e - 2) / 3, (math.e - 2) / 2], abs=1e-6)
    assert s.entropy_mean is None and s.ratio_max is None and s.clip_frac is None


def test_ratio_summaries_by_hand():
    tok = tokens_case()
    tok.ratio = torch.tensor([[1.0, 1.3, 0.7], [0.9, 1.1, 5.0]])
    s = summarise_tokens(tok, "k3", 10.0, eps_low=0.2, eps_high=0.2)
    assert s.ratio_min.tolist() == pytest.approx([0.7, 0.9])
    assert s.ratio_max.tolist() == pytest.approx([1.3, 1.1])  # 5.0 sits on a padded token
    assert s.clip_frac.tolist() == pytest.approx([2 / 3, 0.0])  # 1.3 and 0.7 leave [0.8, 1.2]


def make_rows(with_tokens):
    tok = tokens_case()
    comps = {"quality": torch.tensor([1.0, 0.3]), "format": torch.tensor([0.5, 1.0])}
    total = 0.5 * comps["quality"] + 0.1 * comps["format"]
    adv = torch.tensor([0.7071, -0.7071])
    terms = {"quality": torch.tensor([0.9, -0.9]), "format": torch.tensor([-0.1929, 0.1929])}
    summary = summarise_tokens(tok, "k3", 10.0, 0.2, 0.2)
    return build_rows(step=3, group_size=2, prompt_ids=[17], prompts=["p", "p"],
                      completions=["<think>x</think><answer>Q: a A: b</answer>", "no answer"],
                      references=["ref", "ref"], tasks=["qa", "qa"], components=comps,
                      total=total, advantages=adv, terms=terms,
                      truncated=torch.tensor([False, True]), tokens=tok, summary=summary,
                      with_tokens=with_tokens)


@pytest.mark.parametrize("with_tokens", [False, True])
def test_parquet_schema_round_trips(tmp_path, with_tokens):
    rows = make_rows(with_tokens)
    path = write_dump(tmp_path, 3, rows, ["quality", "format"], with_tokens=with_tokens)
    assert path == tmp_path / "rollouts" / "step_000003.parquet"
    back = read_dump(path)
    assert back == rows  # every column, every type (float64 keeps the float values exact)
    assert back[0]["has_answer"] is True and back[1]["has_answer"] is False
    assert back[0]["length"] == 3 and back[1]["length"] == 2
    assert back[0]["group_mean"] == pytest.approx(0.5 * 0.65 + 0.1 * 0.75)
    assert back[0]["entropy_mean"] is None  # not available from the trainer yet: null, not 0
    if with_tokens:
        assert back[1]["token_ids"] == [7, 2] and back[1]["token_logprob"] == [-0.5, -1.5]
        assert back[1]["token_old_logprob"] is None
    assert list_dumps(tmp_path) == {3: path}
    assert not [p for p in (tmp_path / "rollouts").iterdir() if p.name.startswith(".")]


def test_jsonl_fallback_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(dumps, "pq", None)  # a machine without pyarrow
    rows = make_rows(True)
    path = write_dump(tmp_path, 12, rows, ["quality", "format"], with_tokens=True)
    assert path.name == "step_000012.jsonl" and path == dump_path(tmp_path, 12)
    assert read_dump(path) == rows


def test_dump_schedule():
    # auto (-1): every step for runs under 50 steps
    assert [s for s in range(1, 6) if should_dump(s, 5, -1)] == [1, 2, 3, 4, 5]
    # auto on a 100-step run: every 10, plus the first and last steps
    assert [s for s in range(1, 101) if should_dump(s, 100, -1)] == [1] + list(range(10, 101, 10))
    assert [s for s in range(1, 8) if should_dump(s, 7, 3)] == [1, 3, 6, 7]
    assert not any(should_dump(s, 7, 0) for s in range(1, 8))


def test_wandb_sample_table_offline(tmp_path):
    from lmmixup.logging import LoggerConfig, MetricsLog

    log = MetricsLog(LoggerConfig(backend="wandb"), tmp_path, {"seed": 0})
    rows = make_rows(False)
    columns = ["step", "member", "completion", "advantage"]
    log.wandb.table("rollouts/samples", columns, [[r[c] for c in columns] for r in rows], step=3)
    log.finish()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/rollouts/samples_*.table.json"))
    assert len(tables) == 1
    import json

    saved = json.loads(tables[0].read_text())
    assert saved["columns"] == columns and len(saved["data"]) == 2
