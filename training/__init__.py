"""adrank training."""
