"""adrank service/kernels."""
