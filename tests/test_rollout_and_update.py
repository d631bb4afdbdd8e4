"""EOS masking, rollout plumbing and gradient-accumulation exactness on a tiny real model."""

import pytest
import torch

from lmmixup.grpo import AlgoConfig
from lmmixup.rollout import Rollout, completion_mask_from_stops, concat_rollouts, select_rows
from lmmixup.step import UpdateConfig, grpo_update


def test_completion_mask_includes_first_eos_and_nothing_after():
    ids = torch.tensor([[5, 2, 7, 2],   # stops at t=1: mask 1,1,0,0
                        [5, 6, 7, 8],   # never stops: all 1, truncated
                        [2, 0, 0, 0],   # stops at t=0: mask 1,0,0,0
                        [5, 6, 7, 3]])  # second stop id (3) at the last position
    mask, truncated = completion_mask_from_stops(ids, [2, 3])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True, False, False]


def _rollout(p_len, t_len, n, fill):
    return Rollout(prompt_ids=torch.full((n, p_len), fill), prompt_mask=torch.ones(n, p_len, dtype=torch.long),
                   completion_ids=torch.full((n, t_len), fill), completion_mask=torch.ones(n, t_len),
                   truncated=torch.zeros(n, dtype=torch.bool), rollout_logp=torch.zeros(n, t_len))


def test_concat_repads_prompts_left_and_completions_right():
    a, b = _rollout(2, 3, 1, 7), _rollout(4, 1, 1, 8)
    out = concat_rollouts([a, b], pad_id=0)
    assert out.prompt_ids.tolist() == [[0, 0, 7, 7], [8, 8, 8, 8]]
    assert out.prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out.completion_ids.tolist() == [[7, 7, 7], [8, 0, 0]]
    assert out.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert select_rows(out, torch.tensor([1])).completion_ids.tolist() == [[8, 0, 0]]


def _uneven_rollout(vocab: int, n: int = 6, p: int = 5, t: int = 7) -> Rollout:
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, vocab, (n, p), generator=g)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding on two rows
    prompt_mask[3, :4] = 0
    completion_ids = torch.randint(3, vocab, (n, t), generator=g)
    lengths = torch.tensor([7, 1, 4, 2, 6, 3])  # very uneven completion lengths
    completion_mask = (torch.arange(t)[None] < lengths[:, None]).float()
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   truncated=lengths == t, rollout_logp=None)


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_is_exact_for_any_split(tiny_model, loss):
    """One SGD(lr=1) update: the parameter change is minus the gradient. Splitting the same
    mini-batch into micro-batches of 1, 4 or 6 sequences must give the same change."""
    rollout = _uneven_rollout(tiny_model.config.vocab_size)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, -0.4])
    old = torch.full(rollout.completion_ids.shape, -11.0)  # ratios far from 1: clipping fires
    algo = AlgoConfig(group_size=2, beta=0.0, loss=loss)
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    deltas = []
    for micro in (6, 1, 4):
        tiny_model.load_state_dict(start)
        opt = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        grpo_update(tiny_model, opt, sched, rollout, adv, old_logp=old, ref_logp=None,
                    cfg=UpdateConfig(algo=algo, max_new_tokens=7, mini_batch_size=6,
                                     micro_batch_size=micro, temperature=1.0, chunk_size=5,
                                     max_grad_norm=0.0, update_slots=1))
        deltas.append(torch.cat([(p.detach() - start[n]).flatten()
                                 for n, p in tiny_model.named_parameters()]))
    assert deltas[0].abs().max() > 1e-4  # the update really moved the weights
    for other in deltas[1:]:
        assert torch.allclose(deltas[0], other, atol=1e-6, rtol=1e-4)


def test_nonfinite_gradient_skips_update(tiny_model):
    rollout = _uneven_rollout(tiny_model.config.vocab_size)
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    adv = torch.tensor([float("inf"), 1.0, 0.0, 0.0, 0.0, 0.0])  # inf advantage -> inf loss
    opt = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    stats = grpo_update(tiny_model, opt, sched, rollout, adv, old_logp=None, ref_logp=None,
                        cfg=UpdateConfig(algo=AlgoConfig(group_size=2, beta=0.0), max_new_tokens=7,
                                         mini_batch_size=6, micro_batch_size=3, temperature=1.0,
                                         chunk_size=64, max_grad_norm=1.0, update_slots=1))
    assert stats.updates == 0 and stats.skipped_nonfinite == ["loss"]
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, start[k])
