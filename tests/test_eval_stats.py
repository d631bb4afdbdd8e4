"""The bootstrap CIs against hand-computed cases and against their definition."""

import numpy as np
import pytest

from lmmixup.eval.stats import bootstrap_mean_ci, excludes_zero, paired_bootstrap_ci


def test_constant_values_give_a_zero_width_interval():
    # Every resample of [0.5, 0.5, 0.5] has mean 0.5, so low = high = estimate = 0.5.
    ci = bootstrap_mean_ci([0.5, 0.5, 0.5])
    assert (ci.estimate, ci.low, ci.high, ci.n) == (0.5, 0.5, 0.5, 3)


def test_two_point_case_by_hand():
    # values [0, 1]: a resample of 2 rows has mean 0 (p = 1/4), 0.5 (p = 1/2) or 1 (p = 1/4).
    # So the 2.5% quantile is 0 and the 97.5% quantile is 1; the estimate is 0.5.
    ci = bootstrap_mean_ci([0.0, 1.0], n_boot=20_000)
    assert ci.estimate == 0.5 and ci.low == 0.0 and ci.high == 1.0


def test_paired_difference_by_hand():
    # a - b = [1, 1, 1, 1]: a constant difference, so every paired resample gives exactly 1,
    # although a and b each vary a lot. Unpaired, the CI of mean(a) - mean(b) would be wide.
    a = [1.0, 3.0, 5.0, 9.0]
    b = [0.0, 2.0, 4.0, 8.0]
    ci = paired_bootstrap_ci(a, b)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    assert excludes_zero(ci)


def test_paired_matches_a_naive_loop():
    # The vectorised resampling against an explicit loop with the same generator draws.
    rng = np.random.default_rng(3)
    a, b = rng.random(16), rng.random(16)
    ci = paired_bootstrap_ci(a, b, n_boot=500, seed=7)
    draw = np.random.default_rng(7).integers(0, 16, size=(500, 16))
    naive = [np.mean([a[i] - b[i] for i in row]) for row in draw]
    low, high = np.quantile(naive, [0.025, 0.975])
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)


def test_noise_at_n16_is_not_a_difference():
    # Two systems that differ by 0.05 on 16 binary rows (one row of 16 flips, 1/16 = 0.0625):
    # the paired CI must include 0.
    a = [1.0] * 8 + [0.0] * 8
    b = [1.0] * 7 + [0.0] * 9
    ci = paired_bootstrap_ci(a, b)
    assert ci.estimate == pytest.approx(1 / 16) and not excludes_zero(ci)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


# --- power --------------------------------------------------------------------------------

def test_binary_paired_floor_by_hand_and_against_the_bootstrap():
    from lmmixup.eval.stats import binary_paired_floor

    # n = 50: a resample misses all k one-way flips with probability (1 - k/50)^50:
    # k = 3: 0.94^50 = e^(50 ln 0.94) = e^-3.094 = 0.0453 > 0.025, so the CI's low end is 0;
    # k = 4: 0.92^50 = e^-4.169 = 0.0155 < 0.025, so it is not. The floor is 4/50 = 0.08.
    assert binary_paired_floor(50) == 0.08
    # n = 4: k = 2 gives 0.5^4 = 0.0625, k = 3 gives 0.25^4 = 0.0039: floor 3/4.
    assert binary_paired_floor(4) == 0.75
    # The bootstrap itself agrees: 3 flips of 50 leave 0 in the paired CI, 4 do not.
    zeros = [0.0] * 50
    three = [1.0] * 3 + [0.0] * 47
    four = [1.0] * 4 + [0.0] * 46
    assert paired_bootstrap_ci(three, zeros).low == 0.0
    assert paired_bootstrap_ci(four, zeros).low > 0.0


def test_unpaired_difference_half_width_against_its_formula():
    from lmmixup.eval.stats import unpaired_difference_half_width

    # Constant scores: every resample has the same mean, the difference is always 0.
    assert unpaired_difference_half_width([0.7] * 20) == 0.0
    # 50 zeros and 50 ones: s = 0.5 (population sd), n = 100, so the difference of two
    # independent means has sd sqrt(2) * 0.5 / 10 = 0.0707 and the 95% half-width is about
    # 1.96 * 0.0707 = 0.1386. Resampled means move in steps of 1/100, so allow one step.
    h = unpaired_difference_half_width([0.0, 1.0] * 50, n_boot=10_000, seed=0)
    assert h == pytest.approx(1.96 * 2 ** 0.5 * 0.5 / 10, abs=0.01)
    # Paired on itself, the same scores give a zero-width CI: the unpaired figure is what
    # the estimate stands for, not this.
    assert paired_bootstrap_ci([0.0, 1.0] * 50, [0.0, 1.0] * 50).low == 0.0
    # Another seed moves the estimate by less than one step.
    assert unpaired_difference_half_width([0.0, 1.0] * 50, n_boot=10_000, seed=1) == \
        pytest.approx(h, abs=0.01)
