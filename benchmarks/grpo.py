"""Benchmarks: our rollout engine, log-probs and GRPO step against HF generate and TRL.

Run through the entry point `python -m lmmixup.bench` (lmmixup/bench.py):
    python -m lmmixup.bench [--json] [--only rollout,logprob,roofline,step] [--reps 3] [--steps 4]

Prints a table, then one JSON line (always the last line; --json prints only that line) with
    rollout_speedup_vs_hf               tokens/s of rollout.engine=static at our precision
                                        (precision.rollout=auto) / HF model.generate at HF's
                                        faster dtype (the model loaded in fp32 or in bf16)
    step_speedup_vs_trl                 seconds per TRL GRPOTrainer step at TRL's faster setting
                                        (bf16=False or bf16=True) / seconds per our step at ours
                                        (precision.*=auto)
    step_peak_rss_ratio_trl_over_ours   peak RSS of those TRL steps / ours
    logprob_peak_mem_reduction          peak memory of the naive full log-softmax / our chunked one
    train_fwd_bwd_frac_of_matmul_peak   model FLOP/s of a training forward+backward at our
                                        precision.train=auto / the GEMM peak of that precision
and, under `precision`, the CPU model, its bf16 flags and what auto chose with the probe's
timings. Every ratio is "higher is better" and every time is the median of --reps runs after a
warm-up. Ratios are measured in one process run (or back-to-back child processes) because the
machine may be shared: compare ratios, not absolute times, across runs.

Sections (all on the embedded SmolLM2-135M-Instruct, fp32 master weights):
  rollout   B=4 prompts x G=4 completions x 128 new tokens, tau=1, top_p=1, top_k=0 (the
            RolloutConfig defaults). Both engines are forced to produce all 128 tokens, so the
            comparison is per token: ours with no stop ids, HF with min_new_tokens=128 (which
            masks EOS). Ours samples in fp32 and with the bf16 sampler; HF `generate` runs the
            fp32 model and a copy loaded in bf16 (`.to(torch.bfloat16)`, what a user who wants
            speed does). Runs alternate so that background load hits all four alike.
  logprob   N=16 x T=512 completion tokens. Each variant runs in its own child process; its
            peak is the growth of the process's peak RSS (VmHWM, reset through
            /proc/self/clear_refs just before the measured calls) over the RSS before them.
            (a) the head, training: hidden states (N*T, H) with grad -> log-probs -> backward,
                naive log_softmax over the full (N, T, V) logits vs lmmixup.logprobs' chunked,
                checkpointed head. This is the headline figure.
            (b) frozen log-probs (reference / old policy): the whole model under no_grad,
                naive `model(...).logits` + log_softmax vs `completion_logprobs`.
  roofline  GEMM peak per precision = best of large square matmuls (fp32: torch.mm and oneDNN;
            bf16: torch.mm, oneDNN's bf16 kernel); training forward+backward =
            `completion_logprobs` + backward on 8 x (128 prompt + 128 completion) tokens, in fp32
            and under bf16 autocast, each against the peak of its own precision.
            Model FLOPs (PaLM's MFU convention, recomputation not counted):
            6 * (backbone params) * all tokens + 6 * (lm_head params) * completion tokens
            + 12 * layers * heads * head_dim * seq_len per token (attention).
  step      one GRPO optimizer step (sample, reward, reference log-probs, update) with our
            lmmixup.sampling Policy and lmmixup.step functions at precision.*=auto (and
            algo.rollout_is=auto) vs TRL's GRPOTrainer with bf16=False and with bf16=True (accelerate's autocast, fp32 master
            weights): B=4 x G=4, 64 max completion tokens,
            beta=0.04, mu=1, AdamW lr 1e-6, 2 micro-batches of 8, no gradient
            checkpointing (TRL's default turns it on; ours has it off), the same trivial
            reward (the fraction of vowels in the completion's text). Each trainer runs in
            its own child process, --rounds times, alternating ours / TRL fp32 / TRL bf16; seconds per
            step (wall and process CPU) = median over every child's steps after its first;
            peak RSS = VmHWM over the steps (reset after the models are loaded), max over runs.
            Each step is also split into rollout / rewards + log-probs / update (STEP_PARTS);
            TRL's parts come from timing its `_generate` and `_generate_and_score_completions`
            on the trainer instance, so the two trainers' parts read side by side.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

SECTIONS = ("rollout", "logprob", "roofline", "step")

PROMPTS = [
    "Write a detailed essay about the history of the bicycle.",
    "Explain, step by step, how photosynthesis works in plants.",
    "Describe a busy market in a large city in as much detail as you can.",
    "Tell me a long story about a dragon who wants to become a baker.",
]


# ---------------------------------------------------------------------------------------------
# measuring


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024.0


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; return that RSS (MiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _proc_status_mb("VmHWM")


def median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(kind: str, extra: List[str]) -> Dict:
    """Run `python -m lmmixup.bench --child KIND` and parse its last stdout line (JSON)."""
    cmd = [sys.executable, "-m", "lmmixup.bench", "--child", kind, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _smollm2():
    from lmmixup.models import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig()
    tok = load_tokenizer(cfg)
    return load_model(cfg, tok), tok


def _prompt_batch(tok):
    from lmmixup.data.prompts import PromptRow, encode_prompts

    return encode_prompts(tok, [PromptRow(prompt=p) for p in PROMPTS], 1024)  # (B, P) each


# ---------------------------------------------------------------------------------------------
# rollout


def auto_precision() -> Dict[str, str]:
    """What precision.train=auto and precision.rollout=auto resolve to on this machine's CPU."""
    from lmmixup.precision import NAMES, resolve_precision

    cpu = torch.device("cpu")
    return {use: NAMES[resolve_precision("auto", cpu, use)] for use in ("train", "rollout")}


