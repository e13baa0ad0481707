"""engine.evaluation.metrics against values worked out by hand (see the comments), plus statistical checks."""

import json
import math

import numpy as np
import pytest

from engine.evaluation import metrics as m

# Example A: 3 positives, 3 negatives, one tie across the classes at 0.6.
#   score  0.9 0.8 0.6 0.6 0.3 0.1
#   label   1   0   1   0   1   0
Y = [1, 0, 1, 0, 1, 0]
S = [0.9, 0.8, 0.6, 0.6, 0.3, 0.1]


def approx(x):
    return pytest.approx(x, abs=1e-12)


# ------------------------------------------------------------------ AUC and ROC

def test_auc_with_tie_counts_half():
    # Pairs (pos, neg) won: 0.9 beats 0.8, 0.6, 0.1 -> 3; 0.6 beats 0.1, ties 0.6 -> 1.5;
    # 0.3 beats 0.1 -> 1. Total 5.5 of 9 pairs = 11/18.
    assert m.roc_auc(Y, S) == approx(11 / 18)


def test_auc_perfect_reversed_and_all_tied():
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert m.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert m.roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5  # every pair tied: half credit


def test_auc_nan_when_a_class_is_absent():
    assert math.isnan(m.roc_auc([0, 0, 0], [0.1, 0.5, 0.9]))
    assert math.isnan(m.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))  # used to return 0.0


def test_roc_points():
    # thr >= 0.9: tp1 fp0; >= 0.8: tp1 fp1; >= 0.6: tp2 fp2; >= 0.3: tp3 fp2; >= 0.1: tp3 fp3
    fpr, tpr, thr = m.roc_curve(Y, S)
    assert thr.tolist() == [math.inf, 0.9, 0.8, 0.6, 0.3, 0.1]
    assert fpr * 3 == approx(np.array([0, 0, 1, 2, 2, 3]))
    assert tpr * 3 == approx(np.array([0, 1, 1, 2, 3, 3]))
    # The trapezoidal area under these points is the rank AUC: 1/9 + 1/6 + 1/3 = 11/18.
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == approx(11 / 18)


# ------------------------------------------------------------------ confusion

def test_confusion_includes_the_threshold_boundary():
    # >= 0.6 flags 0.9(1) 0.8(0) 0.6(1) 0.6(0): tp2 fp2; unflagged 0.3(1) 0.1(0): fn1 tn1
    assert m.confusion_at(Y, S, 0.6) == m.Confusion(tn=1, fp=2, fn=1, tp=2)
    # Just above 0.6 only 0.9 and 0.8 are flagged
    assert m.confusion_at(Y, S, 0.6000001) == m.Confusion(tn=2, fp=1, fn=2, tp=1)


def test_confusion_ratios():
    c = m.Confusion(tn=1, fp=2, fn=1, tp=2)
    assert c.sensitivity == approx(2 / 3)   # tp / (tp + fn)
    assert c.specificity == approx(1 / 3)   # tn / (tn + fp)
    assert c.ppv == approx(0.5)             # tp / (tp + fp) = 2/4
    assert c.npv == approx(0.5)             # tn / (tn + fn) = 1/2
    assert c.f1 == approx(4 / 7)            # 2tp / (2tp + fp + fn) = 4/7
    assert c.accuracy == approx(0.5)        # 3/6
    assert c.matrix() == [[1, 2], [1, 2]]


def test_ratios_nan_without_positives_or_flags():
    c = m.confusion_at([0, 0, 0], [0.1, 0.2, 0.3], 0.5)  # no positives, nothing flagged
    assert c == m.Confusion(tn=3, fp=0, fn=0, tp=0)
    assert math.isnan(c.sensitivity) and math.isnan(c.ppv) and math.isnan(c.f1)
    assert c.specificity == 1.0 and c.npv == 1.0 and c.accuracy == 1.0


