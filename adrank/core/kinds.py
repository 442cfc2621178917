"""The model kinds, in one table: what each kind is, what it carries in the artifact, and what
each layer needs to know about it.

A kind scores a row as ``b + sum_f lin_f + interaction(v_1, ..., v_m)`` over field vectors v_f
(DPLR-FwFM paper notation).  The layers read this table instead of listing kinds themselves:

* the trainer (training/models): which kinds exist, which take a rank rho (``ranked``), which
  have embeddings at all (``embedded``: logistic regression has none, so its artifact has the
  embedding type "none") and the names of the parameters a model exports beyond ``bias``,
  ``linear`` and ``emb`` (``params``: ``export_arrays()``, the exporter's input, tests/naive.py's
  layout);
* the exporter (exporter/fold.py): ``params`` to check, and ``low_rank``: an interaction of the
  form ``1/2 (sum_f d_f ||v_f||^2 + sum_r e_r ||sum_f U_rf v_f||^2)``, whose diagonal terms of
  single-valued fields fold into the linear weights; the other kinds weigh field pairs explicitly;
* the artifact format (artifact.py): ``arrays``, what the file carries for the kind beside the
  arrays every kind has and those of its embedding type;
* the service: a scorer per kind (service/kernels/registry.py) and the catalog's split of a model
  into a per-request and a per-ad part (service/catalog/precompute.py: ``low_rank`` again).

A new kind is one entry here, then its model (training/models), its folding (exporter/fold.py)
and its scorer (service/kernels); tests check that every layer covers every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

Shape: TypeAlias = tuple[int | str, ...]  # ints, manifest dimension names ("m", "rank", "n_pairs", ...) or "*"


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    ranked: bool  # takes a rank rho (DPLR: the rank of R's low-rank part; pruned: rho (m + 1) pairs kept)
    params: tuple[str, ...]  # trained parameters beyond bias, linear, emb
    arrays: dict[str, tuple[str, Shape]]  # artifact arrays beyond the common and embedding ones: name -> (dtype, shape)
    low_rank: bool  # interaction = 1/2 (sum_f d_f ||v_f||^2 + sum_r e_r ||P_r||^2); else explicit pair weights
    embedded: bool = True  # has embeddings (and interactions); False: b + sum_f lin_f only


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("lr", "logistic regression: bias and linear weights only, no interactions (Eq. 1), the floor",
         ranked=False, params=(), arrays={}, low_rank=False, embedded=False),
    Kind("fm", "factorization machine: every field pair weighted 1 (paper Eq. 2)",
         ranked=False, params=(), arrays={"d": ("float32", ("m",))}, low_rank=True),
    Kind("fwfm", "field-weighted FM: pair (i, j) weighted R_ij, the O(m^2 k) baseline (Eq. 3)",
         ranked=False, params=("R",), arrays={"R": ("float32", ("m", "m"))}, low_rank=False),
    Kind("pruned", "FwFM keeping the rho (m + 1) largest |R_ij| (Sec. 5.1), as a block-ordered pair list",
         ranked=True, params=("R", "mask"),
         arrays={"pair_i": ("int32", ("n_pairs",)), "pair_j": ("int32", ("n_pairs",)),
                 "pair_r": ("float32", ("n_pairs",))}, low_rank=False),
    Kind("dplr", "DPLR-FwFM: R = U^T diag(e) U + diag(d), rank rho (Eq. 9)",
         ranked=True, params=("U", "e"),
         arrays={"U": ("float32", ("rank", "m")), "e": ("float32", ("rank",)), "d": ("float32", ("m",))},
         low_rank=True),
)}
NAMES = tuple(KINDS)  # ("lr", "fm", "fwfm", "pruned", "dplr")
EMBEDDED = tuple(k for k in NAMES if KINDS[k].embedded)  # the kinds with embeddings


def get(name: str) -> Kind:
    """The kind called ``name``; a ValueError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model kind {name!r}; choose one of {NAMES}") from None
