"""Engine/trainer log-prob mismatch metrics (users.md issue 9).

The rollout engine samples with its own kernels (vLLM, bf16, different TP); the trainer recomputes the
log-probs of the same tokens. If the two disagree, the importance ratios of the policy loss are off and
training drifts silently. NeMo-RL's ``token_mult_prob_error`` is the standard gauge: the mean over
response tokens of ``exp(|logp_rollout - logp_train|)``, 1.0 when they agree exactly; NeMo-RL's docs
flag runs above 1.05.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MISMATCH_WARN_THRESHOLD = 1.05


def token_mult_prob_error(
    rollout_logprobs: torch.Tensor, train_logprobs: torch.Tensor, mask: torch.Tensor
) -> float:
    """Mean over masked tokens of ``exp(|logp_rollout - logp_train|)``.

    Args:
        rollout_logprobs: engine log-probs, ``[B, R]``.
        train_logprobs: trainer log-probs of the same tokens, ``[B, R]``.
        mask: ``[B, R]`` bool/0-1, true on response tokens.

    Returns:
        The metric (>= 1.0; exactly 1.0 for identical log-probs). NaN/inf log-probs on masked tokens
        propagate into the result, so a broken engine cannot look healthy.

    Raises:
        ValueError: shapes differ or the mask selects no token.

    """
    if rollout_logprobs.shape != train_logprobs.shape or rollout_logprobs.shape != mask.shape:
        raise ValueError(
            "token_mult_prob_error: shapes differ: rollout "
            f"{tuple(rollout_logprobs.shape)}, train {tuple(train_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    m = mask.bool()
    count = int(m.sum())
    if count == 0:
        raise ValueError("token_mult_prob_error: the mask selects no response token")
    diff = (rollout_logprobs.double() - train_logprobs.double())[m]
    return float(torch.exp(diff.abs()).mean())


def pad_logprobs(logprobs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ragged per-sample log-prob vectors into a batch.

    Args:
        logprobs: one ``[R_b]`` tensor per sample.

    Returns:
        ``(values [B, max R_b] float32, mask [B, max R_b] bool)``.

    """
    width = max((int(t.numel()) for t in logprobs), default=0)
    values = torch.zeros((len(logprobs), width), dtype=torch.float32)
    mask = torch.zeros((len(logprobs), width), dtype=torch.bool)
    for b, t in enumerate(logprobs):
        values[b, : t.numel()] = t.reshape(-1).float()
        mask[b, : t.numel()] = True
    return values, mask


def logprob_mismatch_metrics(
    rollout_logprobs: torch.Tensor,
    train_logprobs: torch.Tensor,
    mask: torch.Tensor,
    prefix: str = "rollout/",
) -> dict[str, float]:
    """The mismatch report logged every step.

    Non-finite log-probs are counted (``nonfinite_tokens``) and left out of the other statistics, so one
    bad token does not hide the state of the rest.

    Args:
        rollout_logprobs: ``[B, R]``.
        train_logprobs: ``[B, R]``.
        mask: ``[B, R]``, true on response tokens.
        prefix: metric name prefix.

    Returns:
        ``{prefix+"token_mult_prob_error", prefix+"logprob_abs_diff_mean", prefix+"logprob_abs_diff_max",
        prefix+"mismatch_frac_above_1.05", prefix+"nonfinite_tokens", prefix+"tokens"}``.

    """
    m = mask.bool()
    finite = torch.isfinite(rollout_logprobs) & torch.isfinite(train_logprobs)
    good = m & finite
    n_tokens = int(m.sum())
    out = {
        prefix + "tokens": float(n_tokens),
        prefix + "nonfinite_tokens": float(int((m & ~finite).sum())),
    }
    if int(good.sum()) == 0:
        out.update(
            {
                prefix + "token_mult_prob_error": float("nan"),
                prefix + "logprob_abs_diff_mean": float("nan"),
                prefix + "logprob_abs_diff_max": float("nan"),
                prefix + "mismatch_frac_above_1.05": float("nan"),
            }
        )
        return out
    absdiff = (rollout_logprobs.double() - train_logprobs.double())[good].abs()
    ratio = torch.exp(absdiff)
    out.update(
        {
            prefix + "token_mult_prob_error": float(ratio.mean()),
            prefix + "logprob_abs_diff_mean": float(absdiff.mean()),
            prefix + "logprob_abs_diff_max": float(absdiff.max()),
            prefix + "mismatch_frac_above_1.05": float((ratio > MISMATCH_WARN_THRESHOLD).double().mean()),
        }
    )
    return out
