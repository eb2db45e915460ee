"""CPU benchmark suite: nemo_prorl side by side with its peers (see benchmarks/RESULTS.md)."""
