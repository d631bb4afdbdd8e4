"""FSDP2 (`dist.strategy=fsdp2`) is exact too: 2 gloo ranks with sharded weights give one
process's weights and metrics, and a resumed 2-rank run repeats the uninterrupted one.

The update tests reuse tests/test_dist.py's harness (the same fixed global batch with uneven
completion lengths, the same cases, plain SGD at lr 3 so a normalisation error shows at full
size) with the policy wrapped by fully_shard instead of DDP. The one-process reference runs the
shared-prompt decoder while FSDP2 runs HF's decoder forward (lmmixup/dist/strategy.py explains
why), so the two differ by float rounding of the same math, on top of the reduction order.
"""

import json
import os
import signal
import subprocess
import sys
import time
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
        _dapo_membership(world_size, rank, out_dir, DistContext(rank=rank, world_size=world_size))
    finally:
        tdist.destroy_process_group()


# ----------------------------------------------------------------------------- DAPO refill

DAPO_B, DAPO_M, DAPO_G = 8, 4, 2  # prompts per step, prompts per mini-batch, group size


def _dapo_membership(world_size, rank, out_dir, dist_ctx):
    """collect with DAPO's refill on a fake sampler: prompt p's group is flat when p % 3 == 0.
    Writes {prompt: global mini-batch} for this rank's kept groups (rank 0 gathers)."""
    from lmmixup.dist.shard import StepPrompts
    from lmmixup.grpo import AlgoConfig
    from lmmixup.rewards.registry import RewardBatch, RewardResult
    from lmmixup.rollout import Rollout
    from lmmixup.sampling.rounds import collect

    stream = iter(range(100))
    prompts = StepPrompts(lambda k: [next(stream) for _ in range(k)], 0, 1, block=DAPO_M,
                          world_size=world_size, rank=rank)

    class FakePolicy:  # the prompt is the completion; member j of a group is rewarded j
        def sample(self, rows, group_size, **kwargs):
            n = len(rows) * group_size
            ids = torch.tensor([[p] for p in rows for _ in range(group_size)])  # (n, 1)
            return Rollout(torch.ones(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long),
                           ids, torch.ones(n, 1), torch.zeros(n, dtype=torch.bool))

        def decode(self, rollout, rows, group_size):
            n = rollout.num_sequences
            return RewardBatch([str(p) for p in rows for _ in range(group_size)], ["x"] * n,
                               [None] * n, [None] * n, [1] * n)

    def score(texts, group_size):  # prompt p's group is flat when p % 3 == 0
        total = torch.tensor([float((n % group_size) * (int(p) % 3 != 0))
                              for n, p in enumerate(texts.prompts)])  # (n,)
        return RewardResult(total=total, components={"r": total})

    algo = AlgoConfig(group_size=DAPO_G, filter_zero_std_groups=True, max_resample_rounds=2)
    batch = collect(prompts, FakePolicy(), score, batch_prompts=DAPO_B, algo=algo,
                    max_prompt_tokens=64, pad_id=0, dist=dist_ctx)
    mine = {p: pos // DAPO_M for p, pos in zip(batch.rows, batch.positions)}
    parts = dist_ctx.gather_objects(mine)
    if rank == 0:
        merged = {p: k for part in parts for p, k in part.items()}
        (out_dir / f"refill-{world_size}.json").write_text(json.dumps(merged))
        (out_dir / f"refill-rows-{world_size}.json").write_text(json.dumps([p for part in parts
                                                                          for p in part]))


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
    _dapo_membership(1, 0, out, LOCAL)
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


def test_dapo_refill_gives_one_process_mini_batches_for_two_ranks(fsdp2_results):
    # Flat groups: p % 3 == 0. Round 1 draws 0..7 and keeps 1 2 4 5 7; round 2 draws 3 more
    # (8 9 10) and keeps 8 10; round 3 draws 1 (11) and keeps it: 8 groups. One process numbers
    # them in that order, so mini-batch 0 = {1, 2, 4, 5}, 1 = {7, 8, 10, 11}. Two ranks hold
    # rank 0: 1 4 5 | 8 and rank 1: 2 7 | 10 11 (round 1 by mini-batch blocks, refills split
    # contiguously); splitting each rank's rows in halves, as before, made mini-batch 0 =
    # {1, 4} + {2, 7}.
    out, _ = fsdp2_results
    expected = {1: 0, 2: 0, 4: 0, 5: 0, 7: 1, 8: 1, 10: 1, 11: 1}
    for world in (1, 2):
        got = {int(p): k for p, k in json.loads((out / f"refill-{world}.json").read_text()).items()}
        assert got == expected, world
    assert json.loads((out / "refill-rows-2.json").read_text()) == [1, 4, 5, 8, 2, 7, 10, 11]


def test_mini_batch_bounds_hand_computed():
    from lmmixup.step import mini_batch_bounds

    # rank 0 above: positions 0 2 3 5 (groups 1 4 5 8), 4 prompts a mini-batch, G = 2 ->
    # mini-batches 0 0 0 1 -> rows [0, 6) and [6, 8)
    assert mini_batch_bounds([0, 2, 3, 5], 2, 4) == [(0, 6), (6, 8)]
    # rank 1: positions 1 4 6 7 -> 0 1 1 1 -> rows [0, 2) and [2, 8)
    assert mini_batch_bounds([1, 4, 6, 7], 2, 4) == [(0, 2), (2, 8)]
    # a rank whose groups all sit in mini-batch 1: an empty range for mini-batch 0
    assert mini_batch_bounds([5, 6], 3, 4) == [(0, 0), (0, 6)]
    assert mini_batch_bounds([], 2, 4) == []


# ----------------------------------------------------------------------------- train.py

FSDP2 = ["dist.strategy=fsdp2", "steps=2", "checkpoint.keep_last=2"]


def _torchrun(run_dir, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "train.py"), *harness.SMOKE, *FSDP2, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=harness._env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted 2-rank FSDP2 run (2 steps, a checkpoint after each)."""
    run_dir = tmp_path_factory.mktemp("fsdp2_whole")
    _torchrun(run_dir)
    return run_dir


@pytest.mark.slow
def test_fsdp2_run_resumed_from_its_step1_checkpoint_equals_the_uninterrupted_run(tmp_path, whole):
    """A kill right after the step-1 checkpoint, replayed: a second run resumes from the first
    run's step-1 DCP checkpoint (sharded model + AdamW state, scheduler, every rank's RNG) and
    must write the first run's step-2 metrics and final weights bit for bit."""
    step1 = whole / "checkpoints" / "step_000001"
    assert (step1 / "dcp" / ".metadata").is_file()  # torch.distributed.checkpoint's index
    assert not (step1 / "model.safetensors").exists()
    _torchrun(tmp_path, f"resume={step1}")
    assert harness._metrics(tmp_path) == harness._metrics(whole)[1:]  # step 2, bit-identical
    w1, w2 = harness._weights(whole), harness._weights(tmp_path)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow
