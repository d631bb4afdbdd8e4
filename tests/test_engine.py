"""The static-KV-cache engine against HF `generate` and against a fresh forward pass.

Two implementations that must agree: greedy tokens equal HF's token by token (random 2-layer
Llama and Qwen2 models, and the real SmolLM2), recorded log-probs equal a plain forward pass,
and sampled first tokens follow softmax(logits / tau) (a chi-square test that can fail).
"""

import pytest
import torch

from lmmixup.engine import static_generate
from lmmixup.errors import LmmixupError
from lmmixup.rollout import RolloutConfig, get_engine

PAD = 0


def _llama(vocab=512, seed=0):
    """Random Llama with GQA (4 query / 2 KV heads) and head_dim 32 != hidden / heads. A large
    init spread gives peaked, varied logits, so greedy decoding is not one repeated token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, tie_word_embeddings=True,
                         initializer_range=0.3, pad_token_id=PAD, bos_token_id=None,
                         eos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _qwen2(vocab=512, seed=0):
    """Random Qwen2: q/k/v biases (made non-zero), multi-query attention, untied lm_head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         initializer_range=0.3, pad_token_id=PAD, bos_token_id=None,
                         eos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def _left_padded(lengths, vocab, seed=0):
    """Random prompts of the given lengths, left-padded: ids, mask (B, max(lengths))."""
    g = torch.Generator().manual_seed(seed)
    p = max(lengths)
    ids = torch.full((len(lengths), p), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), p, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, p - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, p - n:] = 1
    return ids, mask


def _hf_greedy(model, ids, mask, group, max_new, stop_ids):
    """HF generate, greedy, over the G-repeated prompts: completion (N, T') pad after a stop."""
    out = model.generate(input_ids=ids.repeat_interleave(group, 0),
                         attention_mask=mask.repeat_interleave(group, 0), do_sample=False,
                         max_new_tokens=max_new, eos_token_id=list(stop_ids) or None,
                         pad_token_id=PAD)
    return out[:, ids.shape[1]:]


def _fresh_logprobs(model, rollout, temperature):
    """log_softmax(logits / tau) of each completion token from one plain forward pass."""
    p = rollout.prompt_ids.shape[1]
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # (N, P+T)
    mask = torch.cat([rollout.prompt_mask, torch.ones_like(rollout.completion_ids)], dim=1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # (N, P+T)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (N, P+T, V)
    logp = torch.log_softmax(logits[:, p - 1:-1].float() / temperature, dim=-1)  # (N, T, V)
    return logp.gather(2, rollout.completion_ids[..., None]).squeeze(2)  # (N, T)


def test_registered_as_static_engine():
    assert get_engine("static") is static_generate


def test_the_leaf_names_exactly_the_engines_rollout_binds():
    # RolloutConfig (lmmixup/rollout_batch.py) validates against ENGINE_NAMES without importing
    # the engines; lmmixup/rollout.py binds each name to its function
    from lmmixup.rollout import ENGINES
    from lmmixup.rollout_batch import ENGINE_NAMES

    assert tuple(ENGINES) == ENGINE_NAMES


@pytest.mark.parametrize("make", [_llama, _qwen2])
def test_greedy_matches_hf_generate_with_uneven_left_padding(make):
    model = make()
    ids, mask = _left_padded([1, 23, 6, 40], model.config.vocab_size)  # very different lengths
    cfg = RolloutConfig(max_new_tokens=24)
    ours = static_generate(model, ids, mask, cfg, 2, [], PAD, greedy=True)  # nothing stops
    ref = _hf_greedy(model, ids, mask, 2, 24, [])
    assert len(set(ref.flatten().tolist())) > 10  # the check is not on one repeated token
    assert torch.equal(ours.completion_ids, ref)
    assert ours.truncated.all() and ours.completion_mask.all()
    assert torch.equal(ours.prompt_ids, ids.repeat_interleave(2, 0))


@pytest.mark.parametrize("compact", [True, False])
def test_greedy_stops_match_hf_including_a_stop_at_the_first_step(compact):
    model = _llama()
    ids, mask = _left_padded([3, 15, 9, 1], model.config.vocab_size, seed=1)
    free = _hf_greedy(model, ids, mask, 1, 20, [])  # (4, 20) nobody stops
    # row 0 stops at step 1 (its first token is a stop id); row 2 stops at step 8, unless the
    # same ids appear earlier in other rows, which HF and we must then treat identically
    stops = sorted({int(free[0, 0]), int(free[2, 7])})
    ours = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=20), 1, stops, PAD,
                           greedy=True, compact=compact)
    ref = _hf_greedy(model, ids, mask, 1, 20, stops)
    assert torch.equal(ours.completion_ids, ref)
    assert ours.completion_mask[0].tolist()[:2] == [1.0, 0.0]  # stop token kept, nothing after
    assert not ours.truncated[0] and not ours.truncated[2]
    assert ours.completion_lengths[2] <= 8
    lengths = ours.completion_mask.sum(1).long()
    for n in range(4):  # pad and log-prob 0 after the stop token
        assert (ours.completion_ids[n, lengths[n]:] == PAD).all()
        assert (ours.rollout_logp[n, lengths[n]:] == 0).all()


