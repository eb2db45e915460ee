"""The ProRL trainer: the fit loop, resets, run phases, checkpoints/resume, logging and plots."""