def test_fsdp2_run_sigkilled_mid_step_then_resumed_equals_the_uninterrupted_run(tmp_path, whole):
    """A real kill: SIGKILL to torchrun and both ranks while step 2 runs (after the step-1
    checkpoint is in place, before step 2's metrics line), then `resume=auto` in the same run
    folder. Whatever the kill left (a half-written .tmp-step_000002, a metrics file with one
    line), the resumed run must end with the uninterrupted run's metrics and weights, bit for
    bit."""
    proc = harness._torchrun(tmp_path, *FSDP2)
    ckpt = tmp_path / "checkpoints" / "step_000001" / "meta.json"
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.02)
    time.sleep(0.3)  # into step 2: its rollout or update (a step takes seconds here)
    assert proc.poll() is None, "the run finished before it could be killed"
    lines_at_kill = len(metrics.read_text().splitlines())
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks die together
    proc.wait()
    assert lines_at_kill == 1, "the kill did not land inside step 2"
    assert not (tmp_path / "model").exists()  # the final save never happened
    resumed = harness._torchrun(tmp_path, *FSDP2, "resume=auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert harness._metrics(tmp_path) == harness._metrics(whole)  # steps 1 and 2, bit-identical
    w1, w2 = harness._weights(whole), harness._weights(tmp_path)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
