"""Mixed precision (lmmixup/precision.py, issue 22): what runs in bf16, what stays fp32, how
`auto` is chosen and cached (lmmixup/kernel_choice.py), and that train.py runs in each.

Every dtype check looks at the ops that actually ran: a TorchDispatchMode sits below autocast in
the dispatcher, so it records each aten op with the dtypes autocast gave its inputs."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lmmixup.grpo as grpo
import lmmixup.kernel_choice as kc
import lmmixup.step as step
from conftest import ROOT
from lmmixup.grpo import AlgoConfig
from lmmixup.precision import (PrecisionConfig, precision_gap, resolve_precision,
                               resolve_rollout_is, run_precision)
from lmmixup.rollout import Rollout
from lmmixup.step import UpdateConfig, frozen_logprobs, grpo_update

BF16, FP32 = torch.bfloat16, torch.float32
GEMMS = ("mm", "addmm", "bmm", "baddbmm")


class OpDtypes(TorchDispatchMode):
    """op name -> set of (floating input dtypes) tuples, for every aten op run inside."""

    def __init__(self):
        super().__init__()
        self.seen = defaultdict(set)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = tuple(a.dtype for a in tree_leaves((args, kwargs))
                       if isinstance(a, torch.Tensor) and a.is_floating_point())
        self.seen[func.overloadpacket.__name__].add(dtypes)
        return func(*args, **kwargs)

    def input_dtypes(self, *names):
        return {d for n in names for dtypes in self.seen.get(n, ()) for d in dtypes}


def _rollout():
    """2 prompts x G=2 completions of 6 tokens (lengths 6, 3, 4, 2), prompts shared per group."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 500, (2, 5), generator=g).repeat_interleave(2, 0)  # (4, 5)
    completion = torch.randint(10, 500, (4, 6), generator=g)  # (4, 6)
    mask = (torch.arange(6)[None] < torch.tensor([6, 3, 4, 2])[:, None]).float()  # (4, 6)
    return Rollout(prompt, torch.ones_like(prompt), completion, mask,
                   truncated=torch.tensor([True, False, False, False]), rollout_logp=None)


def _update(model, rollout, compute_dtype, beta=0.1, algo=None, gap=False):
    algo = algo or AlgoConfig(group_size=2, beta=beta, rollout_is="none")
    ref = frozen_logprobs(model, rollout, 1.0, 4, 1024, compute_dtype=compute_dtype)  # (4, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = UpdateConfig(algo=algo, max_new_tokens=6, mini_batch_size=4, micro_batch_size=2,
                       temperature=1.0, chunk_size=5, max_grad_norm=1.0, update_slots=1,
                       compute_dtype=compute_dtype, precision_gap=gap)
    stats = grpo_update(model, opt, sched, rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]),
                        old_logp=None, ref_logp=ref - 0.01, cfg=cfg)
    return stats, opt


# ----------------------------------------------------------------------------- what runs in bf16

@pytest.mark.parametrize("compute_dtype", [BF16, FP32])
def test_update_gemms_follow_the_precision_and_logprobs_loss_kl_stay_fp32(
        tiny_model, compute_dtype, monkeypatch):
    seen = {}
    real_loss, real_kl = step.policy_loss, grpo.kl_penalty

    def loss_spy(logp, old, ref, *args, **kwargs):
        seen["autocast_on_in_loss"] = torch.is_autocast_enabled("cpu")
        seen["logp"], seen["old"], seen["ref"] = logp.dtype, old.dtype, ref.dtype
        parts = real_loss(logp, old, ref, *args, **kwargs)
        seen["loss"] = parts.loss.dtype
        return parts

    def kl_spy(*args, **kwargs):
        out = real_kl(*args, **kwargs)
        seen["kl"] = out.dtype
        return out

    monkeypatch.setattr(step, "policy_loss", loss_spy)
    monkeypatch.setattr(grpo, "kl_penalty", kl_spy)  # policy_loss's module global
    # the kernel choice first: on a machine with no cached choice its probe would run inside
    # the recorder, and its bf16 timing GEMMs would count as the update's (seen on a cold cache)
    kc.current_choice()
    ops = OpDtypes()
    with ops:
        stats, opt = _update(tiny_model, _rollout(), compute_dtype)
    assert stats.updates == 1
    # Every GEMM of the decoder and the head, forward (with the reference's, the recompute)
    # and backward, ran in the chosen dtype. The fp32 bmm of HF's RoPE frequency table
    # (inv_freq x positions, which HF computes with autocast off) is the only other product.
    assert ops.input_dtypes("mm", "addmm", "_linear_pointwise") == {compute_dtype}
    assert ops.input_dtypes("bmm") <= {FP32}
    attention = ops.input_dtypes("_scaled_dot_product_flash_attention_for_cpu")
    assert compute_dtype in attention  # (its fp32 arguments are the masks)
    # log-softmax (logsumexp of fp32 logits), the log-probs, loss and KL: fp32, computed with
    # autocast off; so are the gradients and AdamW's moments of the fp32 master weights
    assert ops.input_dtypes("logsumexp", "_log_softmax") == {FP32}
    assert seen == {"autocast_on_in_loss": False, "logp": FP32, "old": FP32, "ref": FP32,
                    "loss": FP32, "kl": FP32}
    for p in tiny_model.parameters():
        state = opt.state[p]
        assert p.dtype == state["exp_avg"].dtype == state["exp_avg_sq"].dtype == FP32


