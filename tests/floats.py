"""Comparing floats that two code paths computed: within a few ulps, never bit for bit.

The kernels are compiled with ``fastmath`` (reassociation allowed) and for the host's own
instruction set, so LLVM may order a reduction differently per variant (prefetch schedule,
thread slicing, read-only vs writable arrays, a vector body vs its scalar tail) and per CPU
(AVX2 vs AVX-512).  Two paths that run different machine code may therefore differ in the last
bits.  The unit is the ulp of the kernels' working precision (float32 embeddings and dot
products), at the magnitude of the value or 1, whichever is larger (scores are logits of order 1;
the floor keeps values near 0, where a cancellation leaves a small result, from demanding
sub-ulp agreement of the terms that cancelled).

Bitwise equality stays right where both sides run the same code on the same inputs (a
replayed request against the same compiled kernel, a copy of an array, an integer order).
"""

from __future__ import annotations

import numpy as np

ULPS = 4  # "a few": reassociating a k-long float32 sum moves its result by about this much


def ulp_tolerance(desired, ulps: int = ULPS, dtype=np.float32) -> np.ndarray:
    """Absolute tolerance of ``ulps`` ulps of ``dtype`` at ``max(|desired|, 1)``, elementwise."""
    scale = np.maximum(np.abs(np.asarray(desired, dtype=np.float64)), 1.0)
    return ulps * float(np.finfo(dtype).eps) * scale


def assert_ulps_close(actual, desired, ulps: int = ULPS, dtype=np.float32, err_msg: str = "") -> None:
    """``actual`` equals ``desired`` within ``ulps`` ulps of ``dtype`` (see the module docstring);
    shapes must match exactly and NaNs must sit at the same places."""
    a = np.asarray(actual, dtype=np.float64)
    d = np.asarray(desired, dtype=np.float64)
    assert a.shape == d.shape, f"shapes differ: {a.shape} vs {d.shape} {err_msg}"
    nan = np.isnan(d)
    assert np.array_equal(np.isnan(a), nan), f"NaNs at different places {err_msg}"
    diff = np.abs(a - d)[~nan]
    tol = ulp_tolerance(d, ulps, dtype)[~nan]
    bad = diff > tol
    if bad.any():
        i = int(np.argmax(diff - tol))
        raise AssertionError(f"{int(bad.sum())} of {diff.size} values differ by more than {ulps} ulps of "
                             f"{np.dtype(dtype).name}: worst |{a[~nan][i]!r} - {d[~nan][i]!r}| = {diff[i]:.3g} "
                             f"> {tol[i]:.3g} {err_msg}")
