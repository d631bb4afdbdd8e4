#!/usr/bin/env bash
# The CUDA path of the rollout engine in about a minute, for a session that is lent a GPU:
#   bash scripts/gpu_check.sh        (from the repo root; uses .venv if present)
# 1. parity on CUDA: the static engine's greedy tokens equal HF generate's, its recorded
#    log-probs (fp32 and bf16) equal / stay near a fresh trainer forward, on the tiny model and
#    the embedded SmolLM2;
# 2. rollout speed on CUDA, ours vs HF generate, 4x4x128 tokens, median of 3 (fp32 and bf16).
# Prints one JSON line per check; exits non-zero on a parity failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONPATH=$PWD
timeout 300 "$PY" - <<'PYEOF'
import json, statistics, time
import torch
from lmmixup.engine import static_generate
from lmmixup.grpo import mismatch_stats
from lmmixup.models import ModelConfig, load_model, load_tokenizer
from lmmixup.rollout import RolloutConfig
from lmmixup.step import frozen_logprobs

assert torch.cuda.is_available(), "no CUDA device"
dev = torch.device("cuda")
for name in ("tiny", "embedded:smollm2-135m-instruct"):
    cfg = ModelConfig(name_or_path=name)
    tok = load_tokenizer(cfg)
    model = load_model(cfg, tok).to(dev).eval()
    ids = torch.randint(10, 1000, (4, 12), device=dev, generator=torch.Generator(dev).manual_seed(0))
    mask = torch.ones_like(ids)
    greedy = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=32), 1, [],
                             tok.pad_token_id, greedy=True)
    hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=32,
                        min_new_tokens=32, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    same = float((greedy.completion_ids == hf).float().mean())
    row = {"model": name, "greedy_token_agreement_vs_hf": same}
    for dtype in ("fp32", "bf16"):
        out = static_generate(model, ids, mask, RolloutConfig(max_new_tokens=32, dtype=dtype), 4, [],
                              tok.pad_token_id)
        m = mismatch_stats(frozen_logprobs(model, out, 1.0, 16, 1024), out.rollout_logp,
                           out.completion_mask)
        row[f"{dtype}_abs_logp_diff_max"] = m.abs_diff_max
        row[f"{dtype}_kl_k3"] = m.kl_k3
    print(json.dumps(row), flush=True)
    assert same >= 0.9, row  # fp32 argmax ties may flip a few tokens on another GPU kernel
    assert row["fp32_abs_logp_diff_max"] < 1e-3, row

    if name != "tiny":  # speed, 4 prompts x 4 samples x 128 tokens
        ids4 = ids[:, :8]
        def ours(dtype):
            torch.cuda.synchronize(); t = time.perf_counter()
            static_generate(model, ids4, torch.ones_like(ids4),
                            RolloutConfig(max_new_tokens=128, dtype=dtype), 4, [], tok.pad_token_id)
            torch.cuda.synchronize(); return time.perf_counter() - t
        def hf_gen():
            torch.cuda.synchronize(); t = time.perf_counter()
            model.generate(input_ids=ids4.repeat_interleave(4, 0), do_sample=True,
                           attention_mask=torch.ones_like(ids4).repeat_interleave(4, 0),
                           max_new_tokens=128, min_new_tokens=128, pad_token_id=tok.pad_token_id)
            torch.cuda.synchronize(); return time.perf_counter() - t
        ours("fp32"), hf_gen()  # warm-up
        t_f = statistics.median(ours("fp32") for _ in range(3))
        t_b = statistics.median(ours("bf16") for _ in range(3))
        t_h = statistics.median(hf_gen() for _ in range(3))
        print(json.dumps({"device": torch.cuda.get_device_name(), "rollout_s_ours_fp32": t_f,
                          "rollout_s_ours_bf16": t_b, "rollout_s_hf": t_h,
                          "speedup_fp32_vs_hf": t_h / t_f, "speedup_bf16_vs_hf": t_h / t_b}))
PYEOF
