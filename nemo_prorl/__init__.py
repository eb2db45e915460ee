"""nemo_prorl."""
