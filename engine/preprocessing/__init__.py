"""Quality control and gene selection on raw counts, before training."""
