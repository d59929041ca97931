"""Baselines the stack is compared against: what a user would write without it."""
