"""Evaluation: pass@k (unbiased, numerically stable) and checkpoint sampling/scoring reports."""

from nemo_prorl.eval.passk import pass_at_k, pass_at_k_curve

__all__ = ["pass_at_k", "pass_at_k_curve"]