def bench_rollout(reps: int, table: List) -> Dict:
    import copy

    from lmmixup.engine import static_generate
    from lmmixup.precision import DTYPES
    from lmmixup.rollout import RolloutConfig

    model, tok = _smollm2()
    model.eval()
    hf_models = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}  # HF's two dtypes
    ids, mask = _prompt_batch(tok)
    g, t_new = 4, 128
    cfg = RolloutConfig(max_new_tokens=t_new)

    def ours(dtype, c=cfg):  # no stop ids: T tokens
        return static_generate(model, ids, mask, c, g, [], tok.pad_token_id, dtype=DTYPES[dtype])

    def hf(dtype, c=cfg):
        return hf_models[dtype].generate(
            input_ids=ids.repeat_interleave(g, 0), attention_mask=mask.repeat_interleave(g, 0),
            do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
            max_new_tokens=c.max_new_tokens, min_new_tokens=c.max_new_tokens,
            pad_token_id=tok.pad_token_id)

    runs = {("ours", "fp32"): ours, ("ours", "bf16"): ours, ("hf", "fp32"): hf, ("hf", "bf16"): hf}
    warm = RolloutConfig(max_new_tokens=8)
    for (_, dtype), fn in runs.items():
        fn(dtype, warm)
    times = {key: [] for key in runs}
    for _ in range(reps):  # alternate, so that load from other processes hits all alike
        for (who, dtype), fn in runs.items():
            times[(who, dtype)].append(median_time(lambda: fn(dtype), 1))
    out = ours("fp32")
    assert out.completion_ids.shape == (len(PROMPTS) * g, t_new)
    tokens = len(PROMPTS) * g * t_new
    tps = {key: tokens / statistics.median(t) for key, t in times.items()}
    hf_best = max(("fp32", "bf16"), key=lambda d: tps[("hf", d)])
    ours_prec = auto_precision()["rollout"]
    hf_tps, ours_tps = tps[("hf", hf_best)], tps[("ours", ours_prec)]
    # the bf16 sampler against the fp32 trainer, on one bf16 rollout
    from lmmixup.grpo import mismatch_stats
    from lmmixup.step import frozen_logprobs

    sampled = ours("bf16")
    mm = mismatch_stats(frozen_logprobs(model, sampled, 1.0, 8, 1024), sampled.rollout_logp,
                        sampled.completion_mask)
    for (who, dtype), t in times.items():
        name = (f"HF generate, model in {dtype}" if who == "hf"
                else f"static engine (ours), precision.rollout={dtype}")
        table.append(("rollout", f"{name}, {len(PROMPTS)}x{g}x{t_new} tok",
                      f"{tps[(who, dtype)]:.1f} tok/s",
                      f"median of {reps}: {statistics.median(t):.2f} s"))
    table += [
        ("rollout", f"speed-up ours ({ours_prec}, auto) / HF ({hf_best}, its faster)",
         f"{ours_tps / hf_tps:.2f}x", "goal >= 4x"),
        ("rollout", "bf16 sampler vs fp32 trainer", f"max |dlogp| {mm.abs_diff_max:.3f}",
         f"mean {mm.abs_diff_mean:.4f}, K3 KL {mm.kl_k3:.2e}, ESS {mm.ess:.3f}"),
    ]
    return {"rollout_speedup_vs_hf": ours_tps / hf_tps,
            "rollout_ours_precision": ours_prec, "rollout_hf_best_dtype": hf_best,
            "rollout_tok_s": {f"{who}_{dtype}": v for (who, dtype), v in tps.items()},
            "bf16_mismatch": {"abs_logp_diff_mean": mm.abs_diff_mean,
                              "abs_logp_diff_max": mm.abs_diff_max, "kl_k3": mm.kl_k3,
                              "chi2_token": mm.chi2_token, "chi2_seq": mm.chi2_seq,
                              "ess": mm.ess, "is_ratio_min": mm.ratio_min,
                              "is_ratio_mean": mm.ratio_mean, "is_ratio_max": mm.ratio_max}}


