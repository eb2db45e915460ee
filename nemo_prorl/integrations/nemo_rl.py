r"""ProRL's rewards and loss inside NeMo-RL: an environment and a ``LossFunction``.

Written against NeMo-RL (github.com/NVIDIA-NeMo/RL) at commit 7ea279abfbeb698b092856d0dab61e7cf39bc909;
NeMo-RL need not be installed to import this module (when it is, its own enums and ``EnvironmentReturn``
are used, so its ``loss_fn.loss_type == LossType.TOKEN_LEVEL`` checks see the real thing).

**Environment** (``nemo_rl/environments/interfaces.py``: ``EnvironmentInterface.step(message_log_batch,
metadata) -> EnvironmentReturn`` and ``global_post_process_and_metrics(batch) -> (batch, metrics)``).
:class:`ProRLEnvironment` scores each conversation's assistant turns (joined, as NeMo-RL's
``MathEnvironment`` does) against its metadata with a :class:`~nemo_prorl.rewards.pool.RewardPool`. A
metadata entry is one of our scoring rows without ``response`` (``{"domain": "code", "tests": [...]}``),
or NeMo-RL's math metadata ``{"ground_truth": "42"}`` (domain ``math``, or ``cfg["default_domain"]``).
A ``reward_model`` row with no ``prompt`` gets the conversation's user turns. Returns: ``rewards`` a float32
tensor ``[B]``, ``terminateds`` ones ``[B]`` (single turn), observations ``{"role": "environment",
"content": "Environment: correct" | "Environment: incorrect" [" (<status>)"]}``,
``next_stop_strings`` ``None`` each, ``answers`` ``None``. Register it as NeMo-RL registers its own
(``ray.remote(ProRLEnvironment)``).

**Loss** (``nemo_rl/algorithms/loss/interfaces.py``: ``LossFunction`` with ``loss_type``, ``input_type``
and ``__call__(data, global_valid_seqs, global_valid_toks, **kwargs) -> (loss, metrics)``; for
``input_type == LOGPROB`` NeMo-RL's ``prepare_loss_input`` (``nemo_rl/algorithms/loss/utils.py``) passes
``next_token_logprobs`` ``[B, S-1]``). :class:`ProRLLossFn` reads ``data`` the way NeMo-RL's
``ClippedPGLossFn`` does (``nemo_rl/algorithms/loss/loss_functions.py``): every ``[B, S]`` field is
shifted by one (``[:, 1:]``) to align with the next-token log-probs, and the mask is
``token_mask[:, 1:] * sample_mask[:, None]``; ``global_valid_toks`` / ``global_valid_seqs`` (the sums of
that mask / of ``sample_mask`` over all micro-batches and data-parallel ranks, as
``nemo_rl/models/megatron/data.py`` computes them) are the normalisers, so the micro-batch losses sum
to the full-batch loss. The loss is exactly :func:`~nemo_prorl.algorithms.policy_loss.prorl_loss`:
decoupled clip (``clip_low``/``clip_high``), optional dual clip, the aggregation of ``algorithm.loss.agg``
and the KL term ``kl.coef * agg(k3(logp, ref))`` from ``reference_policy_logprobs``. The entropy bonus
needs logits, which a LOGPROB loss does not receive: ``algorithm.entropy.coef > 0`` is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, NamedTuple

from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rewards.pool import RewardPool

try:  # the real enums and return type when NeMo-RL is installed
    from nemo_rl.algorithms.loss.interfaces import LossInputType, LossType
    from nemo_rl.environments.interfaces import EnvironmentInterface, EnvironmentReturn
except ImportError:  # same names and values as nemo_rl/algorithms/loss/interfaces.py
    class LossType(enum.Enum):  # type: ignore[no-redef]
        """Mirror of ``nemo_rl.algorithms.loss.interfaces.LossType``."""

        TOKEN_LEVEL = "token_level"
        SEQUENCE_LEVEL = "sequence_level"

    class LossInputType(enum.Enum):  # type: ignore[no-redef]
        """Mirror of ``nemo_rl.algorithms.loss.interfaces.LossInputType`` (the members used here)."""

        LOGIT = "logit"
        LOGPROB = "logprob"

    class EnvironmentReturn(NamedTuple):  # type: ignore[no-redef]
        """Mirror of ``nemo_rl.environments.interfaces.EnvironmentReturn`` (same fields, same order)."""

        observations: list
        metadata: list
        next_stop_strings: list
        rewards: Any
        terminateds: Any
        answers: list | None

    EnvironmentInterface = object  # type: ignore[misc,assignment]


# ------------------------------------------------------------------------------------------- environment

def conversation_row(message_log: list[Mapping[str, Any]], metadata: Mapping[str, Any] | None,
                     default_domain: str = "math") -> dict[str, Any]:
    """The scoring row of one NeMo-RL conversation (see the module docstring)."""
    meta = dict(metadata or {})
    row = {k: v for k, v in meta.items() if k != "ground_truth"}
    row.setdefault("domain", default_domain)
    if "ground_truth" in meta and "answer" not in row:
        row["answer"] = meta["ground_truth"]
    row["response"] = "".join(str(m["content"]) for m in message_log if m.get("role") == "assistant")
    if row["domain"] == "reward_model" and "prompt" not in row:
        row["prompt"] = [{"role": str(m["role"]), "content": str(m["content"])} for m in message_log
                         if m.get("role") in ("system", "user")]
    return row


def _verdict(status: str, score: float) -> str:
    if status != "ok":
        return f"Environment: incorrect ({status})"
    return "Environment: correct" if score > 0 else "Environment: incorrect"


class ProRLEnvironment(EnvironmentInterface):  # type: ignore[misc,valid-type]
    """A single-turn NeMo-RL environment scored by ProRL's rewards.

    Args:
        cfg: ``{"rewards": <rewards config mapping>, "default_domain": "math"}`` (both optional).

    """

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"rewards", "default_domain"})
        if unknown:
            raise ValueError(f"env.prorl: unknown key(s) {unknown}; known: ['default_domain', 'rewards']")
        self.default_domain = str(cfg.get("default_domain", "math"))
        self.pool = RewardPool(RewardsConfig.from_dict(cfg.get("rewards")))

    def step(self, message_log_batch: list[list[dict[str, Any]]],
             metadata: list[Mapping[str, Any] | None]) -> EnvironmentReturn:
        """Score one batch of finished conversations; every episode ends (``terminateds`` all 1)."""
        import torch

        if len(message_log_batch) != len(metadata):
            raise ValueError(f"step: {len(message_log_batch)} conversations but {len(metadata)} metadata")
        rows = [conversation_row(log, meta, self.default_domain)
                for log, meta in zip(message_log_batch, metadata)]
        results = self.pool.score(rows)
        fail = self.pool.config.failure_score
        rewards = torch.tensor([r.score if r.status == "ok" else fail for r in results], dtype=torch.float32)
        observations = [{"role": "environment", "content": _verdict(r.status, r.score)} for r in results]
        return EnvironmentReturn(observations=observations, metadata=list(metadata),
                                 next_stop_strings=[None] * len(rows), rewards=rewards,
                                 terminateds=torch.ones_like(rewards), answers=None)

    def global_post_process_and_metrics(self, batch: Any) -> tuple[Any, dict[str, float]]:
        """Metrics over a finished batch: mean reward (times ``is_end`` when present) and solve rate."""
        rewards = batch["rewards"].float()
        if "is_end" in batch:
            rewards = rewards * batch["is_end"].float()
        n = max(int(rewards.numel()), 1)
        return batch, {"accuracy": float(rewards.sum()) / n, "fraction_of_samples_properly_ended":
                       float(batch["is_end"].float().mean()) if "is_end" in batch else 1.0}

    def shutdown(self) -> None:
        """Stop the reward workers (NeMo-RL calls ``shutdown`` on its environments at the end)."""
        self.pool.close()


# -------------------------------------------------------------------------------------------------- loss

class ProRLLossFn:
    """The ProRL loss in NeMo-RL's ``LossFunction`` shape (``input_type`` LOGPROB).

    Args:
        cfg: an :class:`~nemo_prorl.algorithms.config.AlgorithmConfig` or its ``algorithm:`` mapping.

    Attributes:
        loss_type: ``TOKEN_LEVEL`` for ``token-mean``, ``SEQUENCE_LEVEL`` for the ``seq-mean-*`` modes.
        input_type: ``LOGPROB``.

    """

    input_type = LossInputType.LOGPROB

    def __init__(self, cfg: Any = None) -> None:
        from nemo_prorl.algorithms.config import AlgorithmConfig
        from nemo_prorl.config_schema import load

        self.cfg = cfg if isinstance(cfg, AlgorithmConfig) else load(
            AlgorithmConfig, dict(cfg) if cfg is not None else {}, "algorithm")
        if self.cfg.entropy.coef > 0:
            raise ValueError("algorithm.entropy.coef: the NeMo-RL loss receives next-token log-probs, not "
                             "logits, so it has no entropy; set it to 0")
        token_level = self.cfg.loss.agg == "token-mean"
        self.loss_type = LossType.TOKEN_LEVEL if token_level else LossType.SEQUENCE_LEVEL
        self.use_kl = self.cfg.kl.where == "loss" and self.cfg.kl.coef > 0

    def __call__(self, data: Mapping[str, Any], global_valid_seqs: Any, global_valid_toks: Any, *,
                 next_token_logprobs: Any, **_unused: Any) -> tuple[Any, dict[str, float]]:
        """Loss of one micro-batch, divided by the global normalisers; metrics are floats.

        Args:
            data: ``BatchedDataDict`` with ``[B, S]`` ``advantages``, ``prev_logprobs``, ``token_mask``,
                ``reference_policy_logprobs`` (when the KL term is on) and ``[B]`` ``sample_mask``.
            global_valid_seqs: valid sequences of the whole global batch (scalar tensor).
            global_valid_toks: valid tokens of the whole global batch (scalar tensor).
            next_token_logprobs: ``[B, S-1]`` current log-probs (differentiable).

        """
        from nemo_prorl.algorithms.policy_loss import prorl_loss

        lp = next_token_logprobs
        mask = data["token_mask"][:, 1:] * data["sample_mask"].unsqueeze(-1)
        ref = data["reference_policy_logprobs"][:, 1:] if self.use_kl else None
        old, adv = data["prev_logprobs"][:, 1:].to(lp.dtype), data["advantages"][:, 1:].to(lp.dtype)
        out = prorl_loss(lp, old, adv, mask, self.cfg, ref_logprobs=ref, num_tokens=global_valid_toks,
                         num_seqs=global_valid_seqs)
        metrics = {k: float(v) for k, v in out.metrics.items()}
        metrics["loss"] = float(out.loss.detach())
        metrics["num_valid_samples"] = float(data["sample_mask"].sum())
        return out.loss, metrics