def test_input_validation():
    with pytest.raises(ValueError, match="0 or 1"):
        m.confusion_at([0, 0.7], [0.1, 0.2], 0.5)  # not silently truncated to 0
    with pytest.raises(ValueError, match="NaN"):
        m.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="length"):
        m.roc_auc([0, 1, 1], [0.1, 0.2])


# ------------------------------------------------------------------ thresholds

def test_threshold_for_sensitivity():
    # Positives descending 0.9, 0.6, 0.3. Sens >= 0.6 needs 2 of 3 flagged -> 0.6 (sens 2/3).
    assert m.threshold_for_sensitivity(Y, S, 0.6) == 0.6
    assert m.threshold_for_sensitivity(Y, S, 2 / 3) == 0.6  # exactly 2/3, no rounding up to 3
    assert m.threshold_for_sensitivity(Y, S, 1.0) == 0.3
    with pytest.raises(ValueError, match="no positive"):
        m.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.threshold_for_sensitivity(Y, S, 1.5)


def test_threshold_for_specificity():
    # Negatives ascending 0.1, 0.6, 0.8. Spec >= 0.6 needs 0.1 and 0.6 unflagged: just above 0.6.
    t = m.threshold_for_specificity(Y, S, 0.6)
    assert 0.6 < t < 0.6000001
    c = m.confusion_at(Y, S, t)
    assert (c.specificity, c.sensitivity) == (approx(2 / 3), approx(1 / 3))
    # Spec >= 0.3 needs only 0.1 unflagged: everything else flagged, sens 1
    assert m.confusion_at(Y, S, m.threshold_for_specificity(Y, S, 0.3)).sensitivity == 1.0


def test_threshold_youden():
    # scores 0.1 0.2 0.3 0.4 0.5 0.8, labels 0 0 0 1 0 1 (2 pos, 4 neg)
    # J at >=0.8: .5-0 = .5; >=0.5: .5-.25 = .25; >=0.4: 1-.25 = .75 (max); >=0.3: 1-.5 = .5
    assert m.threshold_youden([0, 0, 0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.8]) == 0.4
    # Example A: J = 1/3 at both 0.9 and 0.3; the higher threshold wins the tie.
    assert m.threshold_youden(Y, S) == 0.9
    with pytest.raises(ValueError, match="both classes"):
        m.threshold_youden([1, 1], [0.2, 0.4])


# ------------------------------------------------------------------ precision-recall

def test_precision_recall_curve_and_average_precision():
    # >=0.9: P 1/1 R 1/3; >=0.8: P 1/2 R 1/3; >=0.6: P 2/4 R 2/3; >=0.3: P 3/5 R 1; >=0.1: P 1/2 R 1
    p, r, thr = m.precision_recall_curve(Y, S)
    assert thr.tolist() == [math.inf, 0.9, 0.8, 0.6, 0.3, 0.1]
    assert p == approx(np.array([1, 1, 1 / 2, 1 / 2, 3 / 5, 1 / 2]))
    assert r == approx(np.array([0, 1 / 3, 1 / 3, 2 / 3, 1, 1]))
    # AP = 1/3*1 + 0*1/2 + 1/3*1/2 + 1/3*3/5 + 0*1/2 = 1/3 + 1/6 + 1/5 = 0.7
    assert m.average_precision(Y, S) == approx(0.7)


def test_average_precision_perfect_and_nan():
    assert m.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert math.isnan(m.average_precision([0, 0], [0.1, 0.2]))


# ------------------------------------------------------------------ rules and operating points

def test_parse_rule_forms():
    assert m.parse_rule("youden") == ("youden", None)
    assert m.parse_rule("sensitivity>=0.95") == ("sensitivity", 0.95)
    assert m.parse_rule(" Specificity >= .9 ") == ("specificity", 0.9)
    assert m.parse_rule("fixed:0.5") == ("fixed", 0.5)


