"""Training: the jitted step, the loop, optimizer, run directory, logs."""
