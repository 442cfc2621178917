"""adrank exporter."""