# ---------------------------------------------------------------------------------------------
# logprob


def child_logprob(variant: str, reps: int) -> Dict:
    """One log-prob variant in a fresh process: peak RSS growth and median time."""
    from lmmixup.logprobs import completion_logprobs, token_logprobs

    torch.manual_seed(0)
    n, t, temp = 16, 512, 1.0
    model, _ = _smollm2()
    model.eval()
    weight = model.get_output_embeddings().weight.detach()  # (V, H)
    v, h = weight.shape
    targets = torch.randint(0, v, (n, t))  # (N, T)

    if variant in ("head_naive", "head_chunked"):
        hidden = torch.randn(n * t, h, requires_grad=True)  # (N*T, H)

        def run():
            hidden.grad = None
            if variant == "head_naive":
                logits = (hidden @ weight.T).float().view(n, t, v) / temp  # (N, T, V)
                logp = torch.log_softmax(logits, dim=-1).gather(2, targets[..., None]).squeeze(2)
            else:
                logp, _ = token_logprobs(hidden, weight, None, targets.view(-1), temp, 1024)  # (N*T,)
            logp.sum().backward()
    else:
        prompt = torch.randint(0, v, (n, 16))
        pmask = torch.ones_like(prompt)

        @torch.no_grad()
        def run():
            if variant == "frozen_naive":
                ids = torch.cat([prompt, targets], dim=1)
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                logp = torch.log_softmax(logits[:, 15:-1].float() / temp, dim=-1)  # (N, T, V)
                return logp.gather(2, targets[..., None]).squeeze(2)
            return completion_logprobs(model, prompt, pmask, targets, temp, 1024)[0]

    run()  # warm-up (also allocates anything lazily created)
    base = reset_peak_rss()
    secs = median_time(run, reps)
    return {"variant": variant, "peak_mb": peak_rss_mb() - base, "seconds": secs}


def bench_logprob(reps: int, table: List) -> Dict:
    res = {}
    for variant in ("head_naive", "head_chunked", "frozen_naive", "frozen_chunked"):
        res[variant] = _child(f"logprob:{variant}", ["--reps", str(reps)])
    head = res["head_naive"]["peak_mb"] / res["head_chunked"]["peak_mb"]
    frozen = res["frozen_naive"]["peak_mb"] / res["frozen_chunked"]["peak_mb"]
    for name in res:
        r = res[name]
        table.append(("logprob", f"16x512 {name}", f"{r['peak_mb']:.0f} MiB peak",
                      f"{r['seconds']:.2f} s"))
    table += [
        ("logprob", "peak reduction, head fwd+bwd", f"{head:.2f}x", "goal >= 4x"),
        ("logprob", "peak reduction, frozen no-grad", f"{frozen:.2f}x",
         f"time chunked/naive {res['frozen_chunked']['seconds'] / res['frozen_naive']['seconds']:.2f}"),
    ]
    return {"logprob_peak_mem_reduction": head, "logprob_peak_mem_reduction_frozen": frozen,
            "logprob_time_ratio_chunked_over_naive_head":
                res["head_chunked"]["seconds"] / res["head_naive"]["seconds"]}


# ---------------------------------------------------------------------------------------------
# roofline


