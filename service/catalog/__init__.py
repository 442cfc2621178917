"""The ad catalog: per-ad precomputed parts, catalog scoring kernels and the live store.

An ad registered once (id + item features) is encoded and reduced, per loaded model, to a
vector W_a and a constant c_a (precompute.py), so ranking it against a context costs one dot
product (kernels.py).  ``store.Catalog`` holds immutable snapshots swapped in one assignment;
``routes`` exposes /v1/ads and the /v1/rank resolver.
"""
