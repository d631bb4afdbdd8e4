"""Which CPU GEMM kernel the model forwards use, chosen by measuring it on this machine.

Our decode loop and training forward can multiply through oneDNN (`torch.ops.mkldnn`) or through
torch's default CPU GEMM (MKL on x86). Which is faster depends on the CPU: on the AMD EPYC of
2026-11 oneDNN won by 1.1-2.4x, on an Intel Xeon MKL was as fast (docs/LOG.md, 2026-12-02). So a
short probe (~0.3 s) times both at the two shapes that matter, a decode GEMM (M = 16 rows) and
a training forward GEMM (M = 512), and the faster one is used. The result is cached per CPU
model and torch version in ~/.cache/lmmixup/ (written atomically), so every process on a
machine, a run and its resume included, makes the same choice; delete the file to re-probe.
Both kernels compute the same products up to float rounding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

KERNELS = ("onednn", "mkl")


@dataclass(frozen=True)
class KernelChoice:
    cpu_model: str
    torch_version: str
    decode_gemm: str  # onednn | mkl: the engine's decode-step GEMMs (prepacked when onednn)
    training_gemm: str  # onednn | mkl: the forward GEMMs of the training log-probs
    decode_ms: dict  # kernel -> median ms of the probe's decode GEMM
    training_ms: dict  # kernel -> median ms of the probe's training GEMM


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _probe_shape(rows: int, reps: int) -> dict:
    """Median ms of y = x W^T for SmolLM2's MLP up-projection shape (576 -> 1536)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 576, generator=g)
    w = torch.randn(1536, 576, generator=g)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    onednn_w = packed if rows <= 64 else w  # decode prepacks; training multiplies fresh weights
    return {
        "onednn": _median_ms(lambda: torch.ops.mkldnn._linear_pointwise(x, onednn_w, None, "none",
                                                                          [], ""), reps),
        "mkl": _median_ms(lambda: F.linear(x, w), reps),
    }


def probe() -> KernelChoice:
    decode = _probe_shape(16, 15)
    training = _probe_shape(512, 5)
    return KernelChoice(cpu_model=cpu_model(), torch_version=torch.__version__,
                        decode_gemm=min(KERNELS, key=decode.get),
                        training_gemm=min(KERNELS, key=training.get),
                        decode_ms=decode, training_ms=training)


def _cache_file() -> Path:
    key = hashlib.sha256(f"{cpu_model()}|{torch.__version__}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmmixup"
    return root / f"kernels-{key}.json"


@functools.lru_cache(maxsize=1)
def current_choice() -> KernelChoice:
    """This machine's choice: from the cache, else probed now, cached and printed once."""
    if not torch.backends.mkldnn.is_available():
        return KernelChoice(cpu_model(), torch.__version__, "mkl", "mkl", {}, {})
    path = _cache_file()
    try:
        return KernelChoice(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    choice = probe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(choice), f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: probe again next time
    print(f"kernels: {choice.cpu_model}, torch {choice.torch_version}: decode GEMM "
          f"{choice.decode_gemm} ({_fmt(choice.decode_ms)}), training GEMM "
          f"{choice.training_gemm} ({_fmt(choice.training_ms)}); cached in {path}", file=sys.stderr)
    return choice


def _fmt(ms: dict) -> str:
    return ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