def test_loop_ends_when_every_row_has_stopped():
    model = _llama()
    ids, mask = _left_padded([4, 4], model.config.vocab_size)
    free = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=6), 1, [], PAD, greedy=True)
    stops = sorted({int(free.completion_ids[0, 0]), int(free.completion_ids[1, 0])})
    out = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=50), 1, stops, PAD, greedy=True)
    assert out.completion_ids.shape == (2, 1)  # one step, not 50
    assert not out.truncated.any()


@pytest.mark.parametrize("filtered", [True, False], ids=["top_k_top_p", "unfiltered"])
@pytest.mark.parametrize("make", [_llama, _qwen2])
def test_recorded_logprobs_equal_a_fresh_forward(make, filtered):
    # the unfiltered path takes log Z from the sampler's own CDF, the filtered one from a
    # separate logsumexp: both must give log_softmax(logits / tau) of the full distribution
    model = make()
    ids, mask = _left_padded([2, 11, 30], model.config.vocab_size, seed=2)
    cfg = (RolloutConfig(max_new_tokens=16, temperature=0.7, top_k=50, top_p=0.9) if filtered
           else RolloutConfig(max_new_tokens=16, temperature=0.7))
    torch.manual_seed(0)
    out = static_generate(model, ids, mask, cfg, 3, [5, 7], PAD)  # a few rows may stop early
    fresh = _fresh_logprobs(model, out, cfg.temperature)  # (N, T)
    m = out.completion_mask.bool()
    assert torch.allclose(out.rollout_logp[m], fresh[m], atol=1e-4, rtol=0)
    assert (out.rollout_logp[~m] == 0).all()


def test_sampling_is_seeded_by_the_global_rng_and_prefill_is_shared_by_the_group():
    model = _llama()
    ids, mask = _left_padded([5, 9], model.config.vocab_size)
    cfg = RolloutConfig(max_new_tokens=12)
    torch.manual_seed(3)
    a = static_generate(model, ids, mask, cfg, 4, [], PAD)
    torch.manual_seed(3)
    b = static_generate(model, ids, mask, cfg, 4, [], PAD)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids[0], a.completion_ids[1])  # G distinct samples
    gen = torch.Generator().manual_seed(3)
    c = static_generate(model, ids, mask, cfg, 4, [], PAD, generator=gen)
    assert c.completion_ids.shape == a.completion_ids.shape


def test_top_k_1_is_greedy():
    """evaluate.py asks for greedy decoding as top_k=1 sampling."""
    model = _llama()
    ids, mask = _left_padded([4, 9], model.config.vocab_size)
    greedy = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=8), 2, [], PAD, greedy=True)
    top1 = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=8, top_k=1), 2, [], PAD)
    assert torch.equal(greedy.completion_ids, top1.completion_ids)


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; bins expecting < 5 draws are pooled into one."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    # survival function of chi2(dof) = regularized upper incomplete gamma Q(dof/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.double), stat / 2.0))


