"""The statistics behind every comparison p3bench prints (``p3bench.stats``), against scipy and statsmodels
on fixed data, against naive loops, and by simulation: t intervals and p-values, Wilson intervals, power and
seeds needed, the two-level bootstrap's variance and coverage, Holm's correction, verdicts, and rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

from p3bench.stats.intervals import mean_and_se, wilson_interval
from p3bench.stats.paired import (
    BETTER,
    INCONCLUSIVE,
    WORSE,
    PairedComparison,
    compare_paired,
    hierarchical_bootstrap,
    holm_adjust,
    with_holm,
)
from p3bench.stats.power import minimum_detectable_difference, paired_t_power, seeds_needed
from p3bench.stats.ranking import rank_probabilities

METHOD = {0: 0.31, 1: 0.27, 2: 0.35, 3: 0.30, 4: 0.33}
REFERENCE = {0: 0.22, 1: 0.24, 2: 0.25, 3: 0.26, 4: 0.21}


def binomial_band(p: float, trials: int, n_sd: float = 4.0) -> float:
    """Half-width of a band of ``n_sd`` binomial standard errors around a rate ``p`` over ``trials``."""
    return n_sd * math.sqrt(p * (1 - p) / trials)


# ----------------------------------------------------------------------------------------------------------
# One run: Wilson and the standard error of a mean


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 37, 500])
def test_wilson_matches_statsmodels(n: int, confidence: float) -> None:
    for successes in sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
        low, high = wilson_interval(successes, n, confidence)
        ref_low, ref_high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
        assert low == pytest.approx(ref_low, abs=1e-12)
        assert high == pytest.approx(ref_high, abs=1e-12)


def test_wilson_edge_cases() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="outside"):
        wilson_interval(6, 5)


def test_mean_and_se_match_numpy_and_scipy() -> None:
    values = np.random.default_rng(0).normal(0.4, 0.2, 57)
    mean, se = mean_and_se(list(values))
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert se == pytest.approx(scipy.stats.sem(values), rel=1e-12)
    assert mean_and_se([2.5])[0] == 2.5 and math.isnan(mean_and_se([2.5])[1])
    assert all(math.isnan(v) for v in mean_and_se([]))


# ----------------------------------------------------------------------------------------------------------
# Paired comparisons: t interval, p-value, verdicts


def test_t_interval_and_p_value_match_scipy() -> None:
    seeds = sorted(METHOD)
    m = np.array([METHOD[s] for s in seeds])
    r = np.array([REFERENCE[s] for s in seeds])
    c = compare_paired(METHOD, REFERENCE, higher_is_better=True, method="p3", reference="random")
    d = m - r
    low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert c.t_low == pytest.approx(low, rel=1e-10)
    assert c.t_high == pytest.approx(high, rel=1e-10)
    assert c.p_value == pytest.approx(scipy.stats.ttest_rel(m, r).pvalue, rel=1e-10)
    assert c.mean_diff == pytest.approx(d.mean())
    assert c.sd_diff == pytest.approx(d.std(ddof=1))
    assert (c.method_mean, c.reference_mean) == (pytest.approx(m.mean()), pytest.approx(r.mean()))
    assert c.seeds == (0, 1, 2, 3, 4) and c.n_pairs == 5
    assert c.verdict == BETTER and c.seeds_needed is None
    assert c.mde == pytest.approx(minimum_detectable_difference(d.std(ddof=1), 5))
    # the 90% interval is inside the 95% one
    c90 = compare_paired(METHOD, REFERENCE, higher_is_better=True, confidence=0.9)
    assert c.t_low < c90.t_low < c90.t_high < c.t_high


def test_verdict_follows_the_metrics_direction() -> None:
    # a loss: the method's higher values are worse
    assert compare_paired(METHOD, REFERENCE, higher_is_better=False).verdict == WORSE
    # reversed roles: the reference beats the method
    assert compare_paired(REFERENCE, METHOD, higher_is_better=True).verdict == WORSE
    assert compare_paired(REFERENCE, METHOD, higher_is_better=False).verdict == BETTER


def test_null_effect_is_inconclusive_with_seeds_needed() -> None:
    method = {0: 0.30, 1: 0.26, 2: 0.33, 3: 0.29}
    reference = {0: 0.28, 1: 0.29, 2: 0.30, 3: 0.27}
    c = compare_paired(method, reference, higher_is_better=True)
    assert c.t_low < 0 < c.t_high and c.p_value > 0.05
    assert c.verdict == INCONCLUSIVE
    assert c.seeds_needed == seeds_needed(c.mean_diff, c.sd_diff)
    assert c.seeds_needed is not None and c.seeds_needed > c.n_pairs


def test_missing_or_nan_seed_drops_the_pair_not_the_method() -> None:
    method = {s: v for s, v in METHOD.items() if s != 3}
    reference = {**REFERENCE, 4: math.nan, 7: 0.5}
    c = compare_paired(method, reference, higher_is_better=True)
    assert c.seeds == (0, 1, 2) and c.n_pairs == 3
    full = compare_paired({s: METHOD[s] for s in (0, 1, 2)}, REFERENCE, higher_is_better=True)
    assert (c.mean_diff, c.t_low, c.t_high) == (full.mean_diff, full.t_low, full.t_high)


def test_one_pair_is_inconclusive_with_nan_interval() -> None:
    c = compare_paired({0: 0.9, 1: 0.8}, {0: 0.1}, higher_is_better=True)
    assert c.n_pairs == 1 and c.mean_diff == pytest.approx(0.8)
    assert c.verdict == INCONCLUSIVE
    for value in (c.sd_diff, c.t_low, c.t_high, c.p_value, c.boot_low, c.boot_high, c.mde):
        assert math.isnan(value)
    assert c.seeds_needed is None
    none = compare_paired({0: 0.9}, {1: 0.1}, higher_is_better=True)
    assert none.n_pairs == 0 and none.verdict == INCONCLUSIVE and math.isnan(none.mean_diff)


def test_zero_variance() -> None:
    # a constant non-zero difference (up to float rounding) is decisive: the interval is the point
    c = compare_paired({0: 1.0, 1: 1.1, 2: 1.3}, {0: 0.5, 1: 0.6, 2: 0.8}, higher_is_better=True)
    assert c.sd_diff == 0.0 and c.t_low == c.t_high == c.mean_diff == pytest.approx(0.5)
    assert c.p_value == 0.0 and c.verdict == BETTER and c.mde == 0.0 and c.seeds_needed is None
    assert compare_paired({0: 1.0, 1: 1.1}, {0: 0.5, 1: 0.6}, higher_is_better=False).verdict == WORSE
    # identical runs: no difference, inconclusive
    same = compare_paired(METHOD, METHOD, higher_is_better=True)
    assert same.mean_diff == 0.0 and same.p_value == 1.0 and same.verdict == INCONCLUSIVE
    assert same.seeds_needed is None


def test_to_row_is_flat() -> None:
    row = compare_paired(METHOD, REFERENCE, higher_is_better=True, method="p3", reference="random").to_row()
    assert row["seeds"] == "0 1 2 3 4" and row["method"] == "p3" and row["verdict"] == BETTER
    assert set(row) == {f.name for f in PairedComparison.__dataclass_fields__.values()}
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in row.values())


# ----------------------------------------------------------------------------------------------------------
# Power and seeds needed


# statsmodels' TTestPower takes scipy's noncentral t as it is, whose far tail is NaN at some points; where
# that happens its power is NaN and its solver stops early, so those points are checked by simulation below
STATSMODELS_NAN = {(2, 0.01), (3, 0.01)}


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_minimum_detectable_difference_matches_statsmodels(n: int, alpha: float) -> None:
    sd = 0.037
    mde = minimum_detectable_difference(sd, n, alpha=alpha)
    assert paired_t_power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-6)
    if (n, alpha) not in STATSMODELS_NAN:
        effect_size = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=0.8)
        assert mde == pytest.approx(effect_size * sd, rel=1e-5)


@pytest.mark.parametrize("effect_size", [0.1, 0.3, 0.5, 0.8, 1.2, 2.0])
def test_seeds_needed_matches_statsmodels(effect_size: float) -> None:
    sd = 0.02
    n_real = TTestPower().solve_power(effect_size=effect_size, nobs=None, alpha=0.05, power=0.8)
    assert seeds_needed(effect_size * sd, sd) == math.ceil(n_real)
    assert seeds_needed(-effect_size * sd, sd) == math.ceil(n_real)
    for n in (2, 4, 9):
        assert paired_t_power(effect_size * sd, sd, n) == pytest.approx(
            TTestPower().power(effect_size, n, 0.05), abs=1e-9
        )


def test_power_edge_cases() -> None:
    assert math.isnan(minimum_detectable_difference(1.0, 1))
    assert math.isnan(minimum_detectable_difference(math.nan, 5))
    assert minimum_detectable_difference(0.0, 5) == 0.0
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1.0, math.nan) is None
    assert seeds_needed(0.001, 1.0, max_seeds=1000) is None  # would need about 7.8 million
    assert seeds_needed(100.0, 1.0) == 2
    assert seeds_needed(10.0, 1.0) == 3  # two seeds give a power of about 0.73 at alpha 0.05
    assert seeds_needed(1.0, 0.0) == 2
    assert math.isnan(paired_t_power(1.0, 1.0, 1))
    assert paired_t_power(0.0, 0.0, 5) == 0.05 and paired_t_power(0.1, 0.0, 5) == 1.0
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_difference(1.0, 5, power=0.01)


TRIALS = 20_000


def rejection_rate(
    rng: np.random.Generator, effect: float, sd: float, seeds: int, alpha: float = 0.05
) -> float:
    """The share of ``TRIALS`` simulated sweeps (normal per-seed differences) whose paired t test rejects
    "no difference" at ``alpha``."""
    diffs = rng.normal(effect, sd, size=(TRIALS, seeds))
    return float((scipy.stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < alpha).mean())


@pytest.mark.parametrize(("n", "alpha"), [(3, 0.05), (5, 0.05), (10, 0.05), *sorted(STATSMODELS_NAN)])
def test_minimum_detectable_difference_matches_simulated_t_tests(n: int, alpha: float) -> None:
    """At the minimum detectable difference, about 80% of simulated sweeps reject (4 binomial sd)."""
    rng, sd = np.random.default_rng(n), 0.05
    rate = rejection_rate(rng, minimum_detectable_difference(sd, n, alpha=alpha), sd, n, alpha)
    assert rate == pytest.approx(0.8, abs=binomial_band(0.8, TRIALS))


def test_seeds_needed_matches_simulated_t_tests() -> None:
    """At the seeds needed for an effect the simulated power is the computed one (at least 0.8), one seed
    below it is the computed one (below 0.8)."""
    rng, sd = np.random.default_rng(1), 0.05
    effect = 1.1 * sd
    needed = seeds_needed(effect, sd)
    assert needed == 9
    for seeds in (needed, needed - 1):
        expected = paired_t_power(effect, sd, seeds)
        assert rejection_rate(rng, effect, sd, seeds) == pytest.approx(
            expected, abs=binomial_band(expected, TRIALS)
        )
    assert paired_t_power(effect, sd, needed - 1) < 0.8 <= paired_t_power(effect, sd, needed)


# ----------------------------------------------------------------------------------------------------------
# The bootstrap


def naive_replicate_variance(diffs: list[np.ndarray], shared: bool) -> float:
    """The exact variance of the two-level bootstrap's replicates (derivation in hierarchical_bootstrap)."""
    k, seed_means = len(diffs), np.array([d.mean() for d in diffs])
    seed_part = seed_means.var() / k
    if not shared:
        return seed_part + sum(d.var() / d.size for d in diffs) / k**2
    cov = np.cov(np.stack(diffs), ddof=0)
    weights = np.full((k, k), 1 - 1 / k) + np.eye(k)  # E[c_i c_j] under a multinomial(k, 1/k) draw
    return seed_part + float((weights * cov).sum()) / (diffs[0].size * k**2)


