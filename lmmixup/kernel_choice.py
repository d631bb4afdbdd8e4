"""Which CPU GEMM kernel and which precision the model forwards use, chosen by measuring them.

Our decode loop and training forward can multiply through oneDNN (`torch.ops.mkldnn`) or through
torch's default CPU GEMM (MKL on x86). Which is faster depends on the CPU: on the AMD EPYC of
2026-11 oneDNN won by 1.1-2.4x, on an Intel Xeon MKL was as fast (docs/LOG.md, 2026-12-02). So a
short probe (~0.3 s) times both at the two shapes that matter, a decode GEMM (M = 16 rows) and
a training forward GEMM (M = 512), and the faster one is used. The result is cached per CPU
model and torch version in ~/.cache/lmmixup/ (written atomically), so every process on a
machine, a run and its resume included, makes the same choice; delete the file to re-probe.
Both kernels compute the same products up to float rounding.

The same probe decides what `precision.train=auto` and `precision.rollout=auto` mean on this
CPU (lmmixup/precision.py). It times fp32 against bf16 GEMMs at SmolLM2-135M's shapes (K = 576
inputs; N = 1,536 for the MLP, 49,152 for the lm_head): training forwards at M = 256 and 1,024
rows and one lm_head chunk, decode steps at M = 16, each dtype through the kernel it would run
(fp32: the kernel chosen above; bf16 training: F.linear on a bf16 cast of the activations, what
torch.autocast runs; bf16 decode: oneDNN's prepacked bf16 GEMM, what the engine's bf16 sampler
runs). bf16 is chosen where its summed time is at least BF16_MIN_SPEEDUP times lower. Issue 22
measured plain bf16 GEMMs 2.7-4.7x faster at the training shapes on an Intel Xeon with AMX, and
~2x on a (shared) AMD EPYC with AVX512-BF16 but no AMX, where the probe chose bf16 for both uses
(1.47x, 1.51x; docs/LOG.md 2026-12-06). A CPU without bf16 units has no bf16 arithmetic to gain
from (its bf16 GEMMs convert to fp32 inside, or take slower generic kernels; not measured here),
so a CPU whose /proc/cpuinfo lists none of BF16_FLAGS keeps fp32 without timing bf16 at all. A
CPU that has no /proc/cpuinfo (not Linux) is measured like any other. Timings are the fastest of
a few calls, and the choice is printed with them when it is made (`describe_precision`).
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
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from lmmixup import onednn

KERNELS = ("onednn", "mkl")
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
"""/proc/cpuinfo flags of native bf16 arithmetic: Intel AMX tiles, AVX512-BF16 dot products
(Intel Cooper Lake and later, AMD Zen 4 and later), Arm's FEAT_BF16 (listed as `bf16`)"""
BF16_MIN_SPEEDUP = 1.3
"""bf16 is chosen only where fp32 takes at least this many times longer: a clear margin over the
probe's noise, since bf16 also costs accuracy (8 mantissa bits) and a sampler/trainer gap"""
TRAIN_SHAPES = ((256, 1536), (1024, 1536), (256, 49152))
"""(M rows, N outputs) of the training GEMMs timed, K = 576: MLP up-projections of a short and a
long micro-batch, and one 256-row chunk of the lm_head"""
DECODE_SHAPES = ((16, 1536), (16, 49152))
"""(M, N) of the decode GEMMs timed, K = 576: a 16-row step's MLP up-projection and lm_head"""


@dataclass(frozen=True)
class KernelChoice:
    cpu_model: str
    torch_version: str
    decode_gemm: str  # onednn | mkl: the engine's decode-step GEMMs (prepacked when onednn)
    training_gemm: str  # onednn | mkl: the forward GEMMs of the training log-probs
    decode_ms: dict  # kernel -> median ms of the probe's decode GEMM
    training_ms: dict  # kernel -> median ms of the probe's training GEMM
    bf16_flags: list  # the BF16_FLAGS /proc/cpuinfo lists; None: no /proc/cpuinfo to read
    train_precision: str  # fp32 | bf16: what precision.train=auto runs on this CPU
    rollout_precision: str  # fp32 | bf16: what precision.rollout=auto samples in on this CPU
    precision_ms: dict  # {"train"|"decode": {"fp32"|"bf16": summed median ms}}; {} = not timed


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags(cpuinfo: Optional[str] = None) -> Optional[List[str]]:
    """The BF16_FLAGS among the CPU's flags (x86 `flags`, Arm `Features`), in BF16_FLAGS order;
    None when there is no /proc/cpuinfo to read (the probe then measures bf16 anyway)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    found = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return [f for f in BF16_FLAGS if f in found]


def choose_precision(ms: Dict[str, float]) -> str:
    """{"fp32": ms, "bf16": ms} -> bf16 if fp32 takes >= BF16_MIN_SPEEDUP x as long, else fp32."""
    return "bf16" if ms["fp32"] >= BF16_MIN_SPEEDUP * ms["bf16"] else "fp32"


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


def _min_ms(fn, reps: int) -> float:
    """Fastest of `reps` timed calls, after a warm-up. Load from other processes only ever adds
    time, so on a shared machine the minimum is the better estimate of the kernel's own speed."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)


