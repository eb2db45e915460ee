"""Adapters that bring ProRL's rewards, loss and reset into other RL trainers (TRL, verl, NeMo-RL).

Each submodule imports its trainer library lazily; none is a dependency of nemo_prorl.
"""