@pytest.mark.parametrize("shared", [False, True])
def test_bootstrap_variance_matches_its_formula(shared: bool) -> None:
    rng = np.random.default_rng(3)
    example_effect = rng.normal(0, 0.4, 60)
    diffs = [0.1 + rng.normal(0, 0.05) + example_effect + rng.normal(0, 0.3, 60) for _ in range(5)]
    replicates = hierarchical_bootstrap(diffs, shared_test_set=shared, n_boot=40_000, rng=rng)
    assert replicates.mean() == pytest.approx(np.mean([d.mean() for d in diffs]), abs=0.01)
    # the variance of 40000 replicates is within about 1% (one sd) of the truth
    assert replicates.var() == pytest.approx(naive_replicate_variance(diffs, shared), rel=0.05)


def test_bootstrap_without_example_noise_equals_the_seed_bootstrap() -> None:
    """Constant per-example differences: the two-level bootstrap draws the same seeds from the same stream
    as the seed-only one, so both intervals are equal."""
    per_example = {s: (np.full(40, METHOD[s]), np.full(40, REFERENCE[s])) for s in METHOD}
    seeds_only = compare_paired(METHOD, REFERENCE, higher_is_better=True, rng_seed=5)
    for shared in (False, True):
        both = compare_paired(
            METHOD,
            REFERENCE,
            higher_is_better=True,
            per_example=per_example,
            shared_test_set=shared,
            rng_seed=5,
        )
        assert both.boot_low == pytest.approx(seeds_only.boot_low, abs=1e-12)
        assert both.boot_high == pytest.approx(seeds_only.boot_high, abs=1e-12)
        assert both.bootstrap == f"seeds x examples ({'shared' if shared else 'nested'})"
    assert seeds_only.bootstrap == "seeds"