@pytest.mark.parametrize("bad", ["", "auc", "sensitivity>0.9", "sensitivity>=abc", "fixed=0.5"])
def test_parse_rule_unknown_lists_valid_forms(bad):
    with pytest.raises(ValueError, match='"youden", "sensitivity>=0.95", "specificity>=0.90"'):
        m.parse_rule(bad)


def test_parse_rule_target_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.parse_rule("specificity>=1.2")


def test_choose_threshold_and_presets():
    op = m.choose_threshold(Y, S, "sensitivity>=0.6")
    assert (op.rule, op.threshold) == ("sensitivity>=0.6", 0.6)
    assert op.confusion == m.confusion_at(Y, S, 0.6)
    fixed = m.choose_threshold(Y, S, "fixed:0.5")  # flags 0.9 0.8 0.6 0.6: tp2 fp2
    assert fixed.threshold == 0.5 and fixed.confusion == m.Confusion(tn=1, fp=2, fn=1, tp=2)
    pts = m.operating_points(Y, S)
    assert list(pts) == ["youden", "sensitivity>=0.95", "specificity>=0.90"]
    assert pts["youden"].threshold == 0.9
    assert pts["sensitivity>=0.95"].threshold == 0.3      # needs all 3 positives
    assert pts["specificity>=0.90"].confusion.fp == 0      # needs all 3 negatives unflagged
    json.dumps(pts["youden"].to_dict())


# ------------------------------------------------------------------ calibration

CAL_Y = [0, 0, 1, 0, 1, 1]
CAL_S = [0.05, 0.15, 0.25, 0.35, 0.75, 0.95]


def test_calibration_bins_uniform():
    # 4 bins [0,.25) [.25,.5) [.5,.75) [.75,1]: {.05,.15} {.25,.35} {} {.75,.95}
    b = m.calibration_bins(CAL_Y, CAL_S, n_bins=4)
    assert b.edges.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert b.counts.tolist() == [2, 2, 0, 2]
    assert b.mean_predicted[[0, 1, 3]] == approx(np.array([0.1, 0.3, 0.85]))
    assert b.observed_fraction[[0, 1, 3]] == approx(np.array([0, 0.5, 1]))
    assert np.isnan(b.mean_predicted[2]) and np.isnan(b.observed_fraction[2])
    # ECE = (2*|0-.1| + 2*|.5-.3| + 2*|1-.85|) / 6 = 0.9 / 6
    assert m.expected_calibration_error(CAL_Y, CAL_S, n_bins=4) == approx(0.15)
    # 2 bins: {.05..35}: mean .2 obs .25; {.75,.95}: mean .85 obs 1 -> (4*.05 + 2*.15)/6
    assert m.expected_calibration_error(CAL_Y, CAL_S, n_bins=2) == approx(0.5 / 6)


def test_calibration_bins_quantile_and_edges():
    # Median of the 6 scores is (.25+.35)/2 = .3: bins {.05,.15,.25} and {.35,.75,.95}
    b = m.calibration_bins(CAL_Y, CAL_S, n_bins=2, strategy="quantile")
    assert b.edges == approx(np.array([0, 0.3, 1]))
    assert b.counts.tolist() == [3, 3]
    assert b.observed_fraction == approx(np.array([1 / 3, 2 / 3]))
    assert m.calibration_bins([1], [1.0], n_bins=10).counts[-1] == 1  # 1.0 is in the last bin
    with pytest.raises(ValueError, match="probabilities"):
        m.calibration_bins([0, 1], [-0.1, 0.5])
    with pytest.raises(ValueError, match="strategy"):
        m.calibration_bins(CAL_Y, CAL_S, strategy="kmeans")


# ------------------------------------------------------------------ bootstrap

def _synthetic(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-rng.normal(1.2 * (2 * y - 1), 1.5)))


