"""KL penalty between the policy and the reference policy, per token.

With the log-ratio x = logp - ref_logp (input-clamped to [-input_clamp, input_clamp]):

* k1 = x
* k2 = x^2 / 2
* k3 = exp(-x) + x - 1 = exp(ref_logp - logp) - (ref_logp - logp) - 1   (Schulman; verl ``low_var_kl``)

then the estimate is clamped to [-output_clamp, output_clamp]. Tokens are sampled from the policy,
so each is an estimator of KL(pi || pi_ref); k3 is unbiased, non-negative and low-variance. The
penalty can go in the loss (ProRL) or be subtracted from the rewards (:func:`kl_reward_penalty`).
"""

from __future__ import annotations

import torch

from nemo_prorl.algorithms.config import KL_ESTIMATORS


def _safe_log_ratio(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape"
        )
    if mask is None:
        return logprobs - ref_logprobs
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of logprobs {tuple(logprobs.shape)}")
    keep = mask.bool()
    # Masked positions may hold -inf; select zeros there so neither value nor gradient is NaN.
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(keep, logprobs, zero) - torch.where(keep, ref_logprobs.to(logprobs.dtype), zero)


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str = "k3",
    *,
    mask: torch.Tensor | None = None,
    input_clamp: float | None = 20.0,
    output_clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token KL estimate of the policy against the reference.

    Args:
        logprobs: ``[...]`` log-probs of the sampled tokens under the policy (differentiable).
        ref_logprobs: ``[...]`` log-probs of the same tokens under the reference policy.
        estimator: ``k1``, ``k2`` or ``k3``.
        mask: optional ``[...]``; where 0 the result is exactly 0 (inputs there may be -inf).
        input_clamp: clamp of the log-ratio before the estimator; None = off.
        output_clamp: clamp of the estimate; None = off.

    Returns:
        ``[...]`` per-token estimate (zero gradient where a clamp is active).

    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of: {', '.join(KL_ESTIMATORS)}")
    x = _safe_log_ratio(logprobs, ref_logprobs, mask)
    if input_clamp is not None:
        x = x.clamp(-input_clamp, input_clamp)
    if estimator == "k1":
        kl = x
    elif estimator == "k2":
        kl = 0.5 * x * x
    else:
        kl = torch.exp(-x) + x - 1.0
    if output_clamp is not None:
        kl = kl.clamp(-output_clamp, output_clamp)
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return kl


def kl_reward_penalty(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    estimator: str = "k3",
    input_clamp: float | None = 20.0,
    output_clamp: float | None = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL as a reward penalty: ``r_i - coef * sum_t kl_{i,t}`` (no gradient flows).

    Outcome advantages such as GRPO see one scalar per response, so the per-token penalties are summed
    into the sequence reward (verl sums its token-level rewards the same way before GRPO).

    Args:
        rewards: ``[B]`` sequence rewards.
        logprobs: ``[B, T]`` policy log-probs of the response tokens.
        ref_logprobs: ``[B, T]`` reference log-probs.
        mask: ``[B, T]`` response mask.
        coef: penalty coefficient (>= 0).
        estimator: ``k1``, ``k2`` or ``k3``.
        input_clamp: see :func:`kl_penalty`.
        output_clamp: see :func:`kl_penalty`.

    Returns:
        ``(shaped_rewards [B], token_penalty [B, T])`` where ``token_penalty = coef * kl`` (0 where masked).

    """
    if coef < 0:
        raise ValueError(f"KL coefficient must be >= 0 (got {coef})")
    if rewards.dim() != 1 or logprobs.dim() != 2 or logprobs.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"expected rewards [B] and logprobs [B, T] "
            f"(got {tuple(rewards.shape)} and {tuple(logprobs.shape)})"
        )
    with torch.no_grad():
        kl = kl_penalty(
            logprobs.detach(),
            ref_logprobs,
            estimator,
            mask=mask,
            input_clamp=input_clamp,
            output_clamp=output_clamp,
        )
        penalty = coef * kl
        shaped = rewards - penalty.sum(dim=-1).to(rewards.dtype)
    return shaped, penalty


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution over the last dimension.

    For large vocabularies prefer :func:`~nemo_prorl.algorithms.logprobs.chunked_logprobs` with
    ``with_entropy=True``, which never materialises the full logits.

    Args:
        logits: ``[..., V]``.

    Returns:
        ``[...]`` entropy ``logsumexp(z) - sum softmax(z) * z``.

    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