def test_bootstrap_design_default_and_bad_per_example() -> None:
    same = {s: (np.ones(10), np.zeros(10)) for s in METHOD}
    ragged = {s: (np.ones(10 + s), np.zeros(10 + s)) for s in METHOD}
    assert compare_paired(METHOD, REFERENCE, higher_is_better=True, per_example=same).bootstrap.endswith(
        "(shared)"
    )
    assert compare_paired(METHOD, REFERENCE, higher_is_better=True, per_example=ragged).bootstrap.endswith(
        "(nested)"
    )
    with pytest.raises(ValueError, match="same number of test examples"):
        compare_paired(METHOD, REFERENCE, higher_is_better=True, per_example=ragged, shared_test_set=True)
    with pytest.raises(ValueError, match="no arrays for paired seed 4"):
        compare_paired(METHOD, REFERENCE, higher_is_better=True, per_example={s: same[s] for s in range(4)})
    with pytest.raises(ValueError, match="same length"):
        compare_paired(
            METHOD, REFERENCE, higher_is_better=True, per_example={**same, 2: (np.ones(3), np.ones(4))}
        )


def simulated_coverage(crossed: bool, shared: bool, sweeps: int = 300) -> float:
    """The share of simulated sweeps whose 95% bootstrap interval covers the true mean difference.

    Each sweep: 5 seeds x 100 test examples; per-example difference = truth + seed effect (sd 0.02) +
    example effect (sd 0.5; the same examples for every seed when ``crossed``, fresh ones per seed
    otherwise) + seed-by-example noise (sd 0.2). The test set's sampling error dominates, as at p3bench's
    accuracies near the floor.
    """
    rng = np.random.default_rng(11)
    truth, k, n = 0.1, 5, 100
    covered = 0
    for sweep in range(sweeps):
        shared_examples = rng.normal(0, 0.5, n)
        per_example, method, reference = {}, {}, {}
        for seed in range(k):
            examples = shared_examples if crossed else rng.normal(0, 0.5, n)
            ref = rng.normal(0.3, 0.1, n)
            new = ref + truth + rng.normal(0, 0.02) + examples + rng.normal(0, 0.2, n)
            per_example[seed] = (new, ref)
            method[seed], reference[seed] = new.mean(), ref.mean()
        c = compare_paired(
            method,
            reference,
            higher_is_better=True,
            per_example=per_example,
            shared_test_set=shared,
            n_boot=1000,
            rng_seed=sweep,
        )
        covered += c.boot_low <= truth <= c.boot_high
    return covered / sweeps


