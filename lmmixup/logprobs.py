"""Log-probs of completion tokens without ever holding the (N, T, V) log-softmax.

The decoder backbone runs once over prompt+completion; the lm_head and log-softmax are applied
to chunks of positions by `token_logprobs`, a custom autograd function:

  forward   per chunk of C positions: z = (h W^T + b) / tau  (C, V), lse = logsumexp(z),
            log p(y) = z_y - lse. Only lse (one float per position) is kept, not z. With
            `with_entropy` the entropy -sum_v p_v log p_v comes from the same z, so the
            logging quantity costs no second lm_head matmul.
  backward  recomputes z per chunk and turns it, in place, into the logits' gradient
            d log p(y) / dz = onehot(y) - softmax(z), times the incoming gradient, / tau; then
            dh = dz W and dW += dz^T h. One (C, V) buffer is alive at a time.

So the peak is one (C, V) chunk instead of several (N*T, V) tensors (the logits, the
log-softmax, their gradients; SmolLM2 has V = 49,152), and the head costs 4 matmuls per chunk
(forward, recompute, two for backward) like plain activation checkpointing, but fewer passes
over (C, V) memory. Measured in `python -m lmmixup.bench --only logprob`.

All log-probs use logits / temperature, the same distribution the rollout sampled from
(see lmmixup/rollout.py), so at mu = 1 the first importance ratio is exactly 1.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, L) 0/1 mask -> (N, L) positions counting only real tokens (left padding gets 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _acc_dtype(weight: torch.Tensor) -> torch.dtype:
    """Softmax math runs in fp32 (fp64 stays fp64, for gradcheck)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _scaled_logits(hidden, weight, bias, temperature: float) -> torch.Tensor:
    """hidden (C, H) -> logits / tau (C, V) in fp32, a fresh buffer the caller may overwrite."""
    z = F.linear(hidden, weight, bias)  # (C, V)
    return z.to(_acc_dtype(weight)).div_(temperature)


class _HeadLogprobs(torch.autograd.Function):
    """(hidden (M, H), lm_head weight (V, H), bias (V,) or None, targets (M,)) ->
    log p(target) (M,) fp32 and entropy (M,) fp32 (empty unless asked; never differentiated)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk_size: int,
                with_entropy: bool):
        m, acc = hidden.shape[0], _acc_dtype(weight)
        logp = torch.empty(m, dtype=acc, device=hidden.device)  # (M,)
        lse = torch.empty(m, dtype=acc, device=hidden.device)  # (M,)
        entropy = torch.empty(m if with_entropy else 0, dtype=acc, device=hidden.device)  # (M,)
        for s in range(0, m, chunk_size):
            e = min(m, s + chunk_size)
            z = _scaled_logits(hidden[s:e], weight, bias, temperature)  # (C, V)
            lse[s:e] = torch.logsumexp(z, dim=1)
            logp[s:e] = z.gather(1, targets[s:e, None]).squeeze(1) - lse[s:e]
            if with_entropy:
                z.sub_(lse[s:e, None])  # (C, V) log p
                entropy[s:e] = -(z.exp() * z).sum(dim=1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        m, tau = hidden.shape[0], ctx.temperature
        for s in range(0, m, ctx.chunk_size):
            e = min(m, s + ctx.chunk_size)
            g = grad_logp[s:e].to(lse.dtype)  # (C,)
            dz = _scaled_logits(hidden[s:e], weight, bias, tau)  # (C, V) z
            dz.sub_(lse[s:e, None]).exp_()  # softmax(z)
            dz.mul_(-g[:, None])  # -softmax * g
            dz.scatter_add_(1, targets[s:e, None], g[:, None])  # + onehot(y) * g
            dz.div_(tau)  # through z = logits / tau
            dz = dz.to(weight.dtype)
            if need_h:
                grad_h[s:e] = dz @ weight  # (C, H)
            if need_w:
                grad_w.addmm_(dz.t(), hidden[s:e])  # (V, H)
            if need_b:
                grad_b += dz.sum(dim=0)
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   targets: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024,
                   with_entropy: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """hidden (M, H), targets (M,) -> log_softmax(lm_head(hidden) / tau)[target] (M,), and the
    entropy (M,) (detached) if asked, never materialising more than (chunk_size, V) logits."""
    logp, entropy = _HeadLogprobs.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                        with_entropy)
    return logp, (entropy if with_entropy else None)


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log pi(completion token | prefix) for every completion position.

    prompt_ids, prompt_mask: (N, P) left-padded;  completion_ids: (N, T).
    Returns logp (N, T) and, if asked, entropy (N, T) (detached). Positions after the stop token
    are computed too; the caller masks them.
    """
    n, p = prompt_ids.shape
    t = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    # Completion tokens after EOS are padding but stay "attended": they are masked out of the
    # loss, and causal attention means they never influence earlier positions.
    attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)  # (N, P+T)
    hidden = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # (N, P+T, H)
    # The hidden state at position i predicts token i+1: completion token j is predicted at P+j-1.
    hidden = hidden[:, p - 1 : p + t - 1, :].reshape(n * t, -1)  # (N*T, H)
    head = model.get_output_embeddings()
    logp, entropy = token_logprobs(hidden, head.weight, head.bias, completion_ids.reshape(n * t),
                                   temperature, chunk_size, with_entropy)  # (N*T,) each
    return logp.view(n, t), (entropy.view(n, t) if entropy is not None else None)
