"""Training: optimizer, train state, the sharded train step, the loop, checkpoints and logs."""