def _first_token_probs(model, ids, mask, temperature, top_k=0, top_p=1.0):
    """The next-token distribution HF would sample from, built with HF's own logits warpers."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1].float()  # (1, V)
    scores = logits / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores.softmax(-1)[0]  # (V,)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (12, 0.8)])
def test_first_token_frequencies_follow_the_sampling_distribution(top_k, top_p):
    model = _llama(vocab=48, seed=4)
    ids, mask = _left_padded([3, 6], 48, seed=5)
    ids, mask = ids[1:], mask[1:]  # one prompt, left-padded by 3
    draws = 8000
    cfg = RolloutConfig(max_new_tokens=1, temperature=0.8, top_k=top_k, top_p=top_p)
    torch.manual_seed(0)
    out = static_generate(model, ids, mask, cfg, draws, [], PAD)  # B=1, G=8000
    counts = torch.bincount(out.completion_ids[:, 0], minlength=48)  # (V,)
    probs = _first_token_probs(model, ids, mask, 0.8, top_k, top_p)  # (V,)
    assert (counts[probs == 0] == 0).all()  # filtered tokens are never drawn
    assert _chi2_pvalue(counts, probs) > 1e-3
    # the same test rejects a slightly wrong distribution: it is able to fail
    wrong = _first_token_probs(model, ids, mask, 1.0, top_k, top_p)
    assert _chi2_pvalue(counts, wrong) < 1e-3


def test_refuses_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    ids, mask = _left_padded([3], 64)
    with pytest.raises(LmmixupError, match="model_type='gpt2'"):
        static_generate(model, ids, mask, RolloutConfig(max_new_tokens=2), 1, [], PAD)


def test_refuses_an_empty_prompt():
    model = _llama()
    ids, mask = _left_padded([3, 2], model.config.vocab_size)
    mask[1] = 0
    with pytest.raises(LmmixupError, match="no tokens"):
        static_generate(model, ids, mask, RolloutConfig(max_new_tokens=2), 1, [], PAD)


@pytest.fixture(scope="module")
def smollm2():
    from lmmixup.models import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig()
    tok = load_tokenizer(cfg)
    return load_model(cfg, tok).eval(), tok


@pytest.mark.slow
def test_greedy_matches_hf_generate_on_smollm2(smollm2):
    from lmmixup.models import stop_token_ids

    model, tok = smollm2
    questions = ["Hi!", "Name a colour.",
                 "Explain in detail, step by step, how a bicycle stays upright while moving "
                 "and why it falls over when it stops, using simple words a child knows."]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                     add_generation_prompt=True) for q in questions]
    enc = tok(texts, return_tensors="pt", padding=True)  # left-padded
    stops = stop_token_ids(tok, model)
    ours = static_generate(model, enc.input_ids, enc.attention_mask,
                           RolloutConfig(max_new_tokens=20), 1, stops, tok.pad_token_id, greedy=True)
    ref = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         do_sample=False, max_new_tokens=20, eos_token_id=stops,
                         pad_token_id=tok.pad_token_id)[:, enc.input_ids.shape[1]:]
    assert torch.equal(ours.completion_ids, ref)


@pytest.mark.slow
def test_smollm2_logprobs_equal_a_fresh_forward(smollm2):
    model, tok = smollm2
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                     add_generation_prompt=True) for q in ["Hi", "What is 12 * 7?"]]
    enc = tok(texts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = static_generate(model, enc.input_ids, enc.attention_mask,
                          RolloutConfig(max_new_tokens=12, temperature=0.9), 2, [],
                          tok.pad_token_id)
    fresh = _fresh_logprobs(model, out, 0.9)
    assert torch.allclose(out.rollout_logp, fresh, atol=1e-4, rtol=0)
