"""Adapters that bring ProRL's rewards, loss and reset into other RL stacks (TRL, verl, NeMo-RL)."""