def matmul_peak_gflops(reps: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate of the machine in `dtype`: large square products through torch.mm (fp32:
    MKL here; bf16: oneDNN's bf16 kernel) and, in fp32 on CPU, through oneDNN too. On this AMD
    CPU oneDNN runs fp32 2048^2 at ~208 GFLOP/s and MKL at ~135, so a peak measured with
    torch.mm alone would flatter the fraction."""
    from lmmixup import onednn  # like this file's other lmmixup imports: only where used

    best = 0.0
    for size in (1024, 2048, 3072):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        kernels = [lambda: a @ b]
        if onednn.usable() and dtype == torch.float32:  # the private ops still work
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), size)
            kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
        for kernel in kernels:
            kernel()
            best = max(best, 2 * size ** 3 / median_time(kernel, reps) / 1e9)
    return best


def bench_roofline(reps: int, table: List) -> Dict:
    from lmmixup.logprobs import completion_logprobs
    from lmmixup.precision import DTYPES, autocast

    model, _ = _smollm2()
    model.train()
    cfg = model.config
    n, p, t = 8, 128, 128
    v, h = model.get_output_embeddings().weight.shape
    prompt = torch.randint(0, v, (n, p))
    completion = torch.randint(0, v, (n, t))
    pmask = torch.ones_like(prompt)

    def step(dtype):
        model.zero_grad(set_to_none=True)
        with autocast(DTYPES[dtype], "cpu"):  # as grpo_update runs it: the forward only
            logp, _ = completion_logprobs(model, prompt, pmask, completion, 1.0, 1024)
        logp.mean().backward()

    params = sum(x.numel() for x in model.parameters())  # tied embedding counted once
    head = v * h
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    seq = p + t
    flops = (6 * (params - head) * n * seq + 6 * head * n * t
             + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq * n * seq)
    used = auto_precision()["train"]
    res: Dict = {"train_precision": used}
    for dtype in ("fp32", "bf16"):
        step(dtype)  # warm-up
        secs = median_time(lambda: step(dtype), reps)
        achieved = flops / secs / 1e9
        peak = matmul_peak_gflops(max(3, reps), DTYPES[dtype])
        table += [
            ("roofline", f"{dtype} matmul peak (best of 1k/2k/3k square"
             f"{', MKL + oneDNN' if dtype == 'fp32' else ''})", f"{peak:.1f} GFLOP/s", ""),
            ("roofline", f"train fwd+bwd {n}x{seq} tok, {dtype}", f"{achieved:.1f} GFLOP/s",
             f"{secs:.2f} s, {flops / 1e12:.2f} TFLOP"),
            ("roofline", f"fraction of the {dtype} matmul peak", f"{achieved / peak:.2%}",
             "goal >= 60% (auto's precision)" if dtype == used else ""),
        ]
        res.update({f"matmul_peak_gflops_{dtype}": peak, f"train_fwd_bwd_gflops_{dtype}": achieved,
                    f"train_fwd_bwd_s_{dtype}": secs, f"train_fwd_bwd_frac_{dtype}": achieved / peak})
    res["train_fwd_bwd_frac_of_matmul_peak"] = res[f"train_fwd_bwd_frac_{used}"]
    return res


# ---------------------------------------------------------------------------------------------
# step


def _trivial_reward(text: str) -> float:
    """Fraction of vowels: cheap, and it differs between completions, so advantages are not 0."""
    return sum(c in "aeiou" for c in text.lower()) / max(len(text), 1)


def child_step_ours(steps: int) -> Dict:
    """Our GRPO step at precision.train=auto, precision.rollout=auto, algo.rollout_is=auto."""
    from lmmixup.data.prompts import PromptRow
    from lmmixup.grpo import AlgoConfig, group_advantages
    from lmmixup.models import frozen_copy
    from lmmixup.optim import OptimConfig, build_optimizer, build_scheduler
    from lmmixup.precision import PrecisionConfig, run_precision
    from lmmixup.rollout import RolloutConfig
    from lmmixup.sampling.policy import Policy
    from lmmixup.step import UpdateConfig, frozen_logprobs, grpo_update

    model, tok = _smollm2()
    model.train()
    algo = AlgoConfig(group_size=4, beta=0.04, num_iterations=1)  # rollout_is=auto
    prec = run_precision(PrecisionConfig(), torch.device("cpu"), "static", True, algo.rollout_is,
                         torch.float32)
    rollout_cfg = RolloutConfig(max_new_tokens=64)  # engine=static
    optim_cfg = OptimConfig(lr=1e-6)  # the TRL side's lr (the docstring's setting)
    micro, chunk = 8, 1024
    policy = Policy.build(model, tok, "cpu", rollout_cfg, dtype=prec.rollout)
    ref = frozen_copy(model)
    opt = build_optimizer(model, optim_cfg)
    sched = build_scheduler(opt, optim_cfg, steps)
    rows = [PromptRow(prompt=q) for q in PROMPTS]
    base = reset_peak_rss()
    times, cpu, lengths, parts = [], [], [], []
    for s in range(steps):
        torch.manual_seed(s)
        t0, c0 = time.perf_counter(), time.process_time()
        rollout = policy.sample(rows, algo.group_size, max_prompt_tokens=1024, source="bench")
        t_sampled = time.perf_counter()
        texts = policy.decode(rollout, rows, algo.group_size)
        rewards = torch.tensor([_trivial_reward(c) for c in texts.completions])  # (N,)
        adv = group_advantages(rewards, algo.group_size, algo.adv_scale, algo.adv_eps)  # (N,)
        t1 = time.perf_counter()
        ref_logp = frozen_logprobs(ref, rollout, rollout_cfg.temperature, micro, chunk,
                                   compute_dtype=prec.train)
        t2 = time.perf_counter()
        grpo_update(model, opt, sched, rollout, adv, old_logp=None, ref_logp=ref_logp,
                    cfg=UpdateConfig(algo=algo, max_new_tokens=rollout_cfg.max_new_tokens,
                                     mini_batch_size=rollout.num_sequences, micro_batch_size=micro,
                                     temperature=rollout_cfg.temperature, chunk_size=chunk,
                                     max_grad_norm=optim_cfg.max_grad_norm, update_slots=1,
                                     compute_dtype=prec.train, precision_gap=prec.gap))
        t3 = time.perf_counter()
        times.append(t3 - t0)
        cpu.append(time.process_time() - c0)
        parts.append({"rollout": t_sampled - t0, "reward_and_logprobs": t2 - t_sampled,
                      "update": t3 - t2})
        lengths.append(float(rollout.completion_lengths.mean()))
    return {"step_s": times, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base,
            "completion_len_mean": lengths, "parts_s": parts, "loadavg_end": os.getloadavg()[0],
            "precision": {**prec.names(), "rollout_is": prec.rollout_is}}


def child_step_trl(steps: int, bf16: bool = False) -> Dict:
    """TRL's GRPOTrainer step; bf16: its `bf16=True` (accelerate's autocast over fp32 master
    weights), the setting its users turn on for speed."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _smollm2()
    model.train()
    times, cpu, lengths, parts, state = [], [], [], [], {}
    spent = {"_generate": 0.0, "_generate_and_score_completions": 0.0}  # seconds, this step

    def reward(completions, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [_trivial_reward(x) for x in texts]

    class Clock(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            if "base" not in state:
                state["base"] = reset_peak_rss()  # models, ref model, trainer are built by now
            state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            spent.update(dict.fromkeys(spent, 0.0))

        def on_step_end(self, args, st, control, **kw):
            times.append(time.perf_counter() - state["t0"])
            cpu.append(time.process_time() - state["c0"])
            # TRL's generation batch is one optimizer step here (16 = 8 per device x 2 accum)
            gen, scored = spent["_generate"], spent["_generate_and_score_completions"]
            parts.append({"rollout": gen, "reward_and_logprobs": scored - gen,
                          "update": times[-1] - scored})

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in PROMPTS] * steps})
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=2,
            num_generations=4, max_completion_length=64, beta=0.04, num_iterations=1,
            learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0, loss_type="grpo",
            scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0, bf16=bf16, fp16=False,
            use_cpu=True, gradient_checkpointing=False, max_steps=steps, logging_steps=1,
            save_strategy="no", report_to=[], shuffle_dataset=False, seed=0, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()])
        for name in spent:  # time TRL's sampling and its sampling + scoring, on this instance
            setattr(trainer, name, _timed(getattr(trainer, name), name, spent))
        trainer.train()
    return {"step_s": times, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(),
            "base_rss_mb": state.get("base", 0.0), "completion_len_mean": lengths,
            "parts_s": parts, "loadavg_end": os.getloadavg()[0]}