def test_bf16_head_gradient_agrees_with_an_unchunked_autocast_reference():
    """The chunked head under autocast against the plain product under autocast: the same bf16
    GEMMs, so they agree to bf16 rounding, while fp32 differs from both by more than fp32's."""
    from lmmixup.logprobs import token_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 32, generator=g)  # (M, H)
    weight = torch.randn(50, 32, generator=g) * 0.3  # (V, H)
    targets = torch.randint(0, 50, (12,), generator=g)  # (M,)

    def grads(fn, autocast_on):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=BF16, enabled=autocast_on):
            logp = fn(h, w)  # (M,)
        assert logp.dtype == FP32
        (logp * torch.linspace(-1, 1, 12)).sum().backward()
        return logp.detach(), h.grad, w.grad

    def chunked(h, w):  # chunks of 5 rows: the weight gradient is a sum of 3 chunk products
        return token_logprobs(h, w, None, targets, 1.0, chunk_size=5)[0]

    def plain(h, w):
        return torch.log_softmax((h @ w.t()).float(), dim=-1).gather(1, targets[:, None])[:, 0]

    ours, ref, exact = grads(chunked, True), grads(plain, True), grads(plain, False)
    for a, b, c in zip(ours, ref, exact):
        assert a.dtype == b.dtype == FP32
        scale = float(c.abs().max())
        # bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 2e-3): one rounding of h, w and
        # the (C, V) gradient each gives errors of a few 1e-3 of the largest value; 2e-2 of it
        # leaves room for the sums over H = 32 and over chunks, and still fails on a wrong sign
        # or a lost chunk (errors of order 1)
        assert float((a - b).abs().max()) <= 2e-2 * scale
        assert float((a - c).abs().max()) > 1e-5 * scale  # bf16 really ran (fp32 ~1e-7)


# ----------------------------------------------------------------------------- auto: the probe

def test_choose_precision_needs_a_1_3x_margin():
    # 13.0 ms fp32 / 10.0 ms bf16 = 1.30x: bf16; 12.9 / 10.0 = 1.29x: fp32
    assert kc.choose_precision({"fp32": 13.0, "bf16": 10.0}) == "bf16"
    assert kc.choose_precision({"fp32": 12.9, "bf16": 10.0}) == "fp32"
    assert kc.choose_precision({"fp32": 10.0, "bf16": 20.0}) == "fp32"  # emulated bf16: slower