def test_bootstrap_coverage_on_a_shared_test_set() -> None:
    """p3bench's design (every seed on the same test set): about 95% coverage, within 4 binomial sd of the
    simulation; drawing examples independently per seed would average the test set's error away."""
    sweeps = 300
    assert simulated_coverage(crossed=True, shared=True, sweeps=sweeps) == pytest.approx(
        0.95, abs=binomial_band(0.95, sweeps)
    )
    assert simulated_coverage(crossed=True, shared=False, sweeps=sweeps) < 0.95 - binomial_band(0.95, sweeps)


def test_bootstrap_coverage_on_test_sets_per_seed() -> None:
    """Each seed with its own test sample: the nested design counts example noise twice, so it covers at
    least 95% (within 4 binomial sd of the simulation)."""
    sweeps = 300
    assert simulated_coverage(crossed=False, shared=False, sweeps=sweeps) >= 0.95 - binomial_band(
        0.95, sweeps
    )


# ----------------------------------------------------------------------------------------------------------
# Holm


def test_holm_matches_statsmodels() -> None:
    rng = np.random.default_rng(0)
    cases = [
        rng.uniform(0, 0.1, 8),
        rng.uniform(0, 1, 12),
        np.array([0.01, 0.04, 0.04, 0.03, 0.5, 0.9, 1.0, 0.0]),
        np.array([0.2]),
    ]
    for p in cases:
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        assert holm_adjust(list(p)) == pytest.approx(list(expected), abs=1e-12)


