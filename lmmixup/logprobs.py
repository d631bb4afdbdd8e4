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

Under bf16 autocast (precision.train=bf16, lmmixup/precision.py) the head's GEMMs run in bf16:
`token_logprobs` notes the autocast dtype when called and multiplies bf16 copies of the hidden
states and the head weight, in the forward, the backward's recompute and both backward products
(a custom autograd function is outside autocast's reach in its backward, so the dtype is carried
explicitly). z, logsumexp, log p, the entropy and the softmax of the gradient stay fp32; the
weight gradient is summed over chunks in fp32.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmmixup.kernels import forward_gemm, linear, rope, signed_sin, unsupported_reason


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, L) 0/1 mask -> (N, L) positions counting only real tokens (left padding gets 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _acc_dtype(weight: torch.Tensor) -> torch.dtype:
    """Softmax math runs in fp32 (fp64 stays fp64, for gradcheck)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _gemm_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head multiplies in: autocast's (bf16) when it is on for this device and the
    weight is fp32, else the weight's own."""
    kind = hidden.device.type
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _scaled_logits(hidden, weight, bias, temperature: float, acc: torch.dtype) -> torch.Tensor:
    """hidden (C, H) -> logits / tau (C, V) in `acc` (fp32), a fresh buffer the caller may
    overwrite. hidden and weight are already in the GEMM's dtype."""
    with torch.autocast(hidden.device.type, enabled=False):  # the dtype is chosen by the caller
        z = forward_gemm(hidden, weight, bias)  # (C, V)
    return z.to(acc).div_(temperature)


class _HeadLogprobs(torch.autograd.Function):
    """(hidden (M, H), lm_head weight (V, H), bias (V,) or None, targets (M,)) ->
    log p(target) (M,) fp32 and entropy (M,) fp32 (empty unless asked; never differentiated)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk_size: int,
                with_entropy: bool):
        m, acc = hidden.shape[0], _acc_dtype(weight)
        gemm = _gemm_dtype(hidden, weight)  # bf16 under autocast, else the weight's dtype
        h_g, w_g = hidden.to(gemm), weight.to(gemm)  # (M, H), (V, H): one cast per call
        b_g = None if bias is None else bias.to(gemm)  # (V,)
        logp = torch.empty(m, dtype=acc, device=hidden.device)  # (M,)
        lse = torch.empty(m, dtype=acc, device=hidden.device)  # (M,)
        entropy = torch.empty(m if with_entropy else 0, dtype=acc, device=hidden.device)  # (M,)
        for s in range(0, m, chunk_size):
            e = min(m, s + chunk_size)
            z = _scaled_logits(h_g[s:e], w_g, b_g, temperature, acc)  # (C, V) fp32
            lse[s:e] = torch.logsumexp(z, dim=1)
            logp[s:e] = z.gather(1, targets[s:e, None]).squeeze(1) - lse[s:e]
            if with_entropy:
                z.sub_(lse[s:e, None])  # (C, V) log p
                entropy[s:e] = -(z.exp() * z).sum(dim=1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size, ctx.gemm = temperature, chunk_size, gemm
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gemm = ctx.gemm  # the forward's GEMM dtype (autocast is off in a backward)
        h_g, w_g = hidden.to(gemm), weight.to(gemm)  # (M, H), (V, H)
        b_g = None if bias is None else bias.to(gemm)  # (V,)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None  # the first chunk's product initialises it (no (V, H) zero fill)
        grad_b = torch.zeros_like(bias) if need_b else None
        m, tau = hidden.shape[0], ctx.temperature
        for s in range(0, m, ctx.chunk_size):
            e = min(m, s + ctx.chunk_size)
            g = grad_logp[s:e].to(lse.dtype)  # (C,)
            dz = _scaled_logits(h_g[s:e], w_g, b_g, tau, lse.dtype)  # (C, V) z, fp32
            dz.sub_(lse[s:e, None]).exp_()  # softmax(z)
            dz.mul_(-g[:, None])  # -softmax * g
            dz.scatter_add_(1, targets[s:e, None], g[:, None])  # + onehot(y) * g
            dz.div_(tau)  # through z = logits / tau
            if need_b:
                grad_b += dz.sum(dim=0).to(bias.dtype)  # summed before any bf16 rounding
            dz = dz.to(gemm)
            if need_h:
                grad_h[s:e] = dz @ w_g  # (C, H), cast to hidden's dtype on assignment
            if need_w and gemm == weight.dtype:  # fp32: the product accumulates in place
                if grad_w is None:
                    grad_w = dz.t() @ h_g[s:e]  # (V, H)
                else:
                    grad_w.addmm_(dz.t(), h_g[s:e])
            elif need_w:  # bf16 product per chunk, summed over chunks in fp32
                part = (dz.t() @ h_g[s:e]).to(weight.dtype)  # (V, H)
                grad_w = part if grad_w is None else grad_w.add_(part)
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   targets: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024,
                   with_entropy: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """hidden (M, H), targets (M,) -> log_softmax(lm_head(hidden) / tau)[target] (M,), and the
    entropy (M,) (detached) if asked, never materialising more than (chunk_size, V) logits."""
    logp, entropy = _HeadLogprobs.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                        with_entropy)
    return logp, (entropy if with_entropy else None)


def _prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """Rows in group order share their prompt: (owner (N,) index of each row's unique prompt,
    first (U,) the first row of each unique prompt), or None when no two neighbours match."""
    if prompt_ids.shape[0] < 2:
        return None
    same = ((prompt_ids[1:] == prompt_ids[:-1]) & (prompt_mask[1:] == prompt_mask[:-1])).all(1)  # (N-1,)
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])  # (N,) True where a new prompt begins
    return starts.long().cumsum(0) - 1, starts.nonzero().squeeze(1)


def shares_prompts(model) -> bool:
    """Whether `_shared_prompt_hidden` reproduces this model's forward exactly (the check of
    lmmixup.kernels, shared with the rollout engine). Not under FSDP2: its hooks run on each
    layer's forward(), which the shared-prompt path does not call (lmmixup/dist/strategy.py)."""
    # lazy: torch.distributed.fsdp (~0.7 s) loads at the first log-prob, not when train.py
    # imports lmmixup.step (a refused config never pays it)
    from torch.distributed.fsdp import FSDPModule

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", [])
    if len(layers) and isinstance(layers[0], FSDPModule):
        return False
    return unsupported_reason(model) is None


