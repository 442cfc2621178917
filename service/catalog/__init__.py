"""The ad catalog: per-ad precomputed parts, catalog scoring kernels and the views a request reads.

An ad registered once (id + item features) is encoded and reduced, per served model version, to
a vector W_a and a constant c_a (precompute.py), so ranking it against a context costs one dot
product (kernels.py).  A catalog state is an immutable view of a base and a delta segment
(segments.py); store.py turns one view into the next (writes, reloads, merges); ranking.py scores
a request against one view; ``routes`` exposes /v1/ads.
"""