def test_holm_nan_passes_through() -> None:
    p = [0.01, math.nan, 0.04, 0.03]
    adjusted = holm_adjust(p)
    assert math.isnan(adjusted[1])
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert [adjusted[0], adjusted[2], adjusted[3]] == pytest.approx(list(expected))
    assert holm_adjust([]) == []


def test_with_holm_rederives_verdicts() -> None:
    strong = {s: v + 0.1 + 0.01 * (s % 3) for s, v in REFERENCE.items()}
    clear = compare_paired(strong, REFERENCE, higher_is_better=True, method="clear")
    loss = compare_paired(strong, REFERENCE, higher_is_better=False, method="loss")
    # p about 0.046: better alone, not once six comparisons are read together
    marginal = compare_paired(
        {0: 0.30, 1: 0.33, 2: 0.29, 3: 0.35}, {0: 0.28, 1: 0.29, 2: 0.28, 3: 0.30}, higher_is_better=True
    )
    one_pair = compare_paired({0: 0.9}, {0: 0.1}, higher_is_better=True)
    family = [clear, loss, marginal, marginal, marginal, one_pair]
    assert marginal.verdict == BETTER and 0.01 < marginal.p_value < 0.05
    adjusted = with_holm(family)
    expected = holm_adjust([c.p_value for c in family])
    assert [c.p_holm for c in adjusted][:5] == pytest.approx(expected[:5])
    assert [c.verdict_holm for c in adjusted] == [
        BETTER,
        WORSE,
        INCONCLUSIVE,
        INCONCLUSIVE,
        INCONCLUSIVE,
        INCONCLUSIVE,
    ]
    assert math.isnan(adjusted[5].p_holm)
    assert [c.verdict for c in adjusted] == [c.verdict for c in family]  # the unadjusted verdicts stay
    assert family[0].p_holm is None  # the inputs are not modified


# ----------------------------------------------------------------------------------------------------------
# Rankings


