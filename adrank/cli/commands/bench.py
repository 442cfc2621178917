"""`adrank bench kernels`: the paper's Figure 1 timing protocol on the serving kernels.

The benchmark lives in ``benchmarks/kernels.py`` and its options in ``benchmarks/kernels_cli.py``
(light at import); this module only hangs them under `adrank bench`.
"""

from __future__ import annotations

from benchmarks import kernels_cli

HELP = "benchmarks: `bench kernels` times FM / FwFM / pruned / DPLR scorers per auction (paper Fig. 1)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    kernels_cli.add_arguments(sub.add_parser("kernels", help=kernels_cli.HELP, description=kernels_cli.DESCRIPTION))


def run(args) -> int:
    from benchmarks import kernels  # numba, the serving kernels, matplotlib: only when benchmarking

    return kernels.run_command(args)
