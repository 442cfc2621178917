"""The names of the data sets adrank reads, defined once: every command's ``--dataset`` choices
and the trainer's readers (training/datasets: their schemas and parsers) use this tuple.  A name
is also recorded in an encoded data set's ``preprocess.json`` (docs/internals.md)."""

DATASETS = ("criteo", "avazu", "movielens", "synthetic")
