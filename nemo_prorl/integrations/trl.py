"""ProRL inside TRL's ``GRPOTrainer``: verifiable rewards as reward functions, and the hard reset.

Written against TRL 1.16.0 (``trl/trainer/grpo_trainer.py``) and transformers 5.x (``trainer.py``).

Reward functions (:func:`reward_funcs`). ``GRPOTrainer._calculate_rewards`` calls every plain-callable
reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where ``columns``
holds every dataset column but ``prompt``/``completion``/``completion_ids`` as a list with one value per
completion, plus ``trainer_state``, ``log_extra``, ``log_metric`` (and ``environments``). It expects one
float per completion; ``None`` becomes NaN, and the total reward is the weighted ``nansum`` over the
functions. So :func:`reward_funcs` returns one function per domain, ``prorl_<domain>``: it scores the
rows whose ``domain`` column is its domain and returns ``None`` for the others. Each row is scored once,
the total is its domain's reward, and TRL logs ``rewards/prorl_<domain>/mean`` per domain. Scoring goes
through one shared :class:`~nemo_prorl.rewards.pool.RewardPool`, one pool call per batch for all the
domains (the first function called scores them, the others read the results kept for that
``completions`` list, compared by identity): killable worker processes, the per-sample
deadlines, the code sandbox and the options of :class:`~nemo_prorl.rewards.config.RewardsConfig`; a
sample whose status is not ``ok`` gets ``failure_score``. Completions may be strings or, for
conversational datasets, message lists (the assistant messages' text is scored).

The hard reset (:class:`ProRLResetCallback`). After a step the callback asks the same
:class:`~nemo_prorl.trainer.resets.ResetController` as :class:`~nemo_prorl.trainer.trainer.ProRLTrainer`,
in the same order (step -> validation -> trigger check), whether to reset, and resets:

* reference := policy: ``trainer.ref_model`` (a separate model TRL builds when ``beta != 0`` and the
  policy is not a PEFT model) gets the policy's state dict. With ``beta == 0`` there is no reference
  (TRL builds none) and only the optimizer is reset. A PEFT policy's reference is the adapter-disabled
  base; resetting it would mean merging the adapter, which the callback refuses (train full weights).
* optimizer: ``trainer.optimizer`` (accelerate's ``AcceleratedOptimizer``) is unwrapped to the torch
  optimizer and restarted with :func:`~nemo_prorl.policy.megatron.optim_reset.restart_adam` (moments
  zeroed, step counters to 0): the next update equals a fresh AdamW's first update.
* lr warm-up: when the run has warm-up steps ``W``, the scheduler's factors are multiplied by
  ``min(1, j / W)`` for the ``j``-th update after the reset, as our trainer restarts its warm-up
  (``MegatronPolicy.current_lr``); the rest of the schedule (e.g. a linear decay) runs on.

Timing: transformers calls ``on_step_end`` after the optimizer and scheduler step, and evaluates (``on_
evaluate``) after that, in the same step. The callback decides in ``on_step_end`` unless an evaluation is
due this step (``control.should_evaluate``, set by the default flow callback that runs first); then it
decides in ``on_evaluate`` with the validation result. Either way the reset happens before the next
step's generation, whose reference log-probs then come from the new reference. With
``steps_per_generation > 1`` TRL generates (and computes reference log-probs) once per generation
batch, so a reset inside a generation batch reaches the reference log-probs at the next generation.

Scope: single-process and DDP runs; DeepSpeed and FSDP (sharded weights and optimizer state) are refused
when the callback is built. The controller's state is not part of TRL's checkpoints: a resumed run keeps
the step triggers but starts the plateau tracking over.

The validation metric is ``reset.metric`` as the trainer logs it, e.g. ``eval_reward`` for TRL. KL for
``reset.kl_above`` is the mean of the step's ``kl`` values that ``GRPOTrainer`` records (``beta != 0``).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nemo_prorl.rewards.config import RewardsConfig

_log = logging.getLogger(__name__)

#: keyword arguments TRL passes every reward function that are not dataset columns
TRL_EXTRA_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})


# ------------------------------------------------------------------------------------- rewards
def completion_text(completion: Any) -> str:
    """The text to score of one TRL completion.

    Args:
        completion: a string (standard format) or a list of messages ``{"role", "content"}``
            (conversational format); ``content`` may be a string or a list of parts
            ``{"type": "text", "text": ...}``. The assistant messages' text is joined with newlines.

    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts: list[str] = []
    for msg in completion:
        if not isinstance(msg, dict) or msg.get("role", "assistant") != "assistant":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


