"""adrank: low-latency ad ranking with DPLR-FwFM, pruned FwFM and FM models."""

__version__ = "0.1.0"
