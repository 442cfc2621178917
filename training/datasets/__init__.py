"""Raw data sets: declared schemas (:mod:`.schemas`) and streaming parsers (:mod:`.readers`,
:mod:`.movielens`).  The public entry points are in :mod:`training.data`."""
