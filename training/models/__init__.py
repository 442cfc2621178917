"""adrank training/models."""
