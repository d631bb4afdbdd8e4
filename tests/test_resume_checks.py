"""What a checkpoint refuses and what it restores exactly: a changed `steps` or `device` is
refused on resume, and the lr schedule continues across a resume as if never interrupted."""

import pytest
import torch

from lmmixup.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
from lmmixup.errors import LmmixupError
from lmmixup.optim import OptimConfig, build_scheduler, lr_factor


def _sgd(model, lr=0.0, factor=lambda u: 1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def test_changed_steps_or_device_is_refused_on_resume(tiny_model, tmp_path):
    opt, sched = _sgd(tiny_model)
    config = {"steps": 4, "device": "cpu", "algo": {"beta": 0.0}}
    ckpt = save_checkpoint(tmp_path, 2, tiny_model, opt, sched, {}, config, "", CheckpointConfig())
    for changed in ({**config, "steps": 8}, {**config, "device": "cuda"}):
        with pytest.raises(LmmixupError, match="different config"):
            load_checkpoint(ckpt, tiny_model, opt, sched, changed)


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
    ckpt = save_checkpoint(tmp_path, 3, tiny_model, opt, sched, {}, config, "", CheckpointConfig())
    opt2 = torch.optim.SGD(tiny_model.parameters(), lr=cfg.lr)
    sched2 = build_scheduler(opt2, cfg, total)
    load_checkpoint(ckpt, tiny_model, opt2, sched2, config)
    resumed = first + run(opt2, sched2, 5)
    expected = [lr_factor(u, total, cfg) for u in range(total)]
    assert resumed == pytest.approx(expected, abs=1e-12)
    assert expected[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # (u + 1) / (warmup + 1), cos(0)
    assert expected[5] == pytest.approx(0.5)  # progress (5 - 2) / 6 = 0.5: (1 + cos(pi/2)) / 2