def _shared_prompt_hidden(model, prompt_ids, prompt_mask, owner, completion_ids):
    """The decoder over U unique prompts and N completions, each prompt computed ONCE.

    prompt_ids, prompt_mask: (U, P) left-padded unique prompts; owner: (N,) prompt of each
    completion row; completion_ids: (N, T). Completion queries attend to their prompt's keys
    (index_select, whose backward sums the G rows' gradients) and causally to their own. The
    values and gradients are those of running every row's prompt+completion separately, with
    U*P + N*T token rows instead of N*(P+T). Returns the final-normed hidden states that
    predict the completion tokens: (N, T, hidden)."""
    backbone = model.get_decoder()
    cfg = model.config
    u, p = prompt_ids.shape
    n, t = completion_ids.shape
    first_attn = backbone.layers[0].self_attn
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, first_attn.head_dim
    rep, scale, dev = hq // hkv, first_attn.scaling, prompt_ids.device

    valid = prompt_mask.bool()  # (U, P) real prompt keys
    p_pos = position_ids_from_mask(prompt_mask)  # (U, P)
    c_pos = prompt_mask.long().sum(1)[owner][:, None] + torch.arange(t, device=dev)  # (N, T)
    causal_p = torch.ones(p, p, dtype=torch.bool, device=dev).tril()  # (P, P)
    # a padded prompt query sees itself too, so no softmax row is empty (its output is unused)
    p_mask = (causal_p & valid[:, None, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)  # (U,1,P,P)
    causal_t = torch.ones(t, t, dtype=torch.bool, device=dev).tril()  # (T, T)
    c_mask = torch.cat([valid[owner][:, None, None, :].expand(n, 1, t, p),
                        causal_t.expand(n, 1, t, t)], dim=-1)  # (N, 1, T, P+T)

    x = torch.cat([backbone.embed_tokens(prompt_ids).flatten(0, 1),
                   backbone.embed_tokens(completion_ids).flatten(0, 1)])  # (U*P + N*T, hidden)
    cos_p, sin_p = backbone.rotary_emb(x, p_pos)  # (U, P, D)
    cos_c, sin_c = backbone.rotary_emb(x, c_pos)  # (N, T, D)
    sin_p, sin_c = signed_sin(sin_p), signed_sin(sin_c)  # the form kernels.rope takes
    cos_p, sin_p, cos_c, sin_c = (c[:, None] for c in (cos_p, sin_p, cos_c, sin_c))  # (., 1, L, D)

    def heads(y, rows, length, nh):  # (rows*length, nh*D) -> (rows, nh, length, D)
        return y.view(rows, length, nh, d).transpose(1, 2)

    def repeat(y):  # (R, Hkv, L, D) -> (R, Hq, L, D), HF's repeat_kv
        r, _, length, _ = y.shape
        return y[:, :, None].expand(r, hkv, rep, length, d).reshape(r, hq, length, d)

    def layer_fn(layer, x):
        sa = layer.self_attn
        h = layer.input_layernorm(x)  # (U*P + N*T, hidden)
        q, k, v = linear(h, sa.q_proj), linear(h, sa.k_proj), linear(h, sa.v_proj)
        qp, qc = heads(q[:u * p], u, p, hq), heads(q[u * p:], n, t, hq)  # (U,Hq,P,D), (N,Hq,T,D)
        kp, kc = heads(k[:u * p], u, p, hkv), heads(k[u * p:], n, t, hkv)  # (U,Hkv,P,D), (N,Hkv,T,D)
        vp, vc = heads(v[:u * p], u, p, hkv), heads(v[u * p:], n, t, hkv)
        qp, kp = rope(qp, cos_p, sin_p), rope(kp, cos_p, sin_p)
        qc, kc = rope(qc, cos_c, sin_c), rope(kc, cos_c, sin_c)
        op = F.scaled_dot_product_attention(qp, repeat(kp), repeat(vp), attn_mask=p_mask,
                                            scale=scale)  # (U, Hq, P, D)
        k_all = torch.cat([kp.index_select(0, owner), kc], dim=2)  # (N, Hkv, P+T, D)
        v_all = torch.cat([vp.index_select(0, owner), vc], dim=2)  # (N, Hkv, P+T, D)
        oc = F.scaled_dot_product_attention(qc, repeat(k_all), repeat(v_all), attn_mask=c_mask,
                                            scale=scale)  # (N, Hq, T, D)
        o = torch.cat([op.transpose(1, 2).reshape(u * p, hq * d),
                       oc.transpose(1, 2).reshape(n * t, hq * d)])  # (U*P + N*T, Hq*D)
        x = x + linear(o, sa.o_proj)
        mlp, h = layer.mlp, layer.post_attention_layernorm(x)  # Llama/Qwen2 MLP, spelled out
        return x + linear(mlp.act_fn(linear(h, mlp.gate_proj)) * linear(h, mlp.up_proj), mlp.down_proj)

    ckpt = getattr(model, "is_gradient_checkpointing", False) and torch.is_grad_enabled()
    for layer in backbone.layers:
        x = checkpoint(layer_fn, layer, x, use_reentrant=False) if ckpt else layer_fn(layer, x)
    # position P-1 of the prompt predicts completion token 0; completion token j predicts j+1
    last = x[:u * p].view(u, p, -1)[:, -1].index_select(0, owner)  # (N, hidden)
    rest = x[u * p:].view(n, t, -1)[:, :-1]  # (N, T-1, hidden)
    return backbone.norm(torch.cat([last[:, None], rest], dim=1))  # (N, T, hidden)


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

    Rows in group order repeat their prompt G times; for Llama/Qwen2 models each distinct
    prompt then runs through the decoder once (`_shared_prompt_hidden`), which for SmolLM2 at
    P ~ 40, T = 64, G = 4 cuts the decoder's token rows by ~30%, in forward and backward.
    """
    n, p = prompt_ids.shape
    t = completion_ids.shape[1]
    groups = _prompt_groups(prompt_ids, prompt_mask) if shares_prompts(model) else None
    if groups is not None:
        owner, first = groups
        hidden = _shared_prompt_hidden(model, prompt_ids[first], prompt_mask[first], owner,
                                       completion_ids).reshape(n * t, -1)  # (N*T, H)
    else:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
        # Completion tokens after EOS are padding but stay "attended": they are masked out of
        # the loss, and causal attention means they never influence earlier positions.
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