def naive_rank_probabilities(values: dict, higher_is_better: bool, n_boot: int, rng_seed: int) -> dict:
    """One replicate at a time, with the same seed draws as rank_probabilities."""
    methods = list(values)
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    drawn = np.random.default_rng(rng_seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
    first = dict.fromkeys(methods, 0.0)
    rank_sum = dict.fromkeys(methods, 0.0)
    for row in drawn:
        means = {m: sum(values[m][seeds[i]] for i in row) / len(row) for m in methods}
        sign = 1 if higher_is_better else -1
        best = max(sign * v for v in means.values())
        winners = [m for m in methods if math.isclose(sign * means[m], best, rel_tol=1e-9)]
        for m in winners:
            first[m] += 1 / len(winners)
        for m in methods:
            ahead = sum(sign * means[o] > sign * means[m] for o in methods)
            tied = sum(math.isclose(means[o], means[m], rel_tol=1e-9) for o in methods)
            rank_sum[m] += ahead + (tied + 1) / 2
    return {m: (first[m] / n_boot, rank_sum[m] / n_boot) for m in methods}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_rank_probabilities_match_a_naive_loop(higher_is_better: bool) -> None:
    rng = np.random.default_rng(2)
    values = {m: {s: float(rng.normal(0.3 + 0.01 * i, 0.02)) for s in range(6)} for i, m in enumerate("abcd")}
    values["e"] = dict(values["b"])  # an exact tie with b
    values["a"][9] = 0.9  # a seed the others lack: ignored
    result = rank_probabilities(values, higher_is_better=higher_is_better, n_boot=300, rng_seed=4)
    naive = naive_rank_probabilities(values, higher_is_better, 300, 4)
    for m in values:
        assert result[m]["p_first"] == pytest.approx(naive[m][0], abs=1e-12)
        assert result[m]["mean_rank"] == pytest.approx(naive[m][1], abs=1e-12)
        assert result[m]["n_seeds"] == 6
    assert result["b"]["p_first"] == result["e"]["p_first"]
    assert sum(r["p_first"] for r in result.values()) == pytest.approx(1.0)


def test_rank_probabilities_dominant_and_identical_methods() -> None:
    values = {
        "strong": {s: 0.5 + 0.01 * s for s in range(5)},
        "twin_a": {s: 0.2 + 0.03 * (s % 2) for s in range(5)},
        "twin_b": {s: 0.2 + 0.03 * (s % 2) for s in range(5)},
    }
    result = rank_probabilities(values, higher_is_better=True)
    assert result["strong"]["p_first"] == 1.0 and result["strong"]["mean_rank"] == 1.0
    assert result["twin_a"]["mean_rank"] == result["twin_b"]["mean_rank"] == 2.5
    twins = {m: values[m] for m in ("twin_a", "twin_b")}
    split = rank_probabilities(twins, higher_is_better=True)
    assert split["twin_a"]["p_first"] == split["twin_b"]["p_first"] == 0.5
    # as a loss, the strong method is last every time
    assert rank_probabilities(values, higher_is_better=False)["strong"]["mean_rank"] == 3.0


def test_rank_probabilities_need_two_shared_seeds() -> None:
    result = rank_probabilities({"a": {0: 0.3, 1: 0.4}, "b": {1: 0.2, 2: 0.5}}, higher_is_better=True)
    assert result["a"]["n_seeds"] == 1 and math.isnan(result["a"]["p_first"])
    assert result["a"]["mean"] == 0.4
    assert rank_probabilities({}, higher_is_better=True) == {}


def test_a_difference_within_the_test_sets_error_is_not_a_verdict() -> None:
    """Every seed scored on the same 200 examples, whose per-example differences are large and the same for
    every seed: the seeds agree closely (the t interval excludes 0), but the test set cannot tell a
    difference of 0.01 from none (the bootstrap over examples includes 0): inconclusive, test-set limited."""
    rng = np.random.default_rng(5)
    example_noise = rng.normal(0.0, 1.0, 200)
    reference = rng.normal(0.0, 1.0, 200)
    per_example, method_values, reference_values = {}, {}, {}
    for seed in range(5):
        mine = reference + 0.01 + example_noise - example_noise.mean() + rng.normal(0, 1e-3)
        per_example[seed] = (mine, reference)
        method_values[seed], reference_values[seed] = float(mine.mean()), float(reference.mean())
    seeds_only = compare_paired(method_values, reference_values, higher_is_better=True)
    assert seeds_only.verdict == BETTER and not seeds_only.test_set_limited
    both = compare_paired(method_values, reference_values, higher_is_better=True, per_example=per_example)
    assert both.t_low > 0 and both.boot_low < 0 < both.boot_high
    assert both.verdict == INCONCLUSIVE and both.test_set_limited and both.seeds_needed is None
    assert with_holm([both])[0].verdict_holm == INCONCLUSIVE


def test_a_difference_holm_makes_inconclusive_gets_the_seeds_it_needs_at_holm_s_level():
    """Decisive alone, inconclusive over the family: the report's Holm reading gives the seeds needed at the
    level Holm holds it to (alpha * p / p_holm), more than the pairs it has, and not 'none'."""
    from p3bench.report.comparisons import _holm_verdict
    from p3bench.stats.paired import compare_paired, with_holm
    from p3bench.stats.power import seeds_needed

    reference = {0: 10.0, 1: 12.0, 2: 11.0}
    clear = compare_paired({0: 12.0, 1: 16.0, 2: 14.0}, reference, higher_is_better=False, n_boot=200)
    noise = [
        compare_paired(
            {0: 10.0 + d, 1: 12.0 - d, 2: 11.0 + 0.5 * d}, reference, higher_is_better=False, n_boot=200
        )
        for d in (1.0, 2.0, 3.0, 4.0, 5.0)
    ]
    assert clear.verdict == "worse" and clear.seeds_needed is None
    family = with_holm([clear, *noise])
    assert family[0].verdict_holm == "inconclusive"
    read = _holm_verdict(family[0])
    assert read.verdict == "inconclusive"
    alpha = 0.05 * family[0].p_value / family[0].p_holm
    assert read.seeds_needed == seeds_needed(clear.mean_diff, clear.sd_diff, alpha=alpha)
    assert read.seeds_needed is not None and read.seeds_needed > clear.n_pairs
    # a comparison inconclusive on its own keeps the seeds it had
    assert _holm_verdict(family[1]).seeds_needed == family[1].seeds_needed
