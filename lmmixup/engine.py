"""The static-KV-cache rollout engine (`rollout.engine=static`), for HF Llama and Qwen2 models.

It reads the weights of a transformers `LlamaForCausalLM` / `Qwen2ForCausalLM` (embeddings,
each layer's RMSNorms, q/k/v/o projections (Qwen2's q/k/v biases too), MLP, the model's own
rotary-embedding module, the final norm and the lm_head, tied or not) and runs its own decode
loop instead of `model.generate`:

  * One KV-cache tensor, (layers, 2, N, Hkv, P+T, D), allocated (zeroed) once per call. The B
    prompts are prefilled ONCE (B rows, not B*G) and their keys/values are broadcast into the G
    cache rows of each group, so G completions share one prefill.
  * The decode loop writes in place: token column t of the preallocated (N, T) id / log-prob
    buffers, cache column P+t, key-mask column P+t. Every sequence is in lock-step (prompts are
    left-padded, so completion token t always lives in cache column P+t), which keeps the step
    a fixed-shape function of tensors (cache column and positions are tensors, not Python ints).
  * Attention reads the cache up to the next multiple of `KV_BUCKET` columns only; the unused
    tail is masked. At most (P+T)/KV_BUCKET distinct shapes, so torch.compile / CUDA graphs see
    a handful of static shapes. Grouped-query attention never repeats the cache: the H query
    heads are viewed as (Hkv, H/Hkv) "queries" of their shared KV head.
  * Weights are prepared once per call (`PackedLinear`): q|k|v fused into one GEMM, each RMSNorm's
    weight folded into the matmul after it, and on CPU oneDNN's prepacked layout with the
    silu / multiply / residual add fused into the GEMM (`lmmixup.kernels`). Prepared copies
    live only during the call (the policy changes every optimizer step) and are cast to `dtype`
    (`precision.rollout`, lmmixup/precision.py): with bf16 the sampler runs a bf16 copy of the
    policy re-cast at every call, activations and KV cache in bf16 too, while the policy and
    its optimizer keep their precision. The sampled token's log-prob is computed in fp32.
  * Sampling happens on the device: logits / tau, then top-k, then top-p (nucleus; HF's order),
    then one uniform per row through the CDF (`_draw`), drawn from `generator` or, by default,
    the global torch RNG, which the trainer seeds every step for an exact resume.
    `greedy=True` (or top_k=1) takes the argmax instead (HF `do_sample=False`).
  * The log-prob of each sampled token under log_softmax(logits / tau) of the *full*
    distribution (before top-k/top-p) is recorded, so at mu = 1 the old-policy log-probs need
    no extra forward pass.
  * A row stops after its first stop id (the stop token is kept, later columns are pad with
    log-prob 0) or at T tokens; the loop ends as soon as every row is done. With `compact=True`
    (default) finished rows are dropped from the cache whenever at least a quarter of the live
    rows have finished, so they stop costing compute (at most ~log_{4/3} N re-allocations).
    `compact=False` keeps every shape static, for CUDA graphs.
  * Left padding follows HF exactly: positions are cumsum(mask) - 1, padded keys are masked.
    A padded *query* also attends to itself so that no softmax row is empty (a NaN there would
    leak into real rows through 0 * NaN); padded rows' outputs are never used.

The algorithm has no device branches: the same tensors and ops run on CPU and CUDA; only
`PackedLinear` picks a CPU kernel. Tests: tests/test_engine.py (greedy tokens equal HF generate's,
recorded log-probs equal a fresh forward, a chi-square test of the sampled frequencies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from lmmixup.errors import LmmixupError
from lmmixup import onednn
from lmmixup.kernel_choice import current_choice
from lmmixup.kernels import PackedLinear, rope, signed_sin, unsupported_reason
from lmmixup.rollout_batch import Rollout, RolloutConfig, completion_mask_from_stops, repeat_for_group

KV_BUCKET = 64
"""attention reads the KV cache up to the next multiple of this many columns"""
COMPACT_FRACTION = 0.25
"""compact the live rows once at least this fraction of them has finished"""


def _prepared(mods: Sequence[torch.nn.Module], rows_hint: int, dtype: torch.dtype,
              norm: Optional[torch.Tensor] = None) -> PackedLinear:
    """One GEMM for projections that read the same input (q|k|v). A preceding RMSNorm's weight
    is folded into the columns: (w * x_hat) W^T = x_hat (W diag(w))^T, one kernel fewer."""
    weight = (mods[0].weight if len(mods) == 1 else torch.cat([m.weight for m in mods])).detach()  # (out, in)
    if norm is not None:
        weight = weight * norm.detach()[None, :]
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0])
                          for m in mods]).detach()  # (sum out,)
    # folded in the policy's precision, then cast once: the sampler's copy of the weights
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    # oneDNN's private ops only where they pass their check (lmmixup.onednn), else F.linear
    on_cpu = weight.device.type == "cpu" and onednn.usable()
    packed = on_cpu and (
        (dtype == torch.float32 and current_choice().decode_gemm == "onednn")
        or (dtype == torch.bfloat16 and onednn.bf16_supported()))
    return PackedLinear(weight, bias, rows_hint, packed)


@dataclass
class _Layer:
    eps: float
    qkv: PackedLinear  # hidden -> (Hq + 2 Hkv) * D, input RMSNorm weight folded in
    o: PackedLinear  # Hq * D -> hidden, + residual
    gate: PackedLinear  # hidden -> intermediate, silu, post-attention RMSNorm weight folded in
    up: PackedLinear  # hidden -> intermediate, * silu(gate), norm weight folded in
    down: PackedLinear  # intermediate -> hidden, + residual


@dataclass
class _Decoder:
    """The weights of a HF causal LM, read off the model object and prepared for decoding."""

    embed: torch.Tensor  # (V, hidden)
    layers: List[_Layer]
    eps: float  # final RMSNorm (its weight is folded into lm_head)
    lm_head: PackedLinear  # hidden -> V
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float


def _check_supported(model, max_len: int) -> None:
    """Refuse architectures whose forward we do not reproduce exactly."""
    reason = unsupported_reason(model, max_len)
    if reason is not None:
        raise LmmixupError(f"rollout.engine=static: {reason}; use rollout.engine=hf for this model")


def _decoder_of(model, rows_hint: int, dtype: torch.dtype) -> _Decoder:
    backbone = model.get_decoder()
    layers = []
    for layer in backbone.layers:
        sa, mlp = layer.self_attn, layer.mlp
        ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        layers.append(_Layer(
            eps=layer.input_layernorm.variance_epsilon,
            qkv=_prepared([sa.q_proj, sa.k_proj, sa.v_proj], rows_hint, dtype, ln1),
            o=_prepared([sa.o_proj], rows_hint, dtype),
            gate=_prepared([mlp.gate_proj], rows_hint, dtype, ln2),
            up=_prepared([mlp.up_proj], rows_hint, dtype, ln2),
            down=_prepared([mlp.down_proj], rows_hint, dtype),
        ))
    attn = backbone.layers[0].self_attn
    return _Decoder(
        embed=backbone.embed_tokens.weight.detach().to(dtype),
        layers=layers,
        eps=backbone.norm.variance_epsilon,
        lm_head=_prepared([model.get_output_embeddings()], rows_hint, dtype, backbone.norm.weight),
        n_heads=model.config.num_attention_heads,
        n_kv_heads=model.config.num_key_value_heads,
        head_dim=attn.head_dim,
        scaling=attn.scaling,
    )


def _normed(x: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm without its weight (folded into the next matmul): normalise in fp32."""
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _mlp_residual(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    """x + down(silu(gate(norm x)) * up(norm x)), x (R, hidden), three fused GEMMs."""
    h = _normed(x, layer.eps)  # (R, hidden)
    return layer.down.add(layer.up.mul(h, layer.gate.silu(h)), x)  # (R, hidden)


def _prefill(dec: _Decoder, ids, mask, cos_tab, sin_tab, cache, group_size: int) -> torch.Tensor:
    """Run the B prompts once, writing each prompt's K/V into its G cache rows.

    ids, mask: (B, P). cache: (layers, 2, B*G, Hkv, L, D). Returns the final-normed hidden state
    of the last prompt position (B, hidden), before the (folded) final norm weight."""
    b, p = ids.shape
    hq, hkv, d = dec.n_heads, dec.n_kv_heads, dec.head_dim
    pos = mask.long().cumsum(-1) - 1  # (B, P), HF's position ids for left padding
    pos = pos.masked_fill(mask == 0, 1)  # HF's value for pads (their keys are masked anyway)
    cos, sin = cos_tab[pos][:, :, None], sin_tab[pos][:, :, None]  # (B, P, 1, D)
    causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril()  # (P, P)
    eye = torch.eye(p, dtype=torch.bool, device=ids.device)  # (P, P)
    attn_mask = (causal & mask.bool()[:, None, None, :]) | eye  # (B, 1, P, P)
    rep = hq // hkv
    x = F.embedding(ids.reshape(-1), dec.embed)  # (B*P, hidden)
    for li, layer in enumerate(dec.layers):
        qkv = layer.qkv(_normed(x, layer.eps)).view(b, p, hq + 2 * hkv, d)
        qk = rope(qkv[:, :, : hq + hkv], cos, sin)  # (B, P, Hq + Hkv, D)
        q = qk[:, :, :hq].transpose(1, 2)  # (B, Hq, P, D)
        k = qk[:, :, hq:].transpose(1, 2)  # (B, Hkv, P, D)
        v = qkv[:, :, hq + hkv:].transpose(1, 2)  # (B, Hkv, P, D)
        # broadcast each prompt's K/V into its G rows: (B, 1, Hkv, P, D) -> (B, G, Hkv, P, D)
        cache[li, 0].unflatten(0, (b, group_size))[:, :, :, :p] = k[:, None]
        cache[li, 1].unflatten(0, (b, group_size))[:, :, :, :p] = v[:, None]
        k = k[:, :, None].expand(b, hkv, rep, p, d).reshape(b, hq, p, d)  # (B, Hq, P, D)
        v = v[:, :, None].expand(b, hkv, rep, p, d).reshape(b, hq, p, d)  # (B, Hq, P, D)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=dec.scaling)  # (B, Hq, P, D)
        x = layer.o.add(o.transpose(1, 2).reshape(b * p, hq * d), x)  # (B*P, hidden)
        x = _mlp_residual(layer, x)  # (B*P, hidden)
    return _normed(x.view(b, p, -1)[:, -1], dec.eps)  # (B, hidden)


def _decode_attention(q, k, v, key_bias, scaling: float) -> torch.Tensor:
    """One query position per row against its cached keys, GQA without repeating the cache.

    q (R, Hkv, Hq/Hkv, D): the query heads of one KV head act as its queries; k, v (R, Hkv, K, D);
    key_bias (R*Hkv, 1, K): 0 for real keys, -inf for masked ones. Returns (R, Hkv, Hq/Hkv, D).
    On CPU two batched GEMMs and a softmax beat SDPA's flash kernel, which is tuned for long
    query blocks (timings in docs/LOG.md, 2026-11).
    Elsewhere SDPA's fused kernels win. The same softmax(q k^T * scale + bias) v either way."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias.view(q.shape[0], q.shape[1], 1, -1),
                                              scale=scaling)
    r, hkv, rep, d = q.shape
    scores = torch.baddbmm(key_bias, q.reshape(r * hkv, rep, d), k.flatten(0, 1).transpose(1, 2),
                           alpha=scaling)  # (R*Hkv, rep, K)
    return torch.bmm(scores.softmax(dim=-1), v.flatten(0, 1)).view(r, hkv, rep, d)


def _decode_step(dec: _Decoder, tok, pos, col, cache, key_mask, cos_tab, sin_tab, kv_len: int):
    """One new token per row. tok, pos: (R,) ; col: (1,) cache column of this token ;
    cache: (layers, 2, R, Hkv, L, D) ; key_mask: (R, L) bool, True where a key is real.
    Returns the final-normed hidden state (R, hidden), before the (folded) norm weight."""
    r = tok.shape[0]
    hq, hkv, d = dec.n_heads, dec.n_kv_heads, dec.head_dim
    cos, sin = cos_tab[pos][:, None], sin_tab[pos][:, None]  # (R, 1, D)
    # the additive key mask, built once per step and shared by every layer
    key_bias = torch.zeros(r, 1, kv_len, dtype=cache.dtype, device=cache.device).masked_fill_(
        ~key_mask[:, None, :kv_len], float("-inf")).repeat_interleave(hkv, dim=0)  # (R*Hkv, 1, K)
    x = F.embedding(tok, dec.embed)  # (R, hidden)
    for li, layer in enumerate(dec.layers):
        qkv = layer.qkv(_normed(x, layer.eps)).view(r, hq + 2 * hkv, d)
        qk = rope(qkv[:, : hq + hkv], cos, sin)  # (R, Hq + Hkv, D)
        k_cache, v_cache = cache[li, 0], cache[li, 1]  # (R, Hkv, L, D) each
        k_cache.index_copy_(2, col, qk[:, hq:, None])
        v_cache.index_copy_(2, col, qkv[:, hq + hkv:, None])
        o = _decode_attention(qk[:, :hq].view(r, hkv, hq // hkv, d), k_cache[:, :, :kv_len],
                              v_cache[:, :, :kv_len], key_bias, dec.scaling)  # (R, Hkv, Hq/Hkv, D)
        x = layer.o.add(o.reshape(r, hq * d), x)  # (R, hidden)
        x = _mlp_residual(layer, x)  # (R, hidden)
    return _normed(x, dec.eps)  # (R, hidden)


def _filter_top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """scores (R, V) = logits / tau -> the same with filtered tokens at -inf (HF's order)."""
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (R, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # (R, V)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (R, V)
        # drop a token when the more likely tokens before it already hold top_p of the mass;
        # the most likely token always stays
        drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p  # (R, V)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (R, V)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _draw(weights: torch.Tensor, generator, u: Optional[torch.Tensor] = None):
    """One token per row from unnormalised probabilities weights (R, V) >= 0, by inverting the
    CDF with one uniform per row (u (R, 1) when given, else drawn from `generator`).
    Returns (token (R,), total weight (R, 1)).

    `torch.multinomial` (what HF uses) draws V exponentials per row on CPU, a large part of a
    decode step at V = 49,152 (docs/LOG.md); one uniform per row is enough. A token of weight 0
    is never drawn: the first index whose CDF exceeds u has a CDF strictly above its
    predecessor's."""
    cdf = weights.cumsum(dim=-1)  # (R, V)
    total = cdf[:, -1:].contiguous()  # (R, 1)
    if u is None:
        u = torch.rand(total.shape, generator=generator, device=weights.device, dtype=cdf.dtype)
    u = u.to(cdf.dtype) * total  # (R, 1)
    tok = torch.searchsorted(cdf, u, right=True)  # (R, 1), first index with cdf > u
    # u * total can round up to total itself; fall back to the last token with mass
    last = torch.searchsorted(cdf, total, right=False)  # (R, 1)
    return torch.minimum(tok, last).squeeze(1), total  # (R,), (R, 1)


def _sample(logits: torch.Tensor, cfg: RolloutConfig, greedy: bool, generator,
            u: Optional[torch.Tensor] = None):
    """logits (R, V) -> token (R,), log pi(token) (R,) under log_softmax(logits / tau).
    u (R, 1): this step's uniforms, or None to draw them from `generator`."""
    scores = logits.float() / cfg.temperature  # (R, V)
    if greedy or cfg.top_k == 1:
        tok = scores.argmax(dim=-1)  # (R,)
    elif cfg.top_k > 0 or cfg.top_p < 1.0:
        tok, _ = _draw(_filter_top_k_top_p(scores, cfg.top_k, cfg.top_p).softmax(dim=-1), generator, u)
    else:
        # Unfiltered (the paper's setting): exp(s - max) is softmax's numerator, and the sum the
        # CDF ends with gives log Z = max + log(sum), so no separate logsumexp pass.
        top = scores.amax(dim=-1, keepdim=True)  # (R, 1)
        tok, total = _draw((scores - top).exp_(), generator, u)  # (R,), (R, 1)
        logp = scores.gather(1, tok[:, None]) - top - total.log()  # (R, 1)
        return tok, logp.squeeze(1)
    logp = scores.gather(1, tok[:, None]).squeeze(1) - torch.logsumexp(scores, dim=-1)  # (R,)
    return tok, logp


@torch.no_grad()
def static_generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: RolloutConfig,
                    group_size: int, stop_ids: Sequence[int], pad_id: int, *, greedy: bool = False,
                    compact: bool = True, generator: Optional[torch.Generator] = None,
                    uniforms: Optional[torch.Tensor] = None,
                    stop_sequences: Sequence[Sequence[int]] = (),
                    dtype: torch.dtype = torch.float32) -> Rollout:
    """Sample G completions for each of B left-padded prompts with a static KV cache.

    prompt_ids, prompt_mask: (B, P). Same contract as `rollout.hf_generate`, plus:
      greedy     argmax decoding (HF do_sample=False), also implied by cfg.top_k == 1;
                 log-probs are still those of log_softmax(logits / tau)
      compact    drop finished rows from the cache as they accumulate (False: static shapes)
      generator  torch.Generator on the model's device; None draws from the global torch RNG
      uniforms   (N, T) the uniform of every (row, token) drawn ahead, e.g. one generator per
                 group (lmmixup/dist/shard.py); replaces `generator`
      stop_sequences  token-id sequences that also end a row once its last tokens equal one
                 (distill.py stops at `</answer>`, several tokens); the row keeps them, is
                 not truncated, and its mask ends with them
      dtype      precision of the sampler's copy of the weights (fp32 | bf16)
    An empty `stop_ids` never stops early: every row gets exactly cfg.max_new_tokens tokens.
    Returns a Rollout whose T is the number of decode steps run (<= cfg.max_new_tokens), with
    `rollout_logp` filled (0 after a row's stop token).
    """
    b, p = prompt_ids.shape
    g, t_max = group_size, cfg.max_new_tokens
    n, max_len = b * g, p + t_max
    if bool((prompt_mask.sum(dim=1) == 0).any()):
        raise LmmixupError("rollout: a prompt has no tokens (all-zero prompt_mask row)")
    _check_supported(model, max_len)
    dec = _decoder_of(model, n, dtype)
    device, dtype = prompt_ids.device, dec.embed.dtype

    # rotary table for every position the call can reach, from the model's own module: (L, D)
    positions = torch.arange(max_len, device=device)[None]  # (1, L)
    cos_tab, sin_tab = model.get_decoder().rotary_emb(torch.empty(0, device=device, dtype=dtype), positions)
    cos_tab, sin_tab = cos_tab[0], sin_tab[0]  # (L, D)
    sin_tab = signed_sin(sin_tab)  # (L, D), see kernels.rope

    cache = torch.zeros(len(dec.layers), 2, n, dec.n_kv_heads, max_len, dec.head_dim,
                        device=device, dtype=dtype)  # (layers, 2, N, Hkv, L, D)
    key_mask = torch.zeros(n, max_len, dtype=torch.bool, device=device)  # (N, L)
    key_mask[:, :p] = repeat_for_group(prompt_mask.bool(), g)
    out_ids = torch.full((n, t_max), pad_id, dtype=torch.long, device=device)  # (N, T)
    out_logp = torch.zeros(n, t_max, dtype=torch.float32, device=device)  # (N, T)
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)  # (S,)
    sequences = [torch.as_tensor(list(q), dtype=torch.long, device=device) for q in stop_sequences]
    seq_end = torch.full((n,), -1, dtype=torch.long, device=device)  # (N,) step a sequence ended
    if uniforms is not None:
        uniforms = uniforms.to(device)  # (N, T)

    hidden = _prefill(dec, prompt_ids, prompt_mask, cos_tab, sin_tab, cache, g)  # (B, hidden)
    logits = repeat_for_group(dec.lm_head(hidden), g)  # (N, V)

    rows = torch.arange(n, device=device)  # (R,) output row of each live cache row
    pos = repeat_for_group(prompt_mask.long().sum(dim=1), g)  # (R,) position of the next token
    done = torch.zeros(n, dtype=torch.bool, device=device)  # (R,)
    col = torch.full((1,), p, dtype=torch.long, device=device)  # cache column of the next token
    steps = t_max
    for t in range(t_max):
        if t > 0:
            kv_len = min(max_len, -(-(p + t) // KV_BUCKET) * KV_BUCKET)
            hidden = _decode_step(dec, tok, pos, col, cache, key_mask, cos_tab, sin_tab, kv_len)
            logits = dec.lm_head(hidden)  # (R, V)
            pos += 1
            col += 1
        u = None if uniforms is None else uniforms[rows, t][:, None]  # (R, 1)
        tok, logp = _sample(logits, cfg, greedy, generator, u)  # (R,), (R,)
        tok = tok.masked_fill(done, pad_id)
        out_ids[rows, t] = tok
        out_logp[rows, t] = logp.masked_fill(done, 0.0)
        done |= torch.isin(tok, stops)
        for q in sequences:  # (L,) each
            if t + 1 >= len(q):
                hit = (out_ids[rows, t + 1 - len(q):t + 1] == q).all(dim=1) & ~done  # (R,)
                seq_end[rows[hit]] = t
                done |= hit
        key_mask[:, p + t] = True  # token t is a key for every later step
        n_live = int((~done).sum())  # the loop's only host sync per step
        if n_live == 0:
            steps = t + 1
            break
        if compact and done.shape[0] - n_live >= COMPACT_FRACTION * done.shape[0]:
            keep = (~done).nonzero().squeeze(1)  # (R',)
            cache = cache.index_select(2, keep)
            key_mask, rows, pos = key_mask[keep], rows[keep], pos[keep]
            tok, done = tok[keep], done[keep]

    completion = out_ids[:, :steps]  # (N, T')
    completion_mask, truncated = completion_mask_from_stops(completion, stop_ids)
    if sequences:  # rows ended by a stop sequence: mask through its last token, not truncated
        ended = seq_end >= 0  # (N,)
        upto = torch.arange(steps, device=device)[None, :] <= seq_end[:, None]  # (N, T')
        completion_mask = torch.where(ended[:, None], upto.float(), completion_mask)
        truncated = truncated & ~ended
    return Rollout(
        prompt_ids=repeat_for_group(prompt_ids, g),
        prompt_mask=repeat_for_group(prompt_mask, g),
        completion_ids=completion,
        completion_mask=completion_mask,
        truncated=truncated,
        rollout_logp=out_logp[:, :steps],
    )