def _gemm_fn(x: torch.Tensor, w: torch.Tensor, kernel: str, packed: bool):
    """A call of y = x W^T, x (M, K), w (N, K): through oneDNN (prepacked for M rows if
    `packed`) or F.linear (MKL in fp32, oneDNN in bf16)."""
    if kernel == "mkl":
        return lambda: F.linear(x, w)
    wp = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0]) if packed else w
    return lambda: torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")


def _fp32_vs_bf16_ms(shapes, kernel: str, decode: bool, reps: int) -> Dict[str, float]:
    """Summed fastest ms over `shapes` of y = x W^T (K = 576) in fp32, through the fp32 kernel
    chosen for this use, and in bf16 the way that use runs it: decode, oneDNN's prepacked bf16
    GEMM on bf16 activations (the engine's bf16 sampler); training, F.linear on a bf16 copy of
    the activations, cast in the timed call as autocast does per op. The weight's cast is left
    out: autocast makes it once per forward, which a micro-batch's 1,000+ rows amortise."""
    g = torch.Generator().manual_seed(0)
    total = {"fp32": 0.0, "bf16": 0.0}
    for rows, out in shapes:
        x = torch.randn(rows, 576, generator=g)  # (M, K)
        w = torch.randn(out, 576, generator=g)  # (N, K)
        total["fp32"] += _min_ms(_gemm_fn(x, w, kernel, packed=decode), reps)
        wb = w.to(torch.bfloat16)  # (N, K)
        if decode:
            bf16 = _gemm_fn(x.to(torch.bfloat16), wb, "onednn", packed=True)
        else:
            def bf16(x=x, wb=wb):
                return F.linear(x.to(torch.bfloat16), wb)
        total["bf16"] += _min_ms(bf16, reps)
    return total


def probe() -> KernelChoice:
    decode = _probe_shape(16, 15)
    training = _probe_shape(512, 5)
    decode_gemm, training_gemm = min(KERNELS, key=decode.get), min(KERNELS, key=training.get)
    flags = cpu_bf16_flags()
    precision_ms: Dict[str, Dict[str, float]] = {}
    train_precision = rollout_precision = "fp32"
    # Without bf16 units bf16 is emulated and loses: no need to time it (issue 22). The decode
    # side needs oneDNN's bf16 GEMM, the engine's bf16 kernel.
    if (flags is None or flags) and onednn.bf16_supported():
        precision_ms = {"train": _fp32_vs_bf16_ms(TRAIN_SHAPES, training_gemm, False, 3),
                        "decode": _fp32_vs_bf16_ms(DECODE_SHAPES, decode_gemm, True, 7)}
        train_precision = choose_precision(precision_ms["train"])
        rollout_precision = choose_precision(precision_ms["decode"])
    return KernelChoice(cpu_model=cpu_model(), torch_version=torch.__version__,
                        decode_gemm=decode_gemm, training_gemm=training_gemm,
                        decode_ms=decode, training_ms=training, bf16_flags=flags,
                        train_precision=train_precision, rollout_precision=rollout_precision,
                        precision_ms=precision_ms)


def _cache_file() -> Path:
    key = hashlib.sha256(f"{cpu_model()}|{torch.__version__}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmmixup"
    # v2: the precision fields (issue 22); a v1 file of an older checkout is left alone
    return root / f"kernels-v2-{key}.json"


@functools.lru_cache(maxsize=1)
def current_choice() -> KernelChoice:
    """This machine's choice: from the cache, else probed now, cached and printed once."""
    # No oneDNN, or torch changed the private ops we call (lmmixup.onednn): MKL, and fp32 for
    # auto, since the bf16 sampler's kernel is one of those ops. Nothing to cache: it is no timing.
    if not onednn.usable():
        return KernelChoice(cpu_model(), torch.__version__, "mkl", "mkl", {}, {},
                            cpu_bf16_flags(), "fp32", "fp32", {})
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
          f"{choice.training_gemm} ({_fmt(choice.training_ms)}); {describe_precision(choice)}; "
          f"cached in {path}", file=sys.stderr)
    return choice


def describe_precision(choice: KernelChoice) -> str:
    """One line: what auto picks for training and for decoding, and the timings behind it."""
    if not choice.precision_ms:
        broken = onednn.unusable()
        if broken not in (None, onednn.NO_ONEDNN):
            why = f"{broken}: every GEMM on F.linear"
        elif choice.bf16_flags == []:
            why = "no bf16 units (none of " + ", ".join(BF16_FLAGS) + " in /proc/cpuinfo)"
        else:
            why = "no oneDNN bf16 kernels"
        return f"auto precision fp32 for training and decoding ({why}, bf16 not timed)"
    parts = []
    for use, picked in (("train", choice.train_precision), ("decode", choice.rollout_precision)):
        ms = choice.precision_ms[use]
        parts.append(f"{use} {picked} (fp32 {ms['fp32']:.2f} ms, bf16 {ms['bf16']:.2f} ms: "
                     f"{ms['fp32'] / ms['bf16']:.2f}x)")
    return (f"auto precision {', '.join(parts)}; bf16 where >= {BF16_MIN_SPEEDUP}x, "
            f"bf16 flags {choice.bf16_flags}")


def _fmt(ms: dict) -> str:
    return ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
