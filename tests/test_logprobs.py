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
