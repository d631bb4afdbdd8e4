"""The correctness gaps of issue 13's review, one test each (each failed on the code before its
fix, see docs/LOG.md 2026-12-02), and the tests the review found missing."""

import copy

import pytest
import torch

from conftest import ROOT
from lmmixup.grpo import AlgoConfig, LossNorm, aggregate, importance_log_ratio
from lmmixup.rollout import Rollout
from lmmixup.step import UpdateConfig, grpo_update


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


def test_changed_steps_or_device_is_refused_on_resume(tiny_model, tmp_path):
    from lmmixup.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
    from lmmixup.errors import LmmixupError

    opt, sched = _sgd(tiny_model)
    config = {"steps": 4, "device": "cpu", "algo": {"beta": 0.0}}
    ckpt = save_checkpoint(tmp_path, 2, tiny_model, opt, sched, {}, config, "", CheckpointConfig())
    for changed in ({**config, "steps": 8}, {**config, "device": "cuda"}):
        with pytest.raises(LmmixupError, match="different config"):
            load_checkpoint(ckpt, tiny_model, opt, sched, changed)


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
    from lmmixup.rollout import select_rows
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


def test_bnpo_is_trl_per_micro_batch_token_mean():
    # micro-batch 1: one token with loss 2; micro-batch 2: three tokens with loss 1 each.
    # bnpo (TRL): mean of the micro-batch token means = (2/1 + 3/3) / 2 = 1.5
    # dapo (token mean over the mini-batch) would give (2 + 3) / 4 = 1.25.
    norm = LossNorm(num_sequences=2, num_tokens=4, max_len=3, num_micro_batches=2)
    a = aggregate(torch.tensor([[2.0, 0, 0]]), torch.tensor([[1.0, 0, 0]]), norm, "bnpo")
    b = aggregate(torch.ones(1, 3), torch.ones(1, 3), norm, "bnpo")
    assert float(a + b) == 1.5


def test_importance_log_ratio_is_clamped_to_20():
    logp, old = torch.tensor([[0.0, -100.0]]), torch.tensor([[-100.0, 0.0]])  # log-ratios +-100
    out = importance_log_ratio(logp, old, torch.ones(1, 2), "token")
    assert out.tolist() == [[20.0, -20.0]]


def test_hf_engine_ignores_the_models_generation_config(tiny_model, tiny_tokenizer):
    from lmmixup.rollout import RolloutConfig, hf_generate

    # A checkpoint's generation_config may carry warpers the log-probs do not include; here one
    # that allows a single token. The engine must sample from the plain tempered distribution.
    tiny_model.generation_config.suppress_tokens = [i for i in range(tiny_model.config.vocab_size)
                                                    if i != 5]
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (2, 4))
    out = hf_generate(tiny_model, ids, torch.ones_like(ids), RolloutConfig(max_new_tokens=6), 2,
                      [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id)
    assert not (out.completion_ids == 5).all()


def test_reward_group_normalisation_uses_the_advantage_std():
    from lmmixup.rewards.registry import group_normalize

    # G = 2, scores 0 and 1: mean 0.5; Bessel std = sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.7071,
    # the same std as group_advantages; the population std (0.5) would give +-1.
    out = group_normalize(torch.tensor([0.0, 1.0]), 2, eps=1e-4)
    assert out.tolist() == pytest.approx([-0.5 / (0.5**0.5 + 1e-4), 0.5 / (0.5**0.5 + 1e-4)])


def test_overlong_max_tokens_follows_rollout_max_new_tokens():
    from hydra import compose, initialize_config_dir

    from lmmixup.config import register_configs, to_train_config

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = to_train_config(compose("config", overrides=["rollout.max_new_tokens=64"]))
    assert cfg.reward.overlong.max_tokens == 64


# ----------------------------------------------------------------------------- missing tests

def _fake_round(totals, t=3):
    """A rollout whose completion ids encode the reward (row n has ids == 10 * totals[n])."""
    n = len(totals)
    ids = torch.tensor([[int(10 * r)] * t for r in totals])
    return Rollout(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long), ids,
                   torch.ones(n, t), torch.zeros(n, dtype=torch.bool), rollout_logp=-torch.ones(n, t))