def test_cpu_bf16_flags_from_cpuinfo_text():
    xeon = "processor : 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 avx512_bf16 avx512_vnni\n"
    zen4 = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    old_epyc = "processor : 0\nflags : fpu avx2 fma\n"
    arm = "processor : 0\nFeatures : fp asimd sve bf16 i8mm\n"
    assert kc.cpu_bf16_flags(xeon) == ["amx_bf16", "avx512_bf16"]
    assert kc.cpu_bf16_flags(zen4) == ["avx512_bf16"]
    assert kc.cpu_bf16_flags(old_epyc) == []
    assert kc.cpu_bf16_flags(arm) == ["bf16"]


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    """An empty cache folder, a fresh in-process choice, and fixed kernel timings (no probing)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kc, "_probe_shape", lambda rows, reps: {"onednn": 1.0, "mkl": 2.0})
    kc.current_choice.cache_clear()
    yield tmp_path / "lmmixup"
    kc.current_choice.cache_clear()


def test_probe_without_bf16_units_stays_fp32_without_timing_bf16(cache_home, monkeypatch):
    monkeypatch.setattr(kc, "cpu_bf16_flags", lambda: [])

    def must_not_run(*args):
        raise AssertionError("bf16 was timed on a CPU without bf16 units")

    monkeypatch.setattr(kc, "_fp32_vs_bf16_ms", must_not_run)
    choice = kc.current_choice()
    assert (choice.train_precision, choice.rollout_precision, choice.precision_ms) == ("fp32", "fp32", {})
    assert resolve_precision("auto", torch.device("cpu"), "train") == FP32
    assert "no bf16 units" in kc.describe_precision(choice)


def test_probe_choice_is_cached_and_read_back_without_probing(cache_home, monkeypatch):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this torch build has no oneDNN bf16 kernels: the probe never times bf16")
    monkeypatch.setattr(kc, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    # hand-set timings: training 30 ms fp32 vs 10 ms bf16 (3x: bf16); decode 12 vs 10 ms (1.2x:
    # below the 1.3x margin, fp32)
    timings = {True: {"fp32": 12.0, "bf16": 10.0}, False: {"fp32": 30.0, "bf16": 10.0}}
    monkeypatch.setattr(kc, "_fp32_vs_bf16_ms", lambda shapes, kernel, decode, reps: timings[decode])
    first = kc.current_choice()
    assert (first.train_precision, first.rollout_precision) == ("bf16", "fp32")
    files = list(cache_home.glob("kernels-v2-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["train_precision"] == "bf16" and saved["rollout_precision"] == "fp32"
    assert saved["precision_ms"] == {"train": timings[False], "decode": timings[True]}
    assert saved["bf16_flags"] == ["avx512_bf16"] and saved["cpu_model"] == kc.cpu_model()

    # A new process (cache_clear) reads the file and probes nothing; an edited file is obeyed.
    saved["train_precision"], saved["rollout_precision"] = "fp32", "bf16"
    files[0].write_text(json.dumps(saved))
    kc.current_choice.cache_clear()

    def must_not_probe(*args):
        raise AssertionError("probed although the cache file was there")

    monkeypatch.setattr(kc, "_probe_shape", must_not_probe)
    monkeypatch.setattr(kc, "_fp32_vs_bf16_ms", must_not_probe)
    assert resolve_precision("auto", torch.device("cpu"), "train") == FP32
    assert resolve_precision("auto", torch.device("cpu"), "rollout") == BF16
    assert resolve_precision("bf16", torch.device("cpu"), "train") == BF16  # forced: no lookup


def test_a_cache_file_of_the_older_format_is_probed_again(cache_home, monkeypatch):
    monkeypatch.setattr(kc, "cpu_bf16_flags", lambda: [])
    cache_home.mkdir(parents=True)
    old = {"cpu_model": kc.cpu_model(), "torch_version": torch.__version__, "decode_gemm": "mkl",
           "training_gemm": "mkl", "decode_ms": {}, "training_ms": {}}  # no precision fields
    kc._cache_file().write_text(json.dumps(old))
    choice = kc.current_choice()
    assert choice.training_gemm == "onednn"  # probed: the fixed timings say oneDNN 1 ms < MKL 2
    assert json.loads(kc._cache_file().read_text())["train_precision"] == "fp32"


# ----------------------------------------------------------------------------- the correction

def test_a_bf16_sampler_turns_the_rollout_correction_on():
    cpu = torch.device("cpu")

    def resolved(train, rollout, mode="auto", engine="static"):
        return run_precision(PrecisionConfig(train=train, rollout=rollout), cpu, engine,
                             engine == "static", mode, FP32)

    assert resolved("fp32", "bf16").rollout_is == "token_tis"  # a bf16 sampler
    assert resolved("bf16", "fp32").rollout_is == "token_tis"  # a bf16 trainer
    assert resolved("bf16", "bf16").rollout_is == "token_tis"  # pure bf16 != autocast
    assert resolved("fp32", "fp32").rollout_is == "none"  # the same log-probs up to rounding
    assert resolved("fp32", "bf16", mode="none").rollout_is == "none"  # the user's choice wins
    assert resolved("fp32", "bf16", mode="seq_mask").rollout_is == "seq_mask"
    hf = resolved("bf16", "auto", engine="hf")
    assert hf.rollout == FP32 and hf.rollout_is == "none"  # no sampler log-probs to correct with
    assert precision_gap(FP32, FP32, BF16)  # bf16 parameters: no exact fp32 pair
    assert resolve_rollout_is("auto", gap=True, records_logprobs=True) == "token_tis"


def test_grpo_update_applies_the_correction_when_the_precisions_differ(tiny_model):
    """rollout_is=auto in grpo_update itself: with a precision gap the sampler's log-probs weight
    the loss. The sampler is made to say log p - log 4 on every token: rho = pi_old / pi_rollout
    = 4 > the cap C = 2, so every real token is truncated (fraction 1.0); without the gap the
    correction is off and nothing is truncated (0.0)."""
    rollout = _rollout()
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    exact = frozen_logprobs(tiny_model, rollout, 1.0, 4, 1024)  # (4, 6) the trainer's, fp32
    rollout.rollout_logp = (exact - torch.log(torch.tensor(4.0))) * rollout.completion_mask
    algo = AlgoConfig(group_size=2, beta=0.0)
    assert algo.rollout_is == "auto"  # the default
    on, _ = _update(tiny_model, rollout, FP32, algo=algo, gap=True)
    tiny_model.load_state_dict(state)
    off, _ = _update(tiny_model, rollout, FP32, algo=algo, gap=False)
    assert on.is_frac_tokens_truncated == 1.0 and off.is_frac_tokens_truncated == 0.0
    assert on.mismatch is not None and off.mismatch is not None  # mismatch/* logged either way
    assert on.mismatch.ratio_min == pytest.approx(4.0, rel=1e-5)  # rho = 4 on every token


# ----------------------------------------------------------------------------- train.py

def train(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=smoke", "steps=2",
                           "logger.progress_bar=false", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bf16", "fp32"])
def test_train_py_grpo_runs_in_a_forced_precision(tmp_path, name):
    starter = ROOT / "lmmixup" / "data" / "starter_prompts.jsonl"
    out = train(f"precision.train={name}", f"precision.rollout={name}", "algo.num_iterations=2",
                f"data.eval_file={starter}", "eval_max_rows=2", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    correction = "token_tis" if name == "bf16" else "none"
    assert (f"precision: train {name} (precision.train={name}), rollout {name} "
            f"(precision.rollout={name}), algo.rollout_is {correction}") in out.stdout
    logged = rows(tmp_path)
    flag = 1.0 if name == "bf16" else 0.0
    steps = [r for r in logged if "grpo/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["precision/train_bf16"] == r["precision/rollout_bf16"] == flag
        assert "mismatch/kl_k3" in r  # the sampler/trainer gap is measured in both
    # mu = 2: the old log-probs are the trainer's own (bf16) or the sampler's (fp32, exact)
    gap = max(r["mismatch/abs_logp_diff_max"] for r in steps)
    assert (gap > 1e-4) if name == "bf16" else (gap < 1e-4)
    evals = [r for r in logged if "eval/decode_bf16" in r]
    assert evals and evals[-1]["eval/decode_bf16"] == flag
    meta = json.loads((tmp_path / "checkpoints" / "step_000002" / "meta.json").read_text())
    assert meta["config_fingerprint"]["precision.train"] == json.dumps(name)  # resolved, not auto


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bf16", "fp32"])
def test_train_py_sft_runs_in_a_forced_precision(tmp_path, name):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}.", "target": f"{w}!"}) + "\n"
                            for w in ("hi", "yes", "no", "ok")))
    run_dir = tmp_path / "run"
    out = train("stage=sft", f"data.train_file={data}", "sft.examples_per_step=2",
                f"precision.train={name}", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    logged = rows(run_dir)
    assert [r["step"] for r in logged] == [1, 2]
    assert all(r["precision/train_bf16"] == (1.0 if name == "bf16" else 0.0) for r in logged)
    assert all(r["sft/loss"] > 0 for r in logged)


@pytest.mark.slow
def test_train_py_auto_reads_the_cached_choice(tmp_path):
    """precision=auto in a fresh process, with a cache file written by hand that says bf16 for
    training and fp32 for decoding: the run trains in bf16 and samples in fp32, and says why."""
    cache = tmp_path / "cache" / "lmmixup"
    cache.mkdir(parents=True)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    probe = subprocess.run([sys.executable, "-c", "import lmmixup.kernel_choice as k; "
                            "print(k._cache_file().name); print(k.cpu_model())"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    name, model = probe.stdout.splitlines()
    (cache / name).write_text(json.dumps({
        "cpu_model": model, "torch_version": torch.__version__, "decode_gemm": "mkl",
        "training_gemm": "mkl", "decode_ms": {}, "training_ms": {}, "bf16_flags": ["amx_bf16"],
        "train_precision": "bf16", "rollout_precision": "fp32",
        "precision_ms": {"train": {"fp32": 30.0, "bf16": 10.0},
                         "decode": {"fp32": 12.0, "bf16": 10.0}}}))
    out = train("precision.train=auto", "precision.rollout=auto", f"hydra.run.dir={tmp_path / 'run'}",
                env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("precision: train bf16 (precision.train=auto), rollout fp32 (precision.rollout=auto), "
            "algo.rollout_is token_tis") in out.stdout
    assert "train bf16 (fp32 30.00 ms, bf16 10.00 ms: 3.00x)" in out.stdout  # the timings behind it
    assert "kernels:" not in out.stderr  # read from the cache, not probed
    logged = rows(tmp_path / "run")
    assert [(r["precision/train_bf16"], r["precision/rollout_bf16"]) for r in logged] == [(1.0, 0.0)] * 2
