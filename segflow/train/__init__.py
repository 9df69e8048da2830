"""Training: the Ray-free core loop, losses, schedules and the Ray Train wiring."""
