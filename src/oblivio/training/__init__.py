"""Training: networks, the deterministic loop, SISA slices and checkpoints."""
