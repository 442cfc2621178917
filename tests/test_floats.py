"""The ulp comparison the cross-path tests rely on."""

import numpy as np
import pytest

from tests.floats import assert_ulps_close


def test_last_bit_differences_pass_and_real_differences_fail():
    x = np.random.default_rng(0).normal(size=100)
    assert_ulps_close(np.nextafter(x, np.inf), x)  # one float64 ulp: the AVX-512 failure of issue 13
    y = x.astype(np.float32)
    assert_ulps_close(np.nextafter(np.nextafter(y, np.inf), np.inf), y)  # two float32 ulps
    with pytest.raises(AssertionError, match="differ by more than 4 ulps"):
        assert_ulps_close(x * (1 + 1e-5), x)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_ulps_close(x[:3], x)
    with pytest.raises(AssertionError, match="NaN"):
        assert_ulps_close(np.where(x > 0, np.nan, x), x)
