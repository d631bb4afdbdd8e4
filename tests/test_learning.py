"""A tiny random model must really learn under our GRPO loop, and every parameter must move."""

import torch

from lmmixup.data.prompts import STARTER_PROMPTS, load_rows
from lmmixup.grpo import AlgoConfig, group_advantages
from lmmixup.optim import OptimConfig, build_optimizer, build_scheduler
from lmmixup.rollout import RolloutConfig
from lmmixup.sampling.policy import Policy
from lmmixup.step import UpdateConfig, grpo_update


def space_fraction(text: str) -> float:
    """Learnable from scratch: about 10% of a random completion's characters are spaces, and
    the policy can raise that by preferring word-initial tokens."""
    return sum(c == " " for c in text) / max(1, len(text))


def test_tiny_model_learns_a_learnable_reward(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    rows = load_rows(str(STARTER_PROMPTS))
    G, B, T = 8, 4, 12
    algo = AlgoConfig(group_size=G, beta=0.0)
    rollout_cfg = RolloutConfig(max_new_tokens=T)
    opt_cfg = OptimConfig(lr=2e-2, weight_decay=0.0)
    optimizer = build_optimizer(tiny_model, opt_cfg)
    scheduler = build_scheduler(optimizer, opt_cfg, 100)
    policy = Policy.build(tiny_model, tiny_tokenizer, "cpu", rollout_cfg)
    start = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    means = []
    for step in range(30):
        batch_rows = [rows[(step * B + i) % len(rows)] for i in range(B)]
        rollout, texts = policy.generate(batch_rows, G, max_prompt_tokens=1024)
        rewards = torch.tensor([space_fraction(c) for c in texts.completions])
        means.append(float(rewards.mean()))
        grpo_update(tiny_model, optimizer, scheduler, rollout, group_advantages(rewards, G),
                    old_logp=None, ref_logp=None,
                    cfg=UpdateConfig(algo=algo, max_new_tokens=T, mini_batch_size=B * G,
                                     micro_batch_size=B * G, temperature=1.0, chunk_size=1024,
                                     max_grad_norm=1.0, update_slots=1))
    first, last = sum(means[:5]) / 5, sum(means[-5:]) / 5
    # Random text sits near 0.1; a policy that learned writes mostly word-initial tokens.
    assert last > first + 0.15, means
    for name, p in tiny_model.named_parameters():
        assert not torch.equal(p.detach(), start[name]), f"{name} never changed"