def _timed(fn: Callable, name: str, spent: Dict[str, float]) -> Callable:
    """fn, adding its wall seconds to spent[name] on every call."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0
    return wrapper


STEP_PARTS = ("rollout", "reward_and_logprobs", "update")
"""a step's split, median seconds: sampling; rewards + reference (and TRL's old) log-probs;
the loss, backward and optimizer step (TRL: the step's remainder after `_generate_and_score_completions`)"""
STEP_ROUNDS = 2
"""default child runs per trainer setting, alternating ours / TRL fp32 / TRL bf16, so that
changing background load hits all alike (--rounds)"""
TRAINERS = ("ours", "trl-fp32", "trl-bf16")
"""the step's contenders: ours at precision.*=auto, TRL's GRPOTrainer with bf16=False / True"""


def _summary(rs: List[Dict]) -> Dict:
    """Median wall and CPU seconds per step over every child's steps after its first (warm-up),
    max peak RSS, min base RSS, and the median of each part of the step."""
    def later(r, key):
        return r[key][1:] or r[key]

    return {"wall": statistics.median(x for r in rs for x in later(r, "step_s")),
            "cpu": statistics.median(x for r in rs for x in later(r, "cpu_s")),
            "peak": max(r["peak_rss_mb"] for r in rs), "base": min(r["base_rss_mb"] for r in rs),
            "lens": [x for r in rs for x in r["completion_len_mean"]],
            "load": [r["loadavg_end"] for r in rs],
            "parts": {k: statistics.median(x[k] for r in rs for x in later(r, "parts_s"))
                      for k in STEP_PARTS}}


def bench_step(steps: int, table: List, rounds: int = STEP_ROUNDS) -> Dict:
    runs: Dict[str, List[Dict]] = {name: [] for name in TRAINERS}
    failed: Dict[str, str] = {}
    for _ in range(rounds):
        for name in TRAINERS:
            if name in failed:
                continue
            try:
                runs[name].append(_child(f"step:{name}", ["--steps", str(steps)]))
            except RuntimeError as e:  # TRL's bf16=True may not run on this CPU: say why
                if name == "ours":
                    raise
                failed[name] = str(e).strip().splitlines()[-1][:300]
    res = {name: _summary(rs) for name, rs in runs.items() if rs}
    labels = {"ours": "lmmixup.step (ours, precision auto)", "trl-fp32": "TRL GRPOTrainer bf16=False",
              "trl-bf16": "TRL GRPOTrainer bf16=True"}
    for name in TRAINERS:
        if name in failed:
            table.append(("step", f"{labels[name]} 4x4x64", "failed", failed[name]))
            continue
        r = res[name]
        table.append(("step", f"{labels[name]} 4x4x64", f"{r['wall']:.2f} s/step",
                      f"CPU {r['cpu']:.1f} s/step; peak RSS {r['peak']:.0f} MiB "
                      f"(from {r['base']:.0f}); completion len {min(r['lens']):.0f}-"
                      f"{max(r['lens']):.0f}; load avg at end {r['load']}"))
    trl_best = min((n for n in ("trl-fp32", "trl-bf16") if n in res), key=lambda n: res[n]["wall"])
    ours, trl = res["ours"], res[trl_best]
    for k in STEP_PARTS:  # where the step's time goes, and the speed-up of each part
        table.append(("step", f"  {k}: TRL ({trl_best[4:]}) / ours",
                      f"{trl['parts'][k]:.2f} / {ours['parts'][k]:.2f} s",
                      f"{trl['parts'][k] / max(ours['parts'][k], 1e-9):.2f}x"))
    table += [
        ("step", f"speed-up ours / TRL {trl_best[4:]} (its faster; wall)",
         f"{trl['wall'] / ours['wall']:.2f}x", "goal >= 2.5x"),
        ("step", "speed-up ours / TRL (CPU time)", f"{trl['cpu'] / ours['cpu']:.2f}x", ""),
        ("step", "peak RSS TRL / ours", f"{trl['peak'] / ours['peak']:.2f}x", "goal >= 1"),
    ]
    return {"step_speedup_vs_trl": trl["wall"] / ours["wall"],
            "step_speedup_vs_trl_cpu_time": trl["cpu"] / ours["cpu"],
            "step_peak_rss_ratio_trl_over_ours": trl["peak"] / ours["peak"],
            "step_trl_best": trl_best, "step_precision_ours": runs["ours"][0]["precision"],
            "step_s": {name: r["wall"] for name, r in res.items()},
            "step_peak_rss_mb": {name: r["peak"] for name, r in res.items()},
            "step_failed": failed,
            "step_parts_s": {name: {k: round(v, 3) for k, v in r["parts"].items()}
                             for name, r in res.items()}}
