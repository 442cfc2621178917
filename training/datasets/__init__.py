"""Raw data sets: declared schemas (:mod:`.schemas`) and streaming parsers (:mod:`.readers`,
:mod:`.movielens`).  The public entry points are in :mod:`training.data`."""

DATASETS = ("criteo", "avazu", "movielens", "synthetic")  # the names every command and module accepts
