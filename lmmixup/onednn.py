"""Whether torch's private oneDNN ops, which our CPU GEMM kernels call, still work.

`lmmixup/kernels.py`, `lmmixup/engine.py` and `lmmixup/kernel_choice.py` multiply through
`torch.ops.mkldnn._linear_pointwise` (optionally on a weight prepacked by
`_reorder_linear_weight`, optionally fused with silu, `* other` or `+ other`) because on some
CPUs it beats F.linear (docs/LOG.md, 2026-12-02). These ops are private: torch may rename them,
change their arguments or drop them in any release. So before the first use, `unusable()` runs
each call we make once on a tiny product and compares it with the public path (F.linear and the
same element-wise op). If an op is missing, raises (its signature changed) or returns another
product, every GEMM takes the public path instead: one warning says why, and the kernel choice
that `train.py` prints at start says so too (`kernel_choice.describe_precision`). The public path
computes the same products up to float rounding, only slower on the CPUs where oneDNN won.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

NO_ONEDNN = "this torch build has no oneDNN"
"""the reason when torch was built without oneDNN: expected on such builds, so no warning"""


def _check() -> Optional[str]:
    """None when every private call we make gives the public path's product, else which fails."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g)  # (M, K)
    w = torch.randn(6, 8, generator=g)  # (N, K)
    b = torch.randn(6, generator=g)  # (N,)
    other = torch.randn(4, 6, generator=g)  # (M, N)
    ref = F.linear(x, w, b)  # (M, N)
    ops = torch.ops.mkldnn
    packed = ops._reorder_linear_weight(w, 4)  # (N, K) in oneDNN's blocked layout
    calls = {
        "_linear_pointwise(x, w, b, 'none')": (
            lambda: ops._linear_pointwise(x, w, b, "none", [], ""), ref),
        "_linear_pointwise on a _reorder_linear_weight weight": (
            lambda: ops._linear_pointwise(x, packed, b, "none", [], ""), ref),
        "_linear_pointwise(..., 'swish')": (
            lambda: ops._linear_pointwise(x, packed, b, "swish", [], ""), F.silu(ref)),
        "_linear_pointwise.binary(..., 'mul')": (
            lambda: ops._linear_pointwise.binary(x, other, packed, b, "mul"), ref * other),
        "_linear_pointwise.binary(..., 'add')": (
            lambda: ops._linear_pointwise.binary(x, other, packed, b, "add"), ref + other),
    }
    for name, (call, want) in calls.items():
        got = call()
        # fp32 products of 8 terms: a different summation order moves them by ~1e-6
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"torch.ops.mkldnn.{name} no longer gives x W^T + b"
    ops._is_mkldnn_bf16_supported()  # the engine's bf16 sampler asks this; it must exist
    return None


@functools.lru_cache(maxsize=1)
def unusable() -> Optional[str]:
    """None when our kernels may call torch's private oneDNN ops, else why not (one line).
    Checked once per process; a failure warns once."""
    if not torch.backends.mkldnn.is_available():
        return NO_ONEDNN
    try:
        reason = _check()
    except Exception as err:  # noqa: BLE001 - any failure of a private op means: don't use it
        first = (str(err).strip().splitlines() or [""])[0][:200]
        reason = f"a private oneDNN op failed ({type(err).__name__}: {first})"
    if reason is not None:
        warnings.warn(f"lmmixup: {reason} in torch {torch.__version__}: every GEMM falls back "
                      "to F.linear (same products, maybe slower)", RuntimeWarning, stacklevel=2)
    return reason


def usable() -> bool:
    return unusable() is None


def bf16_supported() -> bool:
    """oneDNN's bf16 GEMMs are there and work: the engine's prepacked bf16 sampler may run."""
    return usable() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
