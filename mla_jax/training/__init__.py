"""Training: optimizer and schedule, train state and step, loop, checkpoints, metric writers."""
