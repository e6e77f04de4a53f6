"""One module per payment provider (see shared/payments/registry.py)."""
