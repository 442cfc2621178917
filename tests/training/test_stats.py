"""training/stats.py: Student's t p-values against tabulated critical values, the paired test and
its verdicts."""

from __future__ import annotations

import math

import pytest

from training.stats import betainc, paired, t_pvalue, verdict


@pytest.mark.parametrize("t,df,p", [(12.7062, 1, 0.05), (4.30265, 2, 0.05), (9.92484, 2, 0.01), (2.77645, 4, 0.05),
                                    (2.22814, 10, 0.05), (1.95996, 10**6, 0.05), (1.0, 1, 0.5), (0.0, 3, 1.0)])
def test_two_sided_p_values_match_t_tables(t, df, p):
    assert t_pvalue(t, df) == pytest.approx(p, rel=2e-4, abs=1e-12)
    assert t_pvalue(-t, df) == pytest.approx(p, rel=2e-4, abs=1e-12)


def test_incomplete_beta_identities():
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(1 - betainc(3.0, 2.0, 0.6))
    assert betainc(2.0, 1.0, 0.5) == pytest.approx(0.25)  # x^a for b = 1
    with pytest.raises(ValueError):
        betainc(1.0, 1.0, 1.5)


def test_paired_test_and_verdicts():
    d = [0.010, 0.012, 0.011]
    t = paired(d)
    sd = math.sqrt(sum((x - 0.011) ** 2 for x in d) / 2)
    assert t["mean"] == pytest.approx(0.011) and t["sd"] == pytest.approx(sd)
    assert t["t"] == pytest.approx(0.011 / (sd / math.sqrt(3))) and t["p"] < 0.01
    assert verdict(t) == "DPLR better" and verdict(paired([-x for x in d])) == "pruned better"
    assert verdict(paired([0.01, -0.002, 0.02])) == "tie (within seed spread)"  # seeds disagree
    assert verdict(paired([0.001, 0.02, 0.0005])) == "tie (within seed spread)"  # p >= 0.05
    assert verdict(paired([0.01])).endswith("(one seed: no test)")
    same = paired([0.01, 0.01])
    assert same["p"] == 0.0 and verdict(same) == "DPLR better"
