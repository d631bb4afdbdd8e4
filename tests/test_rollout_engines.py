"""The rollout engines: the HF engine samples from the plain tempered distribution whatever the
checkpoint's generation_config says, the engine and rollout modules import neither each other,
and bf16 rollouts are measured against the fp32 trainer."""

import subprocess
import sys

import torch

from conftest import ROOT
from lmmixup.engine import static_generate
from lmmixup.grpo import mismatch_stats
from lmmixup.rollout import ENGINES, RolloutConfig, hf_generate
from lmmixup.step import frozen_logprobs


def test_hf_engine_ignores_the_models_generation_config(tiny_model, tiny_tokenizer):
    # A checkpoint's generation_config may carry warpers the log-probs do not include; here one
    # that allows a single token. The engine must sample from the plain tempered distribution.
    tiny_model.generation_config.suppress_tokens = [i for i in range(tiny_model.config.vocab_size)
                                                    if i != 5]
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (2, 4))
    out = hf_generate(tiny_model, ids, torch.ones_like(ids), RolloutConfig(max_new_tokens=6), 2,
                      [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id)
    assert not (out.completion_ids == 5).all()


def test_engine_and_rollout_modules_do_not_import_each_other():
    code = ("import sys, lmmixup.engine; assert 'lmmixup.rollout' not in sys.modules; "
            "import lmmixup.rollout_batch, lmmixup.kernels")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)

    assert ENGINES["static"] is static_generate  # built in lmmixup/rollout.py, not on import
    RolloutConfig(engine="static").validate()


def test_bf16_rollouts_are_measured_against_the_fp32_trainer(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (2, 5))
    cfg = RolloutConfig(max_new_tokens=8)
    out = static_generate(tiny_model, ids, torch.ones_like(ids), cfg, 2, [], tiny_tokenizer.pad_token_id,
                          dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())  # the policy keeps fp32
    trainer = frozen_logprobs(tiny_model, out, 1.0, 8, 64)  # (N, T) fp32
    m = mismatch_stats(trainer, out.rollout_logp, out.completion_mask)
    # bf16 keeps 8 mantissa bits: the sampler's log-probs differ, but only by rounding
    assert 1e-4 < m.abs_diff_max < 0.5 and m.kl_k3 >= 0 and 0.5 < m.ess <= 1.0
    fp32 = static_generate(tiny_model, ids, torch.ones_like(ids), RolloutConfig(max_new_tokens=8), 2,
                           [], tiny_tokenizer.pad_token_id)
    exact = mismatch_stats(frozen_logprobs(tiny_model, fp32, 1.0, 8, 64), fp32.rollout_logp,
                           fp32.completion_mask)
    assert exact.abs_diff_max < 1e-4 < m.abs_diff_max  # fp32 matches up to kernel rounding
