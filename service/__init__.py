"""adrank service."""