def test_collect_refills_dropped_groups_with_resample_rounds():
    from lmmixup.rewards.registry import RewardBatch
    from lmmixup.sampling.rounds import collect

    # G = 2, B = 3. Round 1 (3 prompts): groups [1,1] flat, [0,1], [2,2] flat -> keep 1, drop 2.
    # Round 2 (2 prompts): [3,4], [5,5] flat -> keep 1. Round 3 (1 prompt): [6,7] -> full.
    script = [[1, 1, 0, 1, 2, 2], [3, 4, 5, 5], [6, 7]]
    asked = []

    def next_rows(k):
        asked.append(k)
        return [f"p{len(asked)}.{i}" for i in range(k)]

    def sample_fn(rows):
        return _fake_round(script[len(asked) - 1])

    def score_fn(rollout, rows):
        total = rollout.completion_ids[:, 0].float() / 10  # (n,)
        n = len(total)
        texts = RewardBatch([r for r in rows for _ in range(2)], [str(float(x)) for x in total],
                            [None] * n, [None] * n, [3] * n)
        return texts, total, {"r": total * 2}

    algo = AlgoConfig(group_size=2, filter_zero_std_groups=True, max_resample_rounds=2)
    out = collect(next_rows, sample_fn, score_fn, 3, algo, pad_id=0)
    assert asked == [3, 2, 1] and out.rounds == 3 and out.dropped_groups == 3
    assert out.positions == [0, 1, 2]  # kept groups numbered in the order kept (mini-batches)
    assert out.total.tolist() == [0, 1, 3, 4, 6, 7]  # kept groups, in the order sampled
    assert out.components["r"].tolist() == [0, 2, 6, 8, 12, 14]
    assert out.texts.completions == ["0.0", "1.0", "3.0", "4.0", "6.0", "7.0"]
    assert out.texts.prompts == ["p1.1", "p1.1", "p2.0", "p2.0", "p3.0", "p3.0"]
    assert out.rollout.completion_ids[:, 0].tolist() == [0, 10, 30, 40, 60, 70]
    assert out.sampled_total.tolist() == [1, 1, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7]  # before filtering
    from lmmixup.step import frac_zero_std_groups
    assert frac_zero_std_groups(out.sampled_total, 2) == 3 / 6
    assert frac_zero_std_groups(out.total, 2) == 0.0

    # With one extra round only, the batch stays smaller than B.
    asked.clear()
    out = collect(next_rows, sample_fn, score_fn, 3,
                  AlgoConfig(group_size=2, filter_zero_std_groups=True, max_resample_rounds=1), 0)
    assert asked == [3, 2] and out.total.tolist() == [0, 1, 3, 4] and out.rounds == 2


def test_mask_truncated_drops_truncated_rows_from_the_loss():
    from lmmixup.step import loss_mask

    r = Rollout(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long),
                torch.ones(2, 3, dtype=torch.long), torch.tensor([[1.0, 1, 0], [1, 1, 1]]),
                torch.tensor([False, True]))
    assert loss_mask(r, AlgoConfig(mask_truncated=False)).tolist() == [[1, 1, 0], [1, 1, 1]]
    assert loss_mask(r, AlgoConfig(mask_truncated=True)).tolist() == [[1, 1, 0], [0, 0, 0]]


