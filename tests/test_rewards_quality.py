"""Quality Q: the kNN Bayesian posterior (hand-computed and against a loop), the library
file and its embedding cache, and the real MiniLM on a clearly separated library."""

import json
import math
import random

import pytest
import torch

from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.rewards.embedder import EmbedderConfig, get_embedder
from lmmixup.rewards.quality import (
    KnnQuality, QualityConfig, fit_knn_quality, knn_posterior, library_cache_path,
    quality_from_expected, read_library, write_library)
from lmmixup.rewards.registry import RewardConfig
from lmmixup.rewards.synthetic import fluent_sentence, gibberish, synthetic_rated_rows


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Library embedding caches go to a per-test folder, never to ~/.cache."""
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(EmbedderConfig())


def unit(deg: float) -> list:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# ---- the math on a library small enough to do by hand -------------------------------------

def tiny_model(k=1, alpha=1.0):
    # Four 2-D unit vectors: two "good" rows (score 5) near 0 deg, two "bad" (score 0) near 90.
    emb = torch.tensor([unit(0), unit(10), unit(90), unit(100)])
    scores = torch.tensor([5, 5, 0, 0])
    return fit_knn_quality(emb, scores, k=k, alpha=alpha)


def test_fit_prior_and_transition_by_hand():
    m = tiny_model()
    # Leave-one-out 1-NN: 0deg<->10deg (5->5 twice), 90deg<->100deg (0->0 twice): C[5,5]=C[0,0]=2.
    # alpha=1, S=6: T[5,5] = (2+1)/(2+6) = 3/8, T[5,j!=5] = 1/8; same for row 0;
    # rows 1..4 have no counts: (0+1)/(0+6) = 1/6 everywhere.
    T = m.log_transition.exp()
    assert T[5, 5].item() == pytest.approx(3 / 8, abs=1e-6)
    assert T[5, 0].item() == pytest.approx(1 / 8, abs=1e-6)
    assert T[0, 0].item() == pytest.approx(3 / 8, abs=1e-6)
    assert T[2, 3].item() == pytest.approx(1 / 6, abs=1e-6)
    assert torch.allclose(T.sum(dim=1), torch.ones(6))
    # prior: counts s0=2, s5=2, others 0 -> (c+1)/(4+6): p0 = p5 = 3/10, p1..p4 = 1/10
    p = m.log_prior.exp()
    assert torch.allclose(p, torch.tensor([0.3, 0.1, 0.1, 0.1, 0.1, 0.3]), atol=1e-6)


def test_posterior_by_hand():
    m = tiny_model()
    # Query at 2 deg: its 1 nearest row is 0 deg (score 5) -> h = [0,0,0,0,0,1].
    # unnormalised posterior p(s) * T[s,5]:
    #   s=0: 3/10 * 1/8 = 9/240;  s=1..4: 1/10 * 1/6 = 4/240 each;  s=5: 3/10 * 3/8 = 27/240
    #   total = (9 + 16 + 27)/240 = 52/240 -> posterior = [9, 4, 4, 4, 4, 27] / 52
    #   E = (0*9 + (1+2+3+4)*4 + 5*27) / 52 = 175/52 = 3.3654
    post, E = knn_posterior(torch.tensor([unit(2)]), m)
    expected_post = torch.tensor([9, 4, 4, 4, 4, 27]) / 52
    assert torch.allclose(post[0], expected_post, atol=1e-6)
    assert E.item() == pytest.approx(175 / 52, abs=1e-5)
    # paper step with the default band [2.5, 4): 3.37 is "about 3" -> 0.3; expected mode: E/5
    cfg = QualityConfig()
    assert quality_from_expected(E, cfg).item() == pytest.approx(0.3)
    cfg.mode = "expected"
    assert quality_from_expected(E, cfg).item() == pytest.approx(175 / 52 / 5, abs=1e-6)


def test_posterior_with_k2_histogram_by_hand():
    m = tiny_model(k=2)
    # Leave-one-out 2-NN (cosines): 0deg -> 10 (5), 90 (0);  10deg -> 0 (5), 90 (0);
    # 90deg -> 100 (0), 10 (5);  100deg -> 90 (0), 10 (5)  (cos 80deg > cos 90deg)
    # C[5,5]=2, C[5,0]=2, C[0,0]=2, C[0,5]=2 -> T[5,5]=T[5,0]=(2+1)/(4+6)=3/10, T[5,other]=1/10.
    # Query at 45deg: neighbours 10deg (cos35) and 90deg (cos45): h = one 5, one 0.
    #   s=0: 3/10 * T[0,0] T[0,5] = 3/10 * 3/10 * 3/10 = 27/1000
    #   s=5: same = 27/1000;  s=1..4: 1/10 * 1/6 * 1/6 = 1/360
    #   E = (5*27/1000 + 10/360) / (54/1000 + 4/360)
    _, E = knn_posterior(torch.tensor([unit(45)]), m)
    want = (5 * 27 / 1000 + 10 / 360) / (54 / 1000 + 4 / 360)
    assert E.item() == pytest.approx(want, abs=1e-5)  # = 2.5


def test_vectorised_posterior_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    L, N, D, K, alpha = 60, 7, 8, 5, 0.5
    emb = torch.nn.functional.normalize(torch.randn(L, D, generator=g), dim=1)
    scores = torch.randint(0, 6, (L,), generator=g)
    queries = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    m = fit_knn_quality(emb, scores, k=K, alpha=alpha, chunk=16)  # chunking crosses rows
    post, E = knn_posterior(queries, m)

    def nearest(vec, exclude=None):
        sims = [(float(vec @ emb[j]), j) for j in range(L) if j != exclude]
        return [j for _, j in sorted(sims, reverse=True)[:K]]

    counts = [[0] * 6 for _ in range(6)]
    for i in range(L):
        for j in nearest(emb[i], exclude=i):
            counts[scores[i]][scores[j]] += 1
    T = [[(counts[s][j] + alpha) / (sum(counts[s]) + 6 * alpha) for j in range(6)]
         for s in range(6)]
    prior = [((scores == s).sum().item() + alpha) / (L + 6 * alpha) for s in range(6)]
    for n in range(N):
        h = [0] * 6
        for j in nearest(queries[n]):
            h[scores[j]] += 1
        logp = [math.log(prior[s]) + sum(h[j] * math.log(T[s][j]) for j in range(6))
                for s in range(6)]
        z = sum(math.exp(v) for v in logp)
        loop_post = [math.exp(v) / z for v in logp]
        assert post[n].tolist() == pytest.approx(loop_post, abs=1e-5)
        assert E[n].item() == pytest.approx(sum(s * loop_post[s] for s in range(6)), abs=1e-5)


def test_step_thresholds():
    cfg = QualityConfig()  # 1 at E >= 4, 0.3 in [2.5, 4), else 0
    E = torch.tensor([5.0, 4.0, 3.99, 3.0, 2.5, 2.49, 0.0])
    assert quality_from_expected(E, cfg).tolist() == pytest.approx([1, 1, .3, .3, .3, 0, 0])
    cfg.mid_high = 3.5  # the literal |E - 3| <= 0.5 reading leaves a hole in [3.5, 4)
    assert quality_from_expected(E, cfg).tolist() == pytest.approx([1, 1, 0, .3, .3, 0, 0])


# ---- the real embedder on a clearly separated library --------------------------------------

def separated_library(path, n=40):
    # n/2 fluent sentences rated 5 and n/2 random-letter strings rated 0
    return write_library(path, synthetic_rated_rows(n, seed=1, scores=(5, 0)))


def test_good_answer_q1_degraded_q0(tmp_path, embedder):
    cfg = QualityConfig(library=str(separated_library(tmp_path / "rated.jsonl")), k=8)
    scorer = KnnQuality(cfg, embedder)
    rng = random.Random(123)  # a different seed: texts not in the library
    good = [fluent_sentence(rng) for _ in range(3)]
    bad = [gibberish(rng) for _ in range(3)]
    E = scorer.expected(good + bad)
    Q = quality_from_expected(E, cfg)
    assert Q.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], E.tolist()


def test_library_embeddings_are_cached_on_disk(tmp_path, embedder):
    lib = separated_library(tmp_path / "rated.jsonl", n=20)
    cfg = QualityConfig(library=str(lib), k=4)
    calls = embedder.model_calls
    first = KnnQuality(cfg, embedder)
    assert embedder.model_calls == calls + 1  # embedded once
    cache = library_cache_path(lib, embedder.cache_key)
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left behind
    second = KnnQuality(cfg, embedder)
    assert embedder.model_calls == calls + 1  # read from the cache, no model call
    assert torch.equal(first.model.embeddings, second.model.embeddings)
    # the key follows the content: editing the library means a new cache file
    with open(lib, "a") as f:
        f.write(json.dumps({"text": "One more fluent sentence about gardens.", "score": 5}) + "\n")
    assert library_cache_path(lib, embedder.cache_key) != cache


# ---- bad inputs: one-line errors that name the culprit --------------------------------------

def test_missing_library_file(tmp_path, embedder):
    with pytest.raises(LmmixupError, match="reward.quality.library: no library file at"):
        KnnQuality(QualityConfig(library=str(tmp_path / "nope.jsonl")), embedder)


def test_empty_library(tmp_path, embedder):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LmmixupError, match="empty.jsonl: the rated library is empty"):
        KnnQuality(QualityConfig(library=str(tmp_path / "empty.jsonl")), embedder)


def test_k_larger_than_library(tmp_path, embedder):
    lib = write_library(tmp_path / "small.jsonl", synthetic_rated_rows(10))
    with pytest.raises(LmmixupError, match="reward.quality.k: k=16 needs at least 17"):
        KnnQuality(QualityConfig(library=str(lib)), embedder)


@pytest.mark.parametrize("line,msg", [
    ("{not json", "bad.jsonl:2: invalid JSON"),
    ('{"text": "x", "score": 6}', "bad.jsonl:2: \"score\" must be an integer 0..5"),
    ('{"text": "x", "score": 4.5}', "bad.jsonl:2: \"score\" must be an integer"),
    ('{"text": "x", "score": true}', "bad.jsonl:2: \"score\" must be an integer"),
    ('{"score": 3}', "bad.jsonl:2: a library row needs a non-empty \"text\""),
])
def test_malformed_library_line(tmp_path, line, msg):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine", "score": 5}) + "\n" + line + "\n")
    with pytest.raises(LmmixupError, match=msg):
        read_library(path)


def test_cached_embedding_dim_mismatch(tmp_path, embedder):
    lib = separated_library(tmp_path / "rated.jsonl", n=20)
    cache = library_cache_path(lib, embedder.cache_key)
    cache.parent.mkdir(parents=True)
    torch.save({"embeddings": torch.zeros(20, 7)}, cache)  # 7-dim: not MiniLM's 384
    with pytest.raises(LmmixupError, match=r"\(20, 7\) but embedder .* gives 384-dim.*stale"):
        KnnQuality(QualityConfig(library=str(lib), k=4), embedder)


def test_embedder_path_that_does_not_exist(tmp_path):
    with pytest.raises(LmmixupError, match="reward.embedder.name: no sentence-transformers folder"):
        get_embedder(EmbedderConfig(name=str(tmp_path / "no-such-model")))


def test_config_validation():
    with pytest.raises(ConfigError, match="reward.quality.library"):
        RewardConfig(weights={"quality": 0.5}).validate()
    with pytest.raises(ConfigError, match="reward.quality.alpha"):
        RewardConfig(weights={"quality": 0.5}, quality=QualityConfig(library="x", alpha=0)).validate()
    with pytest.raises(ConfigError, match="reward.quality.mode"):
        QualityConfig(mode="soft").validate()
    with pytest.raises(ConfigError, match="reward.quality: need 0 <= mid_low"):
        QualityConfig(mid_low=3.0, mid_high=2.0).validate()
    RewardConfig(weights={"quality": 0.5}, quality=QualityConfig(library="x")).validate()
    RewardConfig(weights={"format": 1.0}).validate()  # no library needed without quality
