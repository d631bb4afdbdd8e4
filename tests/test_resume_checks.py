"""What a checkpoint refuses and what it restores exactly: a changed `steps` or `device` is
refused on resume, and the lr schedule continues across a resume as if never interrupted."""

import pytest
import torch

from lmmixup.checkpoint import CheckpointConfig, TrainState, load_checkpoint, save_checkpoint
from lmmixup.data.prompts import PromptSampler
from lmmixup.errors import LmmixupError
from lmmixup.optim import OptimConfig, build_scheduler, lr_factor


def _sgd(model, lr=0.0, factor=lambda u: 1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def test_changed_steps_or_device_is_refused_on_resume(tiny_model, tmp_path):
    opt, sched = _sgd(tiny_model)
    config = {"steps": 4, "device": "cpu", "algo": {"beta": 0.0}}
    state = TrainState(2, tiny_model, opt, sched, PromptSampler([], 0))
    ckpt = save_checkpoint(tmp_path, state, config=config, config_yaml="", cfg=CheckpointConfig())
    for changed in ({**config, "steps": 8}, {**config, "device": "cuda"}):
        with pytest.raises(LmmixupError, match="different config"):
            load_checkpoint(ckpt, state, config=changed)


def test_lr_schedule_continues_exactly_across_a_resume(tiny_model, tmp_path):
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
    ckpt = save_checkpoint(tmp_path, TrainState(3, tiny_model, opt, sched, PromptSampler([], 0)),
                           config=config, config_yaml="", cfg=CheckpointConfig())
    opt2 = torch.optim.SGD(tiny_model.parameters(), lr=cfg.lr)
    sched2 = build_scheduler(opt2, cfg, total)
    load_checkpoint(ckpt, TrainState(0, tiny_model, opt2, sched2, PromptSampler([], 0)),
                    config=config)
    resumed = first + run(opt2, sched2, 5)
    expected = [lr_factor(u, total, cfg) for u in range(total)]
    assert resumed == pytest.approx(expected, abs=1e-12)
    assert expected[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # (u + 1) / (warmup + 1), cos(0)
    assert expected[5] == pytest.approx(0.5)  # progress (5 - 2) / 6 = 0.5: (1 + cos(pi/2)) / 2


def test_train_state_round_trips_step_sampler_position_and_optimizer(tiny_model, tmp_path):
    """save_checkpoint(TrainState) then load_checkpoint into a fresh one gives back the step,
    the prompt sampler's position and the optimizer's moments, exactly."""
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    tiny_model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()  # AdamW now holds exp_avg / exp_avg_sq for every parameter
    sched.step()
    sampler = PromptSampler(list(range(5)), seed=7)
    sampler.next_batch(7)  # into the second epoch: epoch 1, position 2
    config = {"steps": 4, "device": "cpu"}
    ckpt = save_checkpoint(tmp_path, TrainState(3, tiny_model, opt, sched, sampler),
                           config=config, config_yaml="", cfg=CheckpointConfig())

    opt2 = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda u: 1.0)
    sampler2 = PromptSampler(list(range(5)), seed=7)
    loaded = load_checkpoint(ckpt, TrainState(0, tiny_model, opt2, sched2, sampler2), config=config)
    assert loaded.step == 3
    assert sampler2.state_dict() == sampler.state_dict() == {"epoch": 1, "position": 2, "seed": 7}
    assert sampler2.next_batch(4) == sampler.next_batch(4)  # the same prompts come next
    before, after = opt.state_dict(), opt2.state_dict()
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys() and before["state"]
    for k, moments in before["state"].items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(after["state"][k][name]),
                               torch.as_tensor(value)), name
    assert sched2.state_dict() == sched.state_dict()