def test_bootstrap_is_stratified():
    # Each class is resampled to its own size, so the prevalence never changes: 2/6 always.
    assert m.bootstrap_ci(Y[:4] + [0, 0], S, lambda y, s: y.mean(), 200) == approx((1 / 3, 1 / 3))


def test_bootstrap_ci_contains_estimate_reproducible_and_narrows():
    y, s = _synthetic(200)
    lo, hi = m.bootstrap_ci(y, s, m.roc_auc, seed=1)
    assert lo < m.roc_auc(y, s) < hi
    assert m.bootstrap_ci(y, s, m.roc_auc, seed=1) == (lo, hi)
    assert m.bootstrap_ci(y, s, m.roc_auc, seed=2) != (lo, hi)
    big_lo, big_hi = m.bootstrap_ci(*_synthetic(2000), m.roc_auc, seed=1)
    assert big_hi - big_lo < 0.5 * (hi - lo)  # width shrinks ~ 1/sqrt(n)


def test_bootstrap_auc_fast_path_matches_generic_path():
    y, s = _synthetic(300)
    s = np.round(s, 1)  # many ties
    generic = m.bootstrap_ci(y, s, lambda a, b: m.roc_auc(a, b), 300, seed=4)
    assert m.bootstrap_ci(y, s, m.roc_auc, 300, seed=4) == approx(generic)


def test_threshold_metrics_with_ci_bootstraps_f1_and_gives_exact_intervals_for_proportions():
    y, s = _synthetic(300)
    out = m.threshold_metrics_with_ci(y, s, 0.5, n_resamples=300, seed=3)
    point = m.confusion_at(y, s, 0.5)
    for name in m.RATIO_NAMES:
        value, lo, hi = out[name]
        assert value == getattr(point, name) and lo <= value <= hi
    def f1(a, b):
        return m.confusion_at(a, b, 0.5).f1
    assert out["f1"][1:] == approx(m.bootstrap_ci(y, s, f1, 300, seed=3))
    assert out["sensitivity"][1:] == approx(m.clopper_pearson(point.tp, point.tp + point.fn))
    assert out["specificity"][1:] == approx(m.clopper_pearson(point.tn, point.tn + point.fp))


def test_clopper_pearson_against_hand_worked_values():
    # k = 0 or n: the bound is alpha/2 ** (1/n) away from the edge, (0.025)^(1/60) = 0.94037...
    assert m.clopper_pearson(60, 60) == approx((0.025 ** (1 / 60), 1.0))
    assert m.clopper_pearson(0, 60) == approx((0.0, 1 - 0.025 ** (1 / 60)))
    assert m.clopper_pearson(1, 1) == approx((0.025, 1.0))
    # 5 of 10: the published exact interval 0.187-0.813 (e.g. Newcombe 1998, table I)
    assert m.clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert m.clopper_pearson(17, 20) == pytest.approx((0.62107, 0.96793), abs=1e-5)
    assert all(math.isnan(v) for v in m.clopper_pearson(0, 0))


def test_no_false_positive_in_60_normals_is_not_a_point_interval():
    y = np.array([0] * 60 + [1] * 40)
    s = np.array([0.1] * 60 + [0.9] * 40)
    value, lo, hi = m.threshold_metrics_with_ci(y, s, 0.5)["specificity"]
    assert (value, hi) == (1.0, 1.0) and lo == pytest.approx(0.940, abs=1e-3)   # bootstrap said 1.000-1.000


def test_threshold_metrics_with_ci_is_nan_safe():
    y, s = _synthetic(1000)
    out = m.threshold_metrics_with_ci(y, s, 2.0)  # nothing flagged: ppv undefined everywhere
    assert all(math.isnan(v) for v in out["ppv"])          # nothing flagged: PPV is undefined
    value, lo, hi = out["specificity"]                      # every negative correctly unflagged
    assert (value, hi) == (1.0, 1.0) and lo == m.clopper_pearson(int((y == 0).sum()), int((y == 0).sum()))[0]


