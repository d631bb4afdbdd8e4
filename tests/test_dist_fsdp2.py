"""FSDP2 (`dist.strategy=fsdp2`) is exact too: 2 gloo ranks with sharded weights give one
process's weights and metrics, and a resumed 2-rank run repeats the uninterrupted one.

The update tests reuse tests/test_dist.py's harness (the same fixed global batch with uneven
completion lengths, the same cases, plain SGD at lr 3 so a normalisation error shows at full
size) with the policy wrapped by fully_shard instead of DDP. The one-process reference runs the
shared-prompt decoder while FSDP2 runs HF's decoder forward (lmmixup/dist/strategy.py explains
why), so the two differ by float rounding of the same math, on top of the reduction order.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_dist as harness
from conftest import ROOT

TOL = 1e-6  # as for DDP (the step moves the weights by ~0.1)


def _worker(rank, world_size, init_file, model, model_state, out_dir):
    import torch.distributed as tdist

    from lmmixup.dist.context import DistContext

    torch.set_num_threads(1)
    harness._CACHE["model"] = model
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world_size)
    try:
        for name in harness.CASES:
            harness._run_case(name, world_size, rank, model_state, out_dir,
                              DistContext(rank=rank, world_size=world_size, sampling_rng="group",
                                          strategy="fsdp2"))
        harness._run_sft(world_size, rank, model_state, out_dir,
                         DistContext(rank=rank, world_size=world_size, strategy="fsdp2"))
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp2_results(tmp_path_factory):
    import copy

    import torch.multiprocessing as mp
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmmixup.dist.context import LOCAL

    out = tmp_path_factory.mktemp("fsdp2_update")
    torch.manual_seed(0)
    harness._CACHE["model"] = LlamaForCausalLM(LlamaConfig(  # test_dist.py's 2-layer Llama
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0))
    state = copy.deepcopy(harness._CACHE["model"].state_dict())
    for name in harness.CASES:
        harness._run_case(name, 1, 0, state, out, LOCAL)
    harness._run_sft(1, 0, state, out, LOCAL)
    mp.spawn(_worker, args=(2, str(out / "pg_init"), harness._CACHE["model"], state, out),
             nprocs=2, join=True)
    return out, state


def test_fsdp2_nonfinite_loss_on_one_rank_skips_the_update_everywhere(fsdp2_results):
    out, start = fsdp2_results
    after = torch.load(out / "nonfinite_on_rank1-2.pt")
    assert all(torch.equal(after[k], start[k]) for k in start)  # weights untouched, no hang
    assert json.loads((out / "nonfinite_on_rank1-2.json").read_text())["updates"] == 0


@pytest.mark.parametrize("name", harness.FINITE)
def test_fsdp2_two_ranks_give_one_process_weights_and_metrics(fsdp2_results, name):
    out, start = fsdp2_results
    one, two = torch.load(out / f"{name}-1.pt"), torch.load(out / f"{name}-2.pt")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    assert moved > 1e-4  # the step did something
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"fsdp2 {name}: max |w_1 - w_2| = {worst:.3g}, the step moved {moved:.3g}")
    assert worst <= TOL, f"{name}: max |w_1 - w_2| = {worst:.3g} (the step moved {moved:.3g})"
    m1 = json.loads((out / f"{name}-1.json").read_text())
    m2 = json.loads((out / f"{name}-2.json").read_text())
    for key in ("loss", "kl", "entropy", "ratio_mean", "clip_frac_low", "clip_frac_high",
                "grad_norm", "updates"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key


def test_fsdp2_sft_two_ranks_give_one_process_weights(fsdp2_results):
    out, start = fsdp2_results
    one, two = torch.load(out / "sft-1.pt"), torch.load(out / "sft-2.pt")
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-4
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= TOL
    m1, m2 = (json.loads((out / f"sft-{w}.json").read_text()) for w in (1, 2))
    assert m1["tokens"] == m2["tokens"] == 24  # 6+1+2+5+3+1+2+4 global target tokens
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- train.py

FSDP2 = ["dist.strategy=fsdp2", "steps=2", "checkpoint.keep_last=2"]


def _torchrun(run_dir, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "train.py"), *harness.SMOKE, *FSDP2, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=harness._env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_run_resumed_from_its_step1_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """A kill right after the step-1 checkpoint, replayed: a second run resumes from the first
    run's step-1 DCP checkpoint (sharded model + AdamW state, scheduler, every rank's RNG) and
    must write the first run's step-2 metrics and final weights bit for bit. (Killing at a random
    time is tested for the shared checkpoint folder logic with DDP in test_dist.py.)"""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _torchrun(whole)
    step1 = whole / "checkpoints" / "step_000001"
    assert (step1 / "dcp" / ".metadata").is_file()  # torch.distributed.checkpoint's index
    assert not (step1 / "model.safetensors").exists()
    _torchrun(resumed, f"resume={step1}")
    assert harness._metrics(resumed) == harness._metrics(whole)[1:]  # step 2, bit-identical
    w1, w2 = harness._weights(whole), harness._weights(resumed)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
