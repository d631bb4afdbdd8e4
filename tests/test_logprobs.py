"""Chunked log-probs against the naive full log-softmax: values, entropy and gradients."""

import pytest
import torch

from lmmixup.logprobs import completion_logprobs, token_logprobs


def _naive(hidden, weight, bias, targets, temperature):
    """The (M, V) log-softmax held whole: the reference the chunked head must reproduce."""
    logits = torch.nn.functional.linear(hidden, weight, bias) / temperature  # (M, V)
    logp_all = torch.log_softmax(logits, dim=-1)  # (M, V)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (M,)
    return logp_all.gather(1, targets[:, None]).squeeze(1), entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 1000 > M: a single chunk
@pytest.mark.parametrize("with_bias", [False, True])
def test_token_logprobs_values_entropy_and_grads_match_naive(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    m, h, v, tau = 45, 16, 97, 0.7
    hidden = torch.randn(m, h, generator=g, requires_grad=True)
    weight = (torch.randn(v, h, generator=g) * 0.5).requires_grad_()
    bias = torch.randn(v, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, v, (m,), generator=g)
    upstream = torch.randn(m, generator=g)  # an arbitrary loss: sum(upstream * logp)

    ours, ent = token_logprobs(hidden, weight, bias, targets, tau, chunk, with_entropy=True)
    ref, ref_ent = _naive(hidden, weight, bias, targets, tau)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ent, ref_ent.detach(), atol=1e-5, rtol=0)
    assert not ent.requires_grad

    params = [hidden, weight] + ([bias] if with_bias else [])
    g_ours = torch.autograd.grad((ours * upstream).sum(), params)
    g_ref = torch.autograd.grad((ref * upstream).sum(), params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_token_logprobs_passes_gradcheck_in_float64():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 4, dtype=torch.double, generator=g, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.double, generator=g, requires_grad=True)
    bias = torch.randn(9, dtype=torch.double, generator=g, requires_grad=True)
    targets = torch.randint(0, 9, (6,), generator=g)
    assert torch.autograd.gradcheck(
        lambda hh, w, b: token_logprobs(hh, w, b, targets, 1.3, 4)[0], (hidden, weight, bias))


def test_only_the_weight_needs_a_gradient():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 8, generator=g)  # frozen backbone output
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (10,), generator=g)
    ours, _ = token_logprobs(hidden, weight, None, targets, 1.0, 3)
    ref, _ = _naive(hidden, weight, None, targets, 1.0)
    (gw,) = torch.autograd.grad(ours.sum(), [weight])
    (rw,) = torch.autograd.grad(ref.sum(), [weight])
    assert torch.allclose(gw, rw, atol=1e-5)


def _naive_completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, tau):
    """Full-model forward, full (N, T, V) log-softmax, gather."""
    p = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (N, P+T, V)
    logp_all = torch.log_softmax(logits[:, p - 1:-1] / tau, dim=-1)  # (N, T, V)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return logp_all.gather(2, completion_ids[..., None]).squeeze(2), entropy


def test_completion_logprobs_match_naive_on_a_tiny_model_with_left_padding(tiny_model):
    torch.manual_seed(0)
    v = tiny_model.config.vocab_size
    prompt_ids = torch.randint(3, v, (3, 6))
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :4] = 0  # uneven left padding
    prompt_mask[2, :1] = 0
    completion_ids = torch.randint(3, v, (3, 5))
    logp, ent = completion_logprobs(tiny_model, prompt_ids, prompt_mask, completion_ids,
                                    temperature=0.8, chunk_size=4, with_entropy=True)
    ref, ref_ent = _naive_completion_logprobs(tiny_model, prompt_ids, prompt_mask, completion_ids, 0.8)
    assert logp.shape == ent.shape == (3, 5)
    assert torch.allclose(logp, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ent, ref_ent.detach(), atol=1e-4, rtol=0)

    params = [p for p in tiny_model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(logp.sum(), params)
    g_ref = torch.autograd.grad(ref.sum(), params)
    for a, b in zip(g_ours, g_ref):  # the tied embedding gets both paths' gradient
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_no_grad_completion_logprobs(tiny_model):
    torch.manual_seed(1)
    v = tiny_model.config.vocab_size
    prompt_ids, completion_ids = torch.randint(3, v, (2, 4)), torch.randint(3, v, (2, 3))
    mask = torch.ones_like(prompt_ids)
    with torch.no_grad():
        logp, ent = completion_logprobs(tiny_model, prompt_ids, mask, completion_ids, 1.0, 2)
        ref, _ = _naive_completion_logprobs(tiny_model, prompt_ids, mask, completion_ids, 1.0)
    assert ent is None and not logp.requires_grad
    assert torch.allclose(logp, ref, atol=1e-5, rtol=0)


def _grouped_batch(vocab, group=3, seed=0):
    """3 distinct left-padded prompts, each repeated `group` times (group order), and random
    completions: (N, P), (N, P), (N, T)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [2, 7, 5]
    p = max(lengths)
    prompt_ids = torch.zeros(len(lengths), p, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, n in enumerate(lengths):
        prompt_ids[i, p - n:] = torch.randint(3, vocab, (n,), generator=g)
        prompt_mask[i, p - n:] = 1
    prompt_ids = prompt_ids.repeat_interleave(group, 0)
    prompt_mask = prompt_mask.repeat_interleave(group, 0)
    completion_ids = torch.randint(3, vocab, (prompt_ids.shape[0], 6), generator=g)
    return prompt_ids, prompt_mask, completion_ids


def _qwen2_tiny():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        initializer_range=0.2))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.3)
            layer.self_attn.k_proj.bias.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("which", ["tiny_llama", "qwen2", "llama_checkpointed"])
def test_prompts_shared_by_a_group_run_once_with_identical_values_and_grads(which, tiny_model):
    """Rows in group order share their prompt: the decoder runs each prompt once. Values and
    parameter gradients must equal the naive per-row forward."""
    from lmmixup.logprobs import _prompt_groups, shares_prompts

    model = _qwen2_tiny() if which == "qwen2" else tiny_model
    if which == "llama_checkpointed":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    prompt_ids, prompt_mask, completion_ids = _grouped_batch(model.config.vocab_size)
    assert shares_prompts(model)
    owner, first = _prompt_groups(prompt_ids, prompt_mask)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and first.tolist() == [0, 3, 6]

    logp, ent = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, 0.9, 5,
                                    with_entropy=True)
    ref, ref_ent = _naive_completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, 0.9)
    assert torch.allclose(logp, ref, atol=1e-5, rtol=0)
    assert torch.allclose(ent, ref_ent.detach(), atol=1e-4, rtol=0)
    upstream = torch.randn(logp.shape, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad((logp * upstream).sum(), params)
    g_ref = torch.autograd.grad((ref * upstream).sum(), params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_rows_without_a_shared_prompt_take_the_plain_path():
    from lmmixup.logprobs import _prompt_groups

    ids = torch.tensor([[1, 2], [1, 3], [1, 2]])  # no two neighbours equal
    assert _prompt_groups(ids, torch.ones_like(ids)) is None
    mask = torch.tensor([[1, 1], [0, 1]])
    assert _prompt_groups(torch.tensor([[1, 2], [1, 2]]), mask) is None  # same ids, other mask