# ------------------------------------------------------------------ summary

def test_summarize_example():
    d = m.summarize(Y, S, 0.6, n_resamples=200)
    json.dumps(d)
    assert d["auc"] == approx(11 / 18) and d["average_precision"] == approx(0.7)
    assert d["confusion_matrix"] == [[1, 2], [1, 2]] and d["f1"] == approx(4 / 7)
    assert (d["n"], d["n_positive"], d["n_negative"], d["threshold"]) == (6, 3, 3, 0.6)
    lo, hi = d["auc_ci_95"]
    assert 0 <= lo <= d["auc"] <= hi <= 1
    # 10 bins: .1 -> obs 0; .3 -> 1; .6,.6 -> mean .6 obs .5; .8 -> 0; .9 -> 1
    # ECE = (.1 + .7 + 2*.1 + .8 + .1) / 6 = 1.9 / 6
    assert d["ece"] == approx(1.9 / 6)


def test_summarize_without_positives_is_nan_not_error():
    d = m.summarize([0, 0, 0], [0.1, 0.2, 0.7], 0.5)
    assert all(math.isnan(d[k]) for k in ("auc", "average_precision", "sensitivity"))
    assert all(math.isnan(v) for v in d["auc_ci_95"]) and d["specificity"] == approx(2 / 3)


# ------------------------------------------------------------------ temperature

@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(true_t):
    rng = np.random.default_rng(0)
    z_cal = rng.normal(0, 2, 20000)                           # calibrated logits
    y = (rng.random(z_cal.size) < 1 / (1 + np.exp(-z_cal))).astype(int)
    z = z_cal * true_t                                        # sigmoid(z / T) is calibrated
    assert m.fit_temperature(z, y) == pytest.approx(true_t, rel=0.08)
    logits = np.stack([np.zeros_like(z), z], axis=1)          # (n, 2) form gives the same T
    assert m.fit_temperature(logits, y) == pytest.approx(m.fit_temperature(z, y), rel=1e-9)


def test_fit_temperature_is_the_nll_minimum():
    z, y = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, -0.5]), np.array([0, 1, 0, 1, 1, 0])
    t = m.fit_temperature(z, y)

    def nll(temp):
        p = m.apply_temperature(z, temp)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert nll(t) <= min(nll(t * 0.99), nll(t * 1.01))


def test_fit_temperature_bounds():
    # Separable data: sharper is always better, T hits the lower bound.
    assert m.fit_temperature([-1.0, 1.0], [0, 1]) == 1e-2
    # Reversed logits carry no usable signal for T > 0: T hits the upper bound.
    assert m.fit_temperature([1.0, -1.0], [0, 1]) == 1e2


def test_delong_paired_test():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = y * 1.5 + rng.normal(size=400)
    weak = y * 0.5 + rng.normal(size=400)
    d = m.delong_test(y, good, weak)
    assert d["auc_a"] == approx(m.roc_auc(y, good)) and d["auc_b"] == approx(m.roc_auc(y, weak))
    assert d["difference"] > 0 and d["p"] < 1e-6 and d["ci_95"][0] > 0
    same = m.delong_test(y, good, good)
    assert same["difference"] == 0 and same["p"] == 1.0
    swapped = m.delong_test(y, weak, good)
    assert swapped["z"] == pytest.approx(-d["z"]) and swapped["p"] == pytest.approx(d["p"])
    # the DeLong variance of one AUC agrees with a stratified bootstrap's (within 20%)
    noisy = y * 0.8 + rng.normal(size=400)
    dl = m.delong_test(y, noisy, good)
    boot = [m.roc_auc(y[i], noisy[i]) - m.roc_auc(y[i], good[i])
            for i in (rng.integers(0, 400, 400) for _ in range(400))]
    assert (dl["ci_95"][1] - dl["ci_95"][0]) / 3.92 == pytest.approx(np.std(boot), rel=0.2)
