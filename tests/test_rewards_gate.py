"""reward.combine=gate: quality and format pay only when the answer kept the reference's content.

The paper's sum lets a policy buy the learned quality score with the content (issue 24: GRPO
raised Q by 0.034 and lost 0.094 of A). These tests build the two answers that trade: a clean
one that drops the reference's answer, and a slightly noisy one that keeps it.
"""

import pytest
import torch

from lmmixup.errors import ConfigError
from lmmixup.rewards import RewardBatch, RewardConfig, build_rewards
from lmmixup.rewards.alignment import AlignmentConfig
from lmmixup.rewards.config import GateConfig
from lmmixup.rewards.registry import mix_rewards

PAPER = {"alignment": 0.4, "quality": 0.5, "format": 0.1}


def test_gate_by_hand():
    # three completions: A (binary), Q, F, no_answer
    comps = {"alignment": torch.tensor([1.0, 0.0, 0.0]),
             "quality": torch.tensor([0.3, 1.0, 0.0]),
             "format": torch.tensor([1.0, 1.0, 0.5]),
             "no_answer": torch.tensor([0.0, 0.0, -1.0])}
    weights = {**PAPER, "no_answer": 0.2}
    total_sum = mix_rewards(comps, RewardConfig(weights=weights), group_size=3)
    # sum: 0.4*1 + 0.5*0.3 + 0.1*1 = 0.65; 0 + 0.5 + 0.1 = 0.6; 0 + 0 + 0.05 - 0.2 = -0.15
    assert total_sum.tolist() == pytest.approx([0.65, 0.6, -0.15])
    total_gate = mix_rewards(comps, RewardConfig(weights=weights, combine="gate"), group_size=3)
    # gate (A >= 0.5): row 0 passes, 0.65 as before; row 1 fails: Q and F do not pay, 0;
    # row 2 fails: only the ungated penalty counts, 0.2 * -1 = -0.2
    assert total_gate.tolist() == pytest.approx([0.65, 0.0, -0.2])


def test_gate_reads_the_raw_score_before_group_normalisation():
    comps = {"alignment": torch.tensor([0.9, 0.7]), "quality": torch.tensor([0.0, 1.0])}
    cfg = RewardConfig(weights={"alignment": 1.0, "quality": 1.0}, combine="gate",
                       gate=GateConfig(threshold=0.8, gated=["quality"]),
                       normalize_per_group=True, group_norm_eps=1e-4)
    total = mix_rewards(comps, cfg, group_size=2)
    # normalised within the group of 2, Bessel-corrected std (the advantages' convention):
    # A: mean 0.8, std 0.1 * sqrt(2) = 0.1414 -> [+0.7071, -0.7071]; Q likewise -> [-0.7071, +0.7071]
    # raw A: 0.9 passes 0.8, 0.7 does not -> row 0: 0.7071 - 0.7071 = 0; row 1: -0.7071 + 0
    # (normalised A = +0.7071 would have failed a gate read after normalisation: it reads raw)
    assert total.tolist() == pytest.approx([0.0, -0.7071], abs=1e-3)


def test_a_clean_answer_that_drops_the_content_scores_below_a_noisy_one_that_keeps_it():
    """Real alignment (the packaged MiniLM, continuous) and format rewards; quality is set by
    hand to the learned scorer's worst case for this pair: the clean text 1, the noisy one 0.

    The gate reads continuous alignment at 0.9, not the paper's binary 0.8: the pair's cosine is
    dominated by the question both answers share, and the dropped answer still reaches 0.785
    (an answer about a sunny day, not printed here, reaches 0.808 and passes binary 0.8)."""
    reference = ("Q: Why is the sky blue?\nA: Sunlight scatters off the molecules of the air, and "
                 "blue light, with its shorter wavelength, scatters the most, so the sky looks blue.")
    clean_drop = "Q: Why is the sky blue?\nA: Because it reflects the ocean."
    noisy_keep = ("Q: why is the sky blue\nA: sunlight scatters off the molecules of the air and "
                  "blue light with its shorter wavelenght scatters the most, so the sky looks blue "
                  "i think")
    weights = {"alignment": 0.4, "format": 0.1}
    fns = build_rewards(RewardConfig(weights=weights, alignment=AlignmentConfig(mode="continuous")))
    batch = RewardBatch(prompts=["p"] * 2,
                        completions=[f"<think>\nok\n</think>\n\n<answer>\n{a}\n</answer>"
                                     for a in (clean_drop, noisy_keep)],
                        references=[reference] * 2, tasks=["para"] * 2, completion_tokens=[30, 30],
                        truncated=[False, False])
    comps = {name: torch.as_tensor(fns[name](batch), dtype=torch.float32) for name in weights}
    a = comps["alignment"].tolist()
    assert a[0] < 0.9 <= a[1], a  # measured: 0.785 and 0.956
    comps["quality"] = torch.tensor([1.0, 0.0])
    f = comps["format"].tolist()
    cfg_sum = RewardConfig(weights=dict(PAPER))
    cfg_gate = RewardConfig(weights=dict(PAPER), combine="gate", gate=GateConfig(threshold=0.9))
    total_sum = mix_rewards(comps, cfg_sum, group_size=2)
    total_gate = mix_rewards(comps, cfg_gate, group_size=2)
    # sum: clean_drop 0.4*0.785 + 0.5*1 + 0.1*F0 = 0.814 + 0.1*F0 against noisy_keep
    # 0.4*0.956 + 0.5*0 + 0.1*F1 = 0.382 + 0.1*F1: the drop wins
    assert total_sum.tolist() == pytest.approx([0.4 * a[0] + 0.5 + 0.1 * f[0], 0.4 * a[1] + 0.1 * f[1]])
    assert total_sum[0] > total_sum[1]
    # gate: clean_drop keeps only its alignment 0.4*0.785 = 0.314; noisy_keep 0.382 + 0.1*F1
    assert total_gate.tolist() == pytest.approx([0.4 * a[0], 0.4 * a[1] + 0.1 * f[1]])
    assert total_gate[1] > total_gate[0]


@pytest.mark.parametrize("overrides,key", [
    ({"combine": "product"}, "reward.combine"),
    ({"combine": "gate", "gate": GateConfig(reward="judge")}, "reward.gate.reward"),
    ({"combine": "gate", "gate": GateConfig(gated=["quality", "length"])}, "reward.gate.gated"),
    ({"combine": "gate", "gate": GateConfig(gated=["alignment"])}, "reward.gate.gated"),
])
def test_a_bad_gate_names_its_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RewardConfig(weights=dict(PAPER), **overrides).validate()