class _SharedPool:
    """One :class:`RewardPool` for all the functions of one :func:`reward_funcs` call, started lazily.

    TRL calls the functions one after the other with the same ``completions`` list. The first call of a
    batch scores the rows of *every* chosen domain in one :meth:`RewardPool.score` (so a slow domain's
    samples and a fast one's share the workers), the others read the cached results of that list.
    """

    def __init__(self, config: RewardsConfig, domains: Sequence[str]) -> None:
        self.config = config
        self.domains = frozenset(domains)
        self.pool = None
        self._batch: Any = None  # the completions list the cache belongs to (compared by identity)
        self._results: dict[int, Any] = {}

    def get(self):
        if self.pool is None:
            from nemo_prorl.rewards.pool import RewardPool

            self.pool = RewardPool(self.config)
            weakref.finalize(self, self.pool.close)
        return self.pool

    def results(self, completions: Sequence[Any], columns: dict[str, list[Any]]) -> dict[int, Any]:
        """Index -> :class:`RewardResult` of every row of a chosen domain in this batch."""
        if self._batch is not completions:
            idx = [i for i in range(len(completions)) if columns["domain"][i] in self.domains]
            rows = [{**{k: v[i] for k, v in columns.items()}, "response": completion_text(completions[i])}
                    for i in idx]
            scored = self.get().score(rows) if rows else []
            self._batch, self._results = completions, dict(zip(idx, scored))
        return self._results

    def close(self) -> None:
        self._batch, self._results = None, {}
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _make_reward_func(domain: str, shared: _SharedPool) -> Callable[..., list[float | None]]:
    def reward_func(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                    completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        if "domain" not in kwargs:
            raise KeyError(f"reward function prorl_{domain}: the dataset needs a 'domain' column (one of the "
                           "registered rewards) next to the ground-truth columns of that domain")
        columns = {k: v for k, v in kwargs.items() if k not in TRL_EXTRA_KWARGS}
        results = shared.results(completions, columns)
        out: list[float | None] = [None] * len(completions)
        mine = [i for i in range(len(completions)) if columns["domain"][i] == domain]
        for i in mine:
            res = results[i]
            out[i] = res.score if res.status == "ok" else shared.config.failure_score
        log_metric = kwargs.get("log_metric")
        if mine and callable(log_metric):
            bad = sum(results[i].status in ("error", "timeout") for i in mine)
            log_metric(f"prorl/{domain}/error_rate", bad / len(mine))
        return out

    reward_func.__name__ = reward_func.__qualname__ = f"prorl_{domain}"
    reward_func.domain = domain
    reward_func.close = shared.close
    return reward_func


def reward_funcs(
    domains: Iterable[str] | None = None, config: RewardsConfig | dict[str, Any] | None = None
) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions for ProRL's verifiable rewards, one per domain.

    Args:
        domains: the domains to score (registered reward names); ``None`` = every registered domain.
        config: pool and per-domain options (a :class:`RewardsConfig` or its mapping form).

    Returns:
        Callables for ``GRPOTrainer(reward_funcs=...)``, named ``prorl_<domain>``; each returns a float
        for the rows of its domain and ``None`` for the others. They share one reward pool, started at
        the first call; ``f.close()`` on any of them stops it (it also stops when they are collected).

    Raises:
        ValueError: an unknown domain (naming the registered ones) or a bad config value.

    """
    from nemo_prorl.schema import known_domains

    cfg = config if isinstance(config, RewardsConfig) else RewardsConfig.from_dict(config)
    cfg.validate()
    known = known_domains()
    chosen = list(known if domains is None else domains)
    for d in chosen:
        if d not in known:
            raise ValueError(f"reward_funcs: unknown domain {d!r} (known: {', '.join(known)})")
    shared = _SharedPool(cfg, chosen)
    return [_make_reward_func(d, shared) for d in chosen]


# --------------------------------------------------------------------------------------- reset
def unwrap_optimizer(optimizer: Any):
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (and similar) wrappers."""
    import torch

    seen = 0
    while (not isinstance(optimizer, torch.optim.Optimizer)
           or type(optimizer).__name__ == "AcceleratedOptimizer"):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 8:
            raise TypeError(f"cannot find the torch optimizer inside {type(optimizer).__name__}")
        optimizer, seen = inner, seen + 1
    return optimizer


def _unwrap_scheduler(scheduler: Any):
    while hasattr(scheduler, "scheduler") and not hasattr(scheduler, "lr_lambdas"):
        scheduler = scheduler.scheduler
    return scheduler


def _restart_warmup(scheduler: Any, warmup_steps: int) -> None:
    """Multiply a ``LambdaLR``'s factors by ``min(1, j / W)`` for the ``j``-th update from now on."""
    sched = _unwrap_scheduler(scheduler)
    if not hasattr(sched, "lr_lambdas"):
        raise TypeError(f"ProRLResetCallback: cannot restart the lr warm-up of {type(sched).__name__}; "
                        "use a LambdaLR schedule (every transformers schedule is one) or warmup_steps=0")
    start = sched.last_epoch  # the scheduler epoch whose lr the first update after the reset uses

    def ramped(inner: Callable[[int], float]) -> Callable[[int], float]:
        def lam(epoch: int) -> float:
            j = epoch - start + 1
            return inner(epoch) * (min(1.0, j / warmup_steps) if j >= 1 else 1.0)

        return lam

    sched.lr_lambdas = [ramped(f) for f in sched.lr_lambdas]
    for group, base, lam in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * lam(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ProRLResetCallback(_transformers_callback_base()):
    """ProRL's hard reset for TRL's ``GRPOTrainer`` (see the module docstring for what and when).

    Args:
        trainer: the ``GRPOTrainer`` (the callback reads its ``ref_model``, ``optimizer``,
            ``lr_scheduler``, ``accelerator`` and recorded ``kl``).
        reset: a :class:`~nemo_prorl.trainer.config.ResetConfig` or its mapping form (``at_steps``,
            ``every_n_steps``, ``on_val_plateau``, ``metric``, ``patience``, ``min_delta``,
            ``drop_delta``, ``kl_above``, ``reset_optimizer``, ``min_steps_between``).

    Use ``ProRLResetCallback.attach(trainer, reset)``, or build it and ``trainer.add_callback(cb)``.
    ``history`` lists the resets done (``{"step", "cause"}``).

    """

    def __init__(self, trainer: Any, reset: Any = None) -> None:
        from nemo_prorl.config_schema import check, load
        from nemo_prorl.trainer.config import ResetConfig
        from nemo_prorl.trainer.resets import ResetController

        if isinstance(reset, ResetConfig):
            cfg = reset
            check(cfg, "reset")
        else:
            cfg = load(ResetConfig, dict(reset or {}), "reset")
        self.trainer = trainer
        self.controller = ResetController(cfg)
        self._pending_step: int | None = None
        self._pending_kl: float | None = None
        self._kl_mark = 0
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            raise ValueError("ProRLResetCallback: DeepSpeed and FSDP shard the weights and own the optimizer "
                             "state; the reset here copies full state dicts and restarts a torch Adam/AdamW, "
                             "so it supports single-process and DDP runs only")
        model = trainer.accelerator.unwrap_model(trainer.model)
        peft = hasattr(model, "peft_config")
        if getattr(trainer, "beta", 0.0) != 0.0 and trainer.ref_model is None and peft:
            raise ValueError("ProRLResetCallback: with a PEFT policy TRL's reference is the adapter-disabled "
                             "base model; a hard reset would have to merge the adapter, which is not "
                             "supported. Train full weights, or set beta=0 to reset only the optimizer")

    @classmethod
    def attach(cls, trainer: Any, reset: Any = None) -> ProRLResetCallback:
        """Build the callback for ``trainer`` and add it to the trainer's callbacks."""
        cb = cls(trainer, reset)
        trainer.add_callback(cb)
        return cb

    @property
    def history(self) -> list[dict[str, Any]]:
        """The resets done so far: ``[{"step", "cause"}, ...]``."""
        return self.controller.history

    # ----------------------------------------------------------------------------- the reset
    def reset_reference(self) -> bool:
        """Copy the policy's weights into ``trainer.ref_model``; False when there is none (``beta == 0``)."""
        import torch

        tr = self.trainer
        if tr.ref_model is None:
            return False
        policy = tr.accelerator.unwrap_model(tr.model)
        ref = tr.accelerator.unwrap_model(tr.ref_model)
        pol_sd, ref_sd = policy.state_dict(), ref.state_dict()
        if pol_sd.keys() != ref_sd.keys():
            diff = sorted(set(pol_sd) ^ set(ref_sd))[:5]
            raise RuntimeError(f"ProRLResetCallback: reference and policy differ in weights: {diff}")
        with torch.no_grad():
            for name, value in pol_sd.items():
                ref_sd[name].copy_(value)
        return True

    def reset_optimizer(self) -> None:
        """Restart the torch Adam/AdamW (moments and step counters) and the lr warm-up."""
        from nemo_prorl.policy.megatron.optim_reset import restart_adam

        tr = self.trainer
        done = restart_adam(unwrap_optimizer(tr.optimizer))
        _log.info("ProRLResetCallback: %d moment tensors zeroed, %d step counters restarted",
                  done.moments, done.step_counters)
        warmup = int(tr.args.get_warmup_steps(tr.state.max_steps)) if tr.state.max_steps else 0
        if warmup > 0 and tr.lr_scheduler is not None:
            _restart_warmup(tr.lr_scheduler, warmup)

    def _do_reset(self, step: int, cause: str) -> None:
        had_ref = self.reset_reference()
        if self.controller.cfg.reset_optimizer:
            self.reset_optimizer()
        self.controller.record(step, cause)
        _log.warning("ProRL reset after step %d (%s): reference %s, optimizer %s", step, cause,
                     "= policy" if had_ref else "absent (beta=0)",
                     "restarted" if self.controller.cfg.reset_optimizer else "kept")

    # ------------------------------------------------------------------------------- hooks
    def _kl_values(self) -> list[float]:
        metrics = getattr(self.trainer, "_metrics", None)
        try:
            return list(metrics["train"]["kl"])
        except (TypeError, KeyError):
            return []

    def on_step_begin(self, args, state, control, **kwargs):
        """Mark where this step's KL values start in the trainer's metric buffer."""
        self._kl_mark = len(self._kl_values())

    def on_step_end(self, args, state, control, **kwargs):
        """Decide after the step, or defer to ``on_evaluate`` when this step evaluates."""
        values = self._kl_values()
        new = values[self._kl_mark:] if len(values) >= self._kl_mark else values
        kl = float(sum(new) / len(new)) if new else None
        if kl is not None and not math.isfinite(kl):
            kl = None
        if control.should_evaluate:  # the evaluation of this step comes next; decide with its result
            self._pending_step, self._pending_kl = state.global_step, kl
            return
        cause = self.controller.check(state.global_step, kl, None)
        if cause:
            self._do_reset(state.global_step, cause)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Feed the validation metric to the plateau trigger; decide a deferred step."""
        value = (metrics or {}).get(self.controller.cfg.metric)
        val_cause = self.controller.observe_validation(None if value is None else float(value))
        if self._pending_step is None:  # an evaluation outside the training steps (e.g. before training)
            return
        step, kl = self._pending_step, self._pending_kl
        self._pending_step = self._pending_kl = None
        cause = self.controller.check(step, kl, val_cause)
        if cause:
            self._do_reset(step, cause)