def test_lr_schedule_continues_exactly_across_a_resume(tiny_model, tmp_path):
    from lmmixup.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
    from lmmixup.optim import OptimConfig, build_scheduler, lr_factor

    cfg = OptimConfig(lr=1.0, warmup_frac=0.25, schedule="cosine")
    total = 8  # warm-up int(0.25 * 8) = 2 updates: factors 1/3, 2/3, then cosine over 6

    def run(opt, sched, k):
        lrs = []
        for _ in range(k):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    opt = torch.optim.SGD(tiny_model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total)
    first = run(opt, sched, 3)
    config = {"steps": 4, "device": "cpu"}
    ckpt = save_checkpoint(tmp_path, 3, tiny_model, opt, sched, {}, config, "", CheckpointConfig())
    opt2 = torch.optim.SGD(tiny_model.parameters(), lr=cfg.lr)
    sched2 = build_scheduler(opt2, cfg, total)
    load_checkpoint(ckpt, tiny_model, opt2, sched2, config)
    resumed = first + run(opt2, sched2, 5)
    expected = [lr_factor(u, total, cfg) for u in range(total)]
    assert resumed == pytest.approx(expected, abs=1e-12)
    assert expected[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # (u + 1) / (warmup + 1), cos(0)
    assert expected[5] == pytest.approx(0.5)  # progress (5 - 2) / 6 = 0.5: (1 + cos(pi/2)) / 2


def test_token_tis_and_seq_mask_by_hand():
    import math

    from lmmixup.grpo import rollout_is_weights

    # log rho = old - rollout per token: [log 3, log 0.5, 0] and [log 1.5, log 1.5, pad]
    rollout = torch.zeros(2, 3)
    old = torch.tensor([[math.log(3), math.log(0.5), 0.0], [math.log(1.5), math.log(1.5), 9.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    tis = rollout_is_weights(old, rollout, mask, "token_tis", cap=2.0)
    # min(rho, 2): 3 -> 2 (truncated), 0.5, 1 | 1.5, 1.5, pad 0; one of 5 real tokens truncated
    assert tis.weights.flatten().tolist() == pytest.approx([2.0, 0.5, 1.0, 1.5, 1.5, 0.0])
    assert tis.frac_tokens_truncated == pytest.approx(1 / 5)
    seq = rollout_is_weights(old, rollout, mask, "seq_mask", cap=1.4)
    # geometric means: row 0 (3 * 0.5 * 1)^(1/3) = 1.145 in [1/1.4, 1.4] -> kept;
    # row 1 (1.5 * 1.5)^(1/2) = 1.5 > 1.4 -> masked
    assert seq.weights.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert seq.frac_seqs_masked == 0.5
    none = rollout_is_weights(old, rollout, mask, "none", cap=2.0)
    assert none.weights.tolist() == mask.tolist()


def test_mismatch_stats_by_hand():
    import math

    from lmmixup.grpo import mismatch_stats

    # two sequences of one real token each; rho = 2 and 0.5 (log rho = +-log 2)
    old = torch.tensor([[math.log(2), 0.0], [math.log(0.5), 0.0]])
    m = mismatch_stats(old, torch.zeros(2, 2), torch.tensor([[1.0, 0], [1, 0]]))
    assert m.abs_diff_mean == pytest.approx(math.log(2)) and m.abs_diff_max == pytest.approx(math.log(2))
    # k3 = rho - 1 - log rho: (2 - 1 - 0.6931) + (0.5 - 1 + 0.6931) = 0.3069 + 0.1931 -> mean 0.25
    assert m.kl_k3 == pytest.approx(0.25, abs=1e-6)
    # chi2 token: ((2-1)^2 + (0.5-1)^2) / 2 = 0.625; one token per sequence: chi2 seq the same
    assert m.chi2_token == pytest.approx(0.625) and m.chi2_seq == pytest.approx(0.625)
    # ESS = (2 + 0.5)^2 / (2 * (4 + 0.25)) = 6.25 / 8.5
    assert m.ess == pytest.approx(6.25 / 8.5)
    assert (m.ratio_min, m.ratio_mean, m.ratio_max) == pytest.approx((0.5, 1.25, 2.0))


def test_token_tis_weight_multiplies_the_surrogate():
    from lmmixup.grpo import policy_loss

    logp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)
    norm = LossNorm(num_sequences=1, num_tokens=2, max_len=2, num_micro_batches=1)
    algo = AlgoConfig(beta=0.0, loss="dapo")
    # ratio 1, advantage 1: token loss -1 each; weights 2 and 0.5 -> (-2 - 0.5) / 2 = -1.25
    parts = policy_loss(logp, old, None, torch.ones(1), torch.ones(1, 2), algo, norm,
                        is_weights=torch.tensor([[2.0, 0.5]]))
    assert float(parts.loss.detach()) == -1.25


# ----------------------------------------------------------------------------- train.py, mu > 1

@pytest.fixture(scope="module")
def mu2_run(tmp_path_factory):
    """A real train.py run with mu = 2 and two mini-batches per iteration (4 updates a step),
    warm-up over half the run, and DAPO-style filtering allowed one extra round."""
    import json
    import subprocess
    import sys

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


def test_engine_and_rollout_modules_do_not_import_each_other():
    import subprocess
    import sys

    code = ("import sys, lmmixup.engine; assert 'lmmixup.rollout' not in sys.modules; "
            "import lmmixup.rollout_batch, lmmixup.kernels")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    from lmmixup.rollout import ENGINES, RolloutConfig
    from lmmixup.engine import static_generate

    assert ENGINES["static"] is static_generate  # built in lmmixup/rollout.py, not on import
    RolloutConfig(engine="static").validate()


def test_bf16_rollouts_are_measured_against_the_fp32_trainer(tiny_model, tiny_tokenizer):
    from lmmixup.engine import static_generate
    from lmmixup.grpo import mismatch_stats
    from lmmixup.rollout import RolloutConfig
    from lmmixup.step import frozen_logprobs

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
