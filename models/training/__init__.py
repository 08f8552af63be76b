"""Training: options (``config``), cached features, the loop, checkpoints, fusion fitting."""
