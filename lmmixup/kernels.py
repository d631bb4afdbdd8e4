"""The pieces of the Llama/Qwen2 forward that our two re-implementations share.

`lmmixup/engine.py` (the decode loop of the rollouts) and `lmmixup/logprobs.py` (the
shared-prompt decoder of training) each run the transformer themselves instead of calling HF's
module forward. Both need the same three things, defined once here:

  * `unsupported_reason(model, max_len)`: the one check of which models they reproduce exactly
    (HF Llama / Qwen2 causal LMs, SiLU MLP, no dynamic RoPE, no sliding window reached, no
    attention dropout while training); anything else takes HF's own path.
  * `rope`: the rotary embedding in HF's rotate-half convention.
  * linear kernels: on a CPU in fp32, oneDNN (`torch.ops.mkldnn`, private ops, checked once by
    `lmmixup.onednn.unusable()`: F.linear if torch changed them) with an optional fused
    element-wise op; elsewhere F.linear. They pick
    kernels, not an algorithm: every path computes the same products up to float rounding.
    Which kernel is faster depends on the CPU (oneDNN vs MKL, see docs/LOG.md), so the choice
    is made by `lmmixup.kernels.use_onednn()`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lmmixup import kernel_choice, onednn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model, max_len: Optional[int] = None) -> Optional[str]:
    """None when our forward reproduces `model`'s exactly, else why not (one line).

    max_len: the longest prompt+completion the caller will run; a Qwen2 sliding window only
    matters once it is reached (None: any configured window counts)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return (f"supports {', '.join(SUPPORTED_MODEL_TYPES)} causal LMs, not model_type={kind!r} "
                f"({type(model).__name__})")
    if getattr(cfg, "use_sliding_window", False) and "sliding_attention" in (
            getattr(cfg, "layer_types", None) or []):
        window = getattr(cfg, "sliding_window", None)
        if max_len is None or (window is not None and window < max_len):
            return (f"this Qwen2 model uses sliding-window attention (window {window} < "
                    f"prompt+completion length {max_len})")
    # transformers 5 keeps RoPE settings in `rope_parameters`, 4.x in `rope_scaling`
    rope_cfg = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope_cfg.get("rope_type", rope_cfg.get("type")) == "dynamic":
        return "dynamic RoPE scaling (frequencies that depend on the sequence length) is not supported"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act={cfg.hidden_act!r} is not supported"
    if model.training and getattr(cfg, "attention_dropout", 0.0) > 0:
        return "attention dropout in training mode is not supported"
    return None


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """(..., D) HF sin table -> (-sin_1, sin_2), the form `rope` takes (computed once per table)."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in HF's rotate-half convention, x * cos + rotate_half(x) * sin, with
    rotate_half(x) = (-x2, x1) written as flip(x1, x2) * (-sin1, sin2): the same products, so
    the same bits as HF. x (..., D); cos, sin_signed broadcast to x."""
    d = x.shape[-1]
    swapped = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)  # (..., D) = (x2, x1)
    return x * cos + swapped * sin_signed


# ----------------------------------------------------------------------------- linear kernels

def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x W^T runs through oneDNN: CPU, fp32, 2-D, not under autocast (the private oneDNN
    op has no autocast rule, so it would run fp32 there: module(x) lets autocast pick bf16), this
    torch's private oneDNN ops pass their check (lmmixup.onednn), and the kernel choice of this
    CPU (lmmixup.kernel_choice) says oneDNN beats MKL."""
    if not (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() == 2
            and not torch.is_autocast_enabled("cpu") and onednn.usable()):
        return False
    return kernel_choice.current_choice().training_gemm == "onednn"


def forward_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x (M, in) @ weight (out, in)^T + bias, no autograd, on the chosen CPU kernel."""
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class OneDnnForwardLinear(torch.autograd.Function):
    """y = x W^T + b with the forward in `forward_gemm`; the backward products stay on
    torch.mm (MKL), which measured as fast or faster for them. x (M, in), W (out, in), b (out,)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return forward_gemm(x, weight, bias)  # (M, out)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad @ weight if need_x else None  # (M, in)
        grad_w = grad.t() @ x if need_w else None  # (out, in)
        grad_b = grad.sum(dim=0) if ctx.has_bias and need_b else None  # (out,)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """module(x) for a plain nn.Linear, with the forward GEMM on the chosen kernel; anything
    else (another device, dtype, a wrapped or quantised layer) calls the module."""
    if type(module) is not torch.nn.Linear or not use_onednn(x, module.weight):
        return module(x)
    if torch.is_grad_enabled():
        return OneDnnForwardLinear.apply(x, module.weight, module.bias)
    return forward_gemm(x, module.weight, module.bias)


class PackedLinear:
    """Inference-only y = x W^T + b, optionally fused with silu(y), y * other or y + other.

    The weight is prepared once per rollout call. On a CPU where oneDNN wins it is reordered
    into oneDNN's blocked layout and the element-wise op runs inside the GEMM (a decode step
    multiplies only N rows by each weight, and every separate element-wise kernel costs a
    launch per layer). Elsewhere it is F.linear followed by the op. `packed` is asked for only
    where `lmmixup.onednn.usable()` (engine._prepared)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], rows_hint: int,
                 packed: bool):
        self.bias = bias
        self.packed = packed
        self.weight = (torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint) if packed
                       else weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "swish", [], "")
        return F.silu(F.linear(x, self.weight, self.bias))

    def mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")
        return F.linear(x, self.weight, self.bias) * other

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "add")
        return F.linear(x, self.weight, self.bias) + other
