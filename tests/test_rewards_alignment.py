"""Alignment A on the real MiniLM, the three paper rewards wired through the registry, the
shared embedder and its one-encode-call budget, and the extra logging metrics."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.rewards import (
    RewardBatch, RewardConfig, build_rewards, compute_rewards, reward_extra_metrics)
from lmmixup.rewards.alignment import AlignmentConfig
from lmmixup.rewards.embedder import EmbedderConfig, get_embedder
from lmmixup.rewards.quality import write_library
from lmmixup.rewards.synthetic import synthetic_rated_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))


def wrap(answer):
    return f"<think>Let me think.</think><answer>{answer}</answer>"


def batch(completions, references, tasks=None):
    n = len(completions)
    return RewardBatch(prompts=[""] * n, completions=completions, references=references,
                       tasks=tasks or [None] * n, completion_tokens=[1] * n)


REF = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the mat."  # cosine 0.95 with REF under MiniLM
UNRELATED = "Quantum chromodynamics describes how quarks interact."  # cosine about 0


def alignment_fn(mode="binary", weight=0.4):
    cfg = RewardConfig(weights={"alignment": weight}, alignment=AlignmentConfig(mode=mode))
    return build_rewards(cfg)["alignment"]


def test_paraphrase_aligned_unrelated_not():
    fn = alignment_fn()
    scores = fn(batch([wrap(PARAPHRASE), wrap(UNRELATED), wrap(REF), "no answer block"],
                      [REF] * 4))
    # paraphrase cos 0.95 >= 0.8 -> 1; unrelated -> 0; identical -> 1; no answer -> 0
    assert scores == [1.0, 0.0, 1.0, 0.0]


def test_continuous_is_the_clipped_cosine():
    emb = get_embedder(EmbedderConfig())
    e = emb.encode([PARAPHRASE, UNRELATED, REF])
    cos = (e[:2] @ e[2]).clamp(0, 1).tolist()
    scores = alignment_fn("continuous")(batch([wrap(PARAPHRASE), wrap(UNRELATED)], [REF] * 2))
    assert scores == pytest.approx(cos, abs=1e-5)
    assert 0.8 < scores[0] < 1.0 and scores[1] < 0.2


def test_missing_reference_is_an_error_only_with_weight():
    b = batch([wrap(PARAPHRASE), wrap(PARAPHRASE)], [REF, None])
    with pytest.raises(LmmixupError, match="no reference .*reward.weights.alignment=0"):
        alignment_fn(weight=0.4)(b)
    assert alignment_fn(weight=0.0)(b) == [1.0, 0.0]


def test_reward_names_the_failing_sample_through_compute_rewards():
    cfg = RewardConfig(weights={"alignment": 0.4})
    fns = build_rewards(cfg)
    with pytest.raises(LmmixupError, match="reward 'alignment' failed on sample 1: .*no reference"):
        compute_rewards(fns, cfg, batch([wrap(REF), wrap(REF)], [REF, None]), group_size=2)


def paper_cfg(tmp_path) -> RewardConfig:
    """conf/reward/paper.yaml merged onto the schema, as Hydra does, plus a library."""
    lib = write_library(tmp_path / "rated.jsonl", synthetic_rated_rows(40, seed=1, scores=(5, 0)))
    merged = OmegaConf.merge(OmegaConf.structured(RewardConfig),
                             OmegaConf.load(ROOT / "conf/reward/paper.yaml"))
    merged.quality.library = str(lib)
    merged.quality.k = 8
    # 20 clean synthetic texts, none in a Q:/A: shape: the score-0 degenerate rows' shape lines
    # ("Q: <question>\nA: <answer>") would be the only "Q:" the scorer ever saw, and the qa
    # answer below would score 0 for its shape alone (MIXTURE's library has Q:/A: pairs at
    # every score, so there it carries no signal)
    merged.quality.learned.degenerate = False
    cfg = OmegaConf.to_object(merged)
    cfg.validate()
    return cfg


def test_paper_yaml_needs_a_library():
    # reward=paper takes its library from data.rated_file; the starter data has none
    from hydra import compose, initialize_config_dir

    from lmmixup.config import register_configs, to_train_config

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        dcfg = compose("config", overrides=["reward=paper"])
        with pytest.raises(ConfigError, match="reward.quality.library"):
            to_train_config(dcfg)
        mixture = to_train_config(compose("config", overrides=["reward=paper", "data=mixture"]))
    assert mixture.reward.quality.library == "data/mixture/rated.jsonl"


def test_paper_mix_end_to_end_with_one_encode_call(tmp_path):
    cfg = paper_cfg(tmp_path)
    assert cfg.weights == {"alignment": 0.4, "quality": 0.5, "format": 0.1, "no_answer": 0.2}
    fns = build_rewards(cfg)
    good = "A careful cook improves the taste of a simple meal when it is planned with care."
    b = batch([wrap(f"Q: how to cook well? A: {good}"),  # Q=1, A=1, F=1 -> 0.5+0.4+0.1 = 1.0
               wrap("zkqv bdfh xwrt plmq"),  # gibberish: Q=0, A=0, F=0.5+0 (qa shape fails)
               f"<answer>{good}</answer>",  # para, no think: Q=1, A=1, F=0.5 -> 0.95
               "I forgot the tags."],  # nothing: 0, and the no-answer penalty -1 -> -0.2
              [f"Q: how to cook well? A: {good}", good, good, good],
              ["qa", "qa", "para", "para"])
    emb = get_embedder(cfg.embedder)
    emb.clear_memo()
    calls = emb.model_calls
    result = compute_rewards(fns, cfg, b, group_size=2)
    assert emb.model_calls == calls + 1  # answers + references in one call, quality hit the memo
    assert result.components["quality"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert result.components["alignment"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert result.components["format"].tolist() == [1.0, 0.5, 0.5, 0.0]
    assert result.components["no_answer"].tolist() == [0.0, 0.0, 0.0, -1.0]
    # total = 0.5 Q + 0.4 A + 0.1 F + 0.2 P
    assert result.total.tolist() == pytest.approx([1.0, 0.05, 0.95, -0.2], abs=1e-6)
    # extra metrics: Q=1 in 2/4, A=1 in 2/4, F=1 in 1/4
    assert reward_extra_metrics(result.components) == {
        "reward/frac_quality_1": 0.5, "reward/frac_alignment_1": 0.5,
        "reward/frac_format_full": 0.25}


def test_extra_metrics_skip_absent_components():
    assert reward_extra_metrics({"format": torch.tensor([1.0, 0.5])}) == {
        "reward/frac_format_full": 0.5}
    assert reward_extra_metrics({"tags": torch.tensor([1.0])}) == {}


def test_embedder_is_shared_and_memo_dedupes():
    a, b = get_embedder(EmbedderConfig()), get_embedder(EmbedderConfig())
    assert a is b
    a.clear_memo()
    calls = a.model_calls
    out = a.encode([REF, PARAPHRASE, REF])  # duplicate text embedded once
    assert a.model_calls == calls + 1 and torch.equal(out[0], out[2])
    a.encode([PARAPHRASE])
    assert a.model_calls == calls + 1  # served from the memo
