"""Numba scoring kernels: one module per model family, `registry.make_scorer` picks one by kind."""
