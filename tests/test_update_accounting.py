"""The GRPO update's accounting: every planned update slot moves the lr schedule (skipped or
filtered mini-batches included), a skipped mini-batch adds no stats, the logged lr is the rate the
update used, mask_truncated drops truncated rows; and train.py's mu > 1 mini-batch path end to end.
(Each failed on the code before its fix, docs/LOG.md 2026-12-02.)"""

import copy
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from lmmixup.grpo import AlgoConfig
from lmmixup.rollout import Rollout, select_rows
from lmmixup.step import UpdateConfig, grpo_update, loss_mask


def _rollout(vocab, n=6, p=4, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Rollout(torch.randint(3, vocab, (n, p), generator=g), torch.ones(n, p, dtype=torch.long),
                   torch.randint(3, vocab, (n, t), generator=g), torch.ones(n, t),
                   torch.zeros(n, dtype=torch.bool))


def _cfg(algo, mini, micro, slots=None, t=5):
    """UpdateConfig of these tests; slots default: one per mini-batch of 6 rows."""
    return UpdateConfig(algo=algo, max_new_tokens=t, mini_batch_size=mini, micro_batch_size=micro,
                        temperature=1.0, chunk_size=64, max_grad_norm=1.0,
                        update_slots=slots if slots is not None else -(-6 // mini))


def _sgd(model, lr=0.0, factor=lambda u: 1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def test_skipped_minibatch_consumes_its_schedule_slot(tiny_model):
    rollout = _rollout(tiny_model.config.vocab_size)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, float("inf")])  # the 2nd mini-batch is inf
    opt, sched = _sgd(tiny_model)
    grpo_update(tiny_model, opt, sched, rollout, adv, old_logp=None, ref_logp=None,
                cfg=_cfg(AlgoConfig(group_size=2, beta=0.0), mini=3, micro=2))
    assert sched.last_epoch == 2  # two planned updates, one skipped: the schedule moved by 2


def test_filtered_batch_still_advances_the_planned_slots(tiny_model):
    # The step planned 4 prompts x G=2 in mini-batches of 1 prompt: 4 slots; DAPO kept 2 prompts.
    rollout = _rollout(tiny_model.config.vocab_size, n=4)
    opt, sched = _sgd(tiny_model)
    stats = grpo_update(tiny_model, opt, sched, rollout, torch.tensor([1.0, -1.0, 1.0, -1.0]),
                        old_logp=None, ref_logp=None,
                        cfg=_cfg(AlgoConfig(group_size=2, beta=0.0), mini=2, micro=2, slots=4))
    assert stats.updates == 2 and sched.last_epoch == 4


def test_stats_of_a_skipped_minibatch_are_not_added(tiny_model):
    rollout = _rollout(tiny_model.config.vocab_size)
    ref = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) - 3.0  # (N, T) any values
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, float("inf")])
    algo = AlgoConfig(group_size=2, beta=0.1)
    twin = copy.deepcopy(tiny_model)
    opt, sched = _sgd(tiny_model)
    # mini-batches of 3 rows, micro-batches of 2: rows 3-4 are fine, row 5 is inf -> mb 2 skipped
    full = grpo_update(tiny_model, opt, sched, rollout, adv, old_logp=None, ref_logp=ref,
                       cfg=_cfg(algo, mini=3, micro=2))
    opt2, sched2 = _sgd(twin)
    first = grpo_update(twin, opt2, sched2, select_rows(rollout, torch.arange(3)), adv[:3],
                        old_logp=None, ref_logp=ref[:3], cfg=_cfg(algo, mini=3, micro=2))
    assert full.updates == first.updates == 1 and full.skipped_nonfinite == ["loss"]
    for name in ("kl", "entropy", "loss", "ratio_mean", "grad_norm"):
        assert getattr(full, name) == pytest.approx(getattr(first, name), rel=1e-6), name


def test_lr_is_the_rate_the_update_used(tiny_model):
    rollout = _rollout(tiny_model.config.vocab_size, n=4)
    opt, sched = _sgd(tiny_model, lr=1.0, factor=lambda u: (u + 1) / 4)  # 0.25, 0.5, ...
    stats = grpo_update(tiny_model, opt, sched, rollout, torch.tensor([1.0, -1.0, 1.0, -1.0]),
                        old_logp=None, ref_logp=None,
                        cfg=_cfg(AlgoConfig(group_size=2, beta=0.0), mini=4, micro=4, slots=1))
    assert sched.get_last_lr()[0] == 0.5  # what the old code logged: the *next* update's rate
    assert stats.lr == 0.25


def test_mask_truncated_drops_truncated_rows_from_the_loss():
    r = Rollout(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long),
                torch.ones(2, 3, dtype=torch.long), torch.tensor([[1.0, 1, 0], [1, 1, 1]]),
                torch.tensor([False, True]))
    assert loss_mask(r, AlgoConfig(mask_truncated=False)).tolist() == [[1, 1, 0], [1, 1, 1]]
    assert loss_mask(r, AlgoConfig(mask_truncated=True)).tolist() == [[1, 1, 0], [0, 0, 0]]


@pytest.fixture(scope="module")
def mu2_run(tmp_path_factory):
    """A real train.py run with mu = 2 and two mini-batches per iteration (4 updates a step),
    warm-up over half the run, and DAPO-style filtering allowed one extra round."""
    run_dir = tmp_path_factory.mktemp("mu2")
    args = ["experiment=smoke", "steps=2", "prompts_per_step=2", "mini_batch_prompts=1",
            "algo.group_size=2", "algo.beta=0.0", "algo.num_iterations=2", "optim.warmup_frac=0.5",
            "algo.filter_zero_std_groups=true", "algo.max_resample_rounds=1", "rollout.max_new_tokens=8",
            "checkpoint.every=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, rows


@pytest.mark.slow
def test_mu2_minibatch_path_of_train_py(mu2_run):
    run_dir, rows = mu2_run
    for r in rows:
        # old log-probs come from the engine (fp32 sampler), so the first update's ratio is the
        # engine-vs-trainer rounding only; the later three see a changed policy: ratio != 1
        assert r["grpo/updates"] == 4
        assert r["grpo/ratio_max"] > 1.0 + 1e-3 and abs(r["grpo/ratio_mean"] - 1.0) > 1e-5
        assert r["mismatch/abs_logp_diff_max"] == 0.0  # old_logp IS the sampler's log-probs
        for key in ("reward_sampled/total_mean", "grpo/frac_zero_std_groups_sampled",
                    "reward/total_mean", "grpo/frac_zero_std_groups"):
            assert key in r
    # 2 steps x 4 slots = 8 updates, warm-up int(0.5 * 8) = 4: step 1 uses factors 1/5..4/5
    # (mean 0.5), step 2 the constant 1; smoke's lr is 1e-3.
    assert rows[0]["grpo/lr"] == pytest.approx(0.5e-3) and rows[1]["grpo/lr"] == pytest.approx(1e-3)
    trainer = torch.load(sorted((run_dir / "checkpoints").iterdir())[-1] / "trainer.pt",
                         weights_only=True)
    assert trainer["scheduler"]["last_epoch"] == 8  # the horizon: every planned slot counted
