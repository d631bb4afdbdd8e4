"""Kill at any moment, resume, and get exactly the uninterrupted run's metrics."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from lmmixup.checkpoint import find_resume_checkpoint
from lmmixup.grpo import AlgoConfig
from lmmixup.step import UpdateConfig, grpo_update

ARGS = ["experiment=smoke", "steps=5", "checkpoint.every=1", "checkpoint.keep_last=2"]
TIMING_KEYS = ("time/", "rollout/tokens_per_s")


def start(run_dir, *extra):
    # Own session, so a kill can take the job's whole process group (its wandb-core service
    # included), as a scheduler's preemption or an OOM kill of the job does.
    # Without WANDB_SERVICE: an earlier in-process W&B test leaves pytest's own wandb-core
    # address there, a child would attach to it, and that long-lived service would keep the
    # killed child's run id "in use" for the resume (seen only in the full suite).
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, *extra,
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def metrics(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def wait_for_lines(run_dir, n, proc, timeout=240):
    path = Path(run_dir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    proc = start(run_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return metrics(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted, trial):
    rng = random.Random(trial)
    kill_after_lines = rng.randint(1, 4)
    proc = start(tmp_path, "logger=wandb")
    wait_for_lines(tmp_path, kill_after_lines, proc)
    time.sleep(rng.random() * 1.0)  # land anywhere in the next step, checkpoint writes included
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its W&B service die together
    proc.wait()
    resumed = start(tmp_path, "logger=wandb", "resume=auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    got = metrics(tmp_path)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]  # nothing duplicated, nothing missing
    assert got == uninterrupted  # bit-identical: exact float equality
    run_ids = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert run_ids == {(tmp_path / "wandb_id.txt").read_text().strip()}  # W&B run resumed


BF16 = ["precision.train=bf16", "precision.rollout=bf16"]  # smoke's fp32, overridden


@pytest.mark.slow
def test_bf16_sigkill_then_resume_is_bit_identical(tmp_path, tmp_path_factory):
    """Mixed precision keeps resume exact on one machine: bf16 autocast and the bf16 sampler
    are deterministic CPU kernels, the master weights and AdamW state are saved in fp32, and
    the sampler's copy is re-cast from them every step, so nothing bf16 needs saving."""
    full = tmp_path_factory.mktemp("full_bf16")
    proc = start(full, *BF16)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    uninterrupted = metrics(full)
    assert all(r["precision/train_bf16"] == 1.0 for r in uninterrupted)
    assert all(r["mismatch/abs_logp_diff_max"] > 0 for r in uninterrupted)  # bf16 did run
    proc = start(tmp_path, *BF16)
    wait_for_lines(tmp_path, 2, proc)
    time.sleep(random.Random(2).random() * 1.0)  # somewhere in step 3, or its checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = start(tmp_path, *BF16, "resume=auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    got = metrics(tmp_path)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert got == uninterrupted  # bit-identical: exact float equality


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    proc = start(tmp_path, "steps=50", "checkpoint.every=0")
    wait_for_lines(tmp_path, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = [r["step"] for r in metrics(tmp_path)]
    assert "stopped by SIGTERM" in err
    assert find_resume_checkpoint("auto", tmp_path).name == f"step_{steps[-1]:06d}"


def test_half_written_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_000003").mkdir(parents=True)
    (root / "step_000003" / "meta.json").write_text("{}")
    (root / ".tmp-step_000004-abc").mkdir()  # a save killed before its rename
    (root / ".tmp-step_000004-abc" / "meta.json").write_text("{}")
    (root / "step_000005").mkdir()  # a folder without meta.json is not a checkpoint
    assert find_resume_checkpoint("auto", tmp_path) == root / "step_000003"
    assert find_resume_checkpoint("", tmp_path) is None


def test_injected_inf_gradient_is_skipped(tiny_model):
    n, p, t = 4, 3, 5
    from lmmixup.rollout import Rollout

    rollout = Rollout(torch.randint(3, 100, (n, p)), torch.ones(n, p, dtype=torch.long),
                      torch.randint(3, 100, (n, t)), torch.ones(n, t), torch.zeros(n, dtype=torch.bool))
    start_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    layer = tiny_model.model.layers[0].mlp.up_proj.weight
    handle = layer.register_hook(lambda g: torch.full_like(g, float("inf")))
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = grpo_update(tiny_model, opt, sched, rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]),
                        old_logp=None, ref_logp=None,
                        cfg=UpdateConfig(algo=AlgoConfig(group_size=2, beta=0.0), max_new_tokens=t,
                                         mini_batch_size=n, micro_batch_size=n, temperature=1.0,
                                         chunk_size=64, max_grad_norm=1.0, update_slots=1))
    handle.remove()
    assert stats.updates == 0 and stats.skipped_nonfinite == ["gradient"]
    assert not opt.state  # AdamW never stepped: no moments were created
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, start_state[k]), k
