"""``ProRLTrainer.fit``: the ProRL loop on a megatron-core policy with a colocated rollout engine.

One step::

    prompts (data sampler) -> generate n each (rollout engine) -> score (reward pool) -> shape
    -> dynamic sampling with refill -> group advantages -> old + reference log-probs (policy; the
    old ones are skipped when the batch gets one update, see skip_old_logprobs)
    -> ppo_epochs x mini-batch updates -> metrics -> validation every val_interval
    -> reset callback (reference + optimizer) -> checkpoint -> sync weights into the rollout engine

All ranks run this loop. Generation and scoring happen on global rank 0 (the CPU engine; the vLLM
engine generates on every rank in its own group) and the rollout batch is broadcast; each data-parallel
rank then trains on its slice. Every decision (resets, phases, aborts) is taken from values that are
identical on all ranks. A preemption signal is honoured at safe points inside the step (before its
rollouts, between dynamic-sampling rounds, after the log-prob passes) and at its end; see
``docs/preemption.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemo_prorl import collectives
from nemo_prorl.algorithms.advantages import compute_advantages
from nemo_prorl.algorithms.dynamic_sampling import (
    DynamicSamplingBuffer,
    DynamicSamplingExhausted,
    prompts_per_round,
)
from nemo_prorl.algorithms.policy_loss import prorl_loss
from nemo_prorl.algorithms.reward_shaping import length_penalty_weight, phase_position, shape_rewards
from nemo_prorl.eval.sampling import sample_and_score, scoring_row, summarize
from nemo_prorl.rewards.pool import is_grader_fault
from nemo_prorl.trainer.callbacks import build_callbacks
from nemo_prorl.trainer.config import OLD_LOGPROB_MODES, ProRLConfig, config_to_dict
from nemo_prorl.trainer.metrics_log import MetricsLogger
from nemo_prorl.trainer.preflight import (
    check_phase_batches,
    engine_rollout_config,
    phase_plans,
    shaping_for_phase,
)
from nemo_prorl.trainer.resets import ResetController

#: metrics of the loss that are sums of globally normalised terms (already correct after the engine's sum)
_NORMALISED = ("pg_loss", "kl_loss", "entropy", "token_mult_prob_error")


def _status_rate(results: list, status: str) -> float:
    """Fraction of reward results with ``status`` (0.0 for none)."""
    return sum(r.status == status for r in results) / max(1, len(results))


def skip_old_logprobs(mode: str, updates_per_batch: int, policy: Any) -> bool:
    """Whether the separate old-log-prob forward of a step is redundant and can be skipped.

    The PPO ratio's "old" log-probs are those of the weights the rollout batch's first update starts
    from. With exactly one optimizer update per rollout batch (``ppo_epochs == 1`` and a single
    mini-batch) that is the weights the update's own forward runs with, so the old log-probs are the
    train step's log-probs, detached (what TRL does with ``num_iterations=1``), provided the training
    forward is the same function as the no-grad forward (``policy.train_forward_matches_logprobs``:
    no dropout). The loss and its gradient are then those of the recompute path up to float rounding
    (the ratio is exactly 1 instead of ``1 +- 1e-7``).

    Args:
        mode: ``trainer.old_logprobs``: ``"auto"`` (skip when redundant) or ``"recompute"`` (never skip).
        updates_per_batch: optimizer updates this rollout batch gets (``ppo_epochs`` x mini-batches).
        policy: the training engine; policies without ``train_forward_matches_logprobs`` never skip.

    Returns:
        True when the trainer should take the old log-probs from the train step.

    """
    if mode not in OLD_LOGPROB_MODES:
        raise ValueError(f"trainer.old_logprobs must be one of {OLD_LOGPROB_MODES}, got {mode!r}")
    return (mode == "auto" and updates_per_batch == 1
            and bool(getattr(policy, "train_forward_matches_logprobs", False)))


def dp_divisible_groups(num_groups: int, n: int, mini_batch_prompts: int, dp_size: int) -> int:
    """Groups a short batch keeps so that its last, partial mini-batch splits over the DP ranks.

    ``num_groups`` groups of ``n`` samples, mini-batches of ``mini_batch_prompts`` groups. Drops groups
    from the end, never below one (a single group that cannot split is left for the trainer's DP check
    to name). Full mini-batches split by the config's own divisibility rule.
    """
    seqs_per_mb = mini_batch_prompts * n
    while num_groups > 1 and (num_groups * n % seqs_per_mb) % dp_size:
        num_groups -= 1
    return num_groups


def make_loss_fn(alg: Any):
    """The trainer's ``loss_fn`` for ``PolicyInterface.train_step``: :func:`prorl_loss` with metrics.

    Micro-batch extras it reads: ``advantages``, ``old_logprobs`` (optional: when absent, the current
    log-probs detached are used, see :func:`skip_old_logprobs`), ``ref_logprobs`` (optional) and
    ``rollout_logprobs`` (optional: the rollout engine's per-token log-probs; when given, the metric
    ``token_mult_prob_error`` -- mean over response tokens of ``exp(|rollout - current|)`` -- is
    computed from the train step's log-probs).

    Args:
        alg: the :class:`~nemo_prorl.algorithms.config.AlgorithmConfig`.

    """

    def loss_fn(logprobs, entropy, micro, norm):
        old = micro.get("old_logprobs")
        if old is None:  # one update per rollout batch: the old policy is the current one
            old = logprobs.detach()
        out = prorl_loss(logprobs, old, micro["advantages"], micro["response_mask"],
                         alg, ref_logprobs=micro.get("ref_logprobs"), entropy=entropy,
                         num_tokens=norm["num_tokens"], num_seqs=norm["num_seqs"],
                         rollout_logprobs=micro.get("rollout_logprobs"))
        n_tokens = max(float(norm["num_tokens"]), 1.0)
        share = micro["response_mask"].float().sum() / n_tokens
        metrics = {}
        for k, v in out.metrics.items():
            if k in _NORMALISED or k.endswith("_max") or k.endswith("_min"):
                metrics[k] = v
            else:  # micro-batch means -> token-weighted share of the global mean
                metrics[k] = v * share
        if "rollout_logprobs" in micro:
            with torch.no_grad():
                mask = micro["response_mask"].float()
                gap = (micro["rollout_logprobs"].float() - old.float()).abs() * mask
                metrics["token_mult_prob_error"] = (torch.exp(gap) * mask).sum() / n_tokens
        return out.loss, metrics

    return loss_fn


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite updates, reward errors, zero steps trained)."""


class _StepAbandoned(Exception):
    """A preemption signal at a safe point inside a step; the message says where."""


@dataclass
class Group:
    """One prompt's rollouts.

    Attributes:
        row: the data row.
        prompt_ids: ``[P]`` prompt tokens.
        samples: the ``n`` samples (``nemo_prorl.rollout.base.Sample``).
        rewards: ``[n]`` task rewards (as scored).
        shaped: ``[n]`` rewards after shaping (used for advantages).
        statuses: ``[n]`` reward statuses.

    """

    row: dict
    prompt_ids: list[int]
    samples: list[Any]
    rewards: list[float]
    shaped: list[float]
    statuses: list[str]


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _broadcast(obj: Any) -> Any:
    """Broadcast a picklable object from global rank 0 (trusted: produced by our own process)."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return obj
    return collectives.broadcast_object(obj, src=0)


class ProRLTrainer:
    """Runs a ProRL job from a validated :class:`ProRLConfig`."""

    def __init__(self, cfg: ProRLConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        self.phase_index = -1
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.error_steps_in_row = 0
        self.resets = ResetController(cfg.reset)
        self._last_saved_step = -1  # the step of this process's newest checkpoint
        self.callbacks = build_callbacks(cfg.trainer.callbacks)  # docs: nemo_prorl/trainer/callbacks.py
        self.val_history: list[dict[str, float]] = []
        #: training reward per step of this process's lifetime (for the end-of-run summary)
        self.reward_trace: list[float] = []
        self._n = cfg.rollout.n
        self._temperature = cfg.rollout.temperature
        self._max_response = cfg.rollout.max_response_tokens
        self._shaping = shaping_for_phase(cfg.algorithm.reward_shaping, {}, cfg.rollout.max_response_tokens)
        self.engine = None
        self.pool = None
        self.logger: MetricsLogger | None = None

    # ------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Validate data, build tokenizer, policy, rollout engine and reward pool; resume if possible."""
        from transformers import AutoTokenizer

        from nemo_prorl.data.loading import prepare_data
        from nemo_prorl.data.preflight import preflight
        from nemo_prorl.launch import resolve_dist_env, setup_distributed_env
        from nemo_prorl.rewards.pool import RewardPool

        cfg = self.cfg
        if resolve_dist_env().source != "single":  # torchrun or Slurm: export the rendezvous
            setup_distributed_env()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(str(cfg.model_dir), local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if cfg.data.max_prompt_tokens is None:
            cfg.data.max_prompt_tokens = cfg.rollout.max_prompt_tokens
        # data first: a malformed file stops the run before any model is built
        _, first_phase = cfg.phase_at(0)
        self.data = prepare_data(cfg.data, self.tokenizer, phase=first_phase.name if first_phase else None)
        if _rank() == 0:
            print(self.data.train_report.format_summary(), flush=True)
        self.val_rows = list(self.data.val_rows)
        if cfg.trainer.val_max_prompts:
            self.val_rows = self.val_rows[: cfg.trainer.val_max_prompts]
        self.final_rows: list[dict] = []
        if cfg.final_eval.enabled:
            if cfg.final_eval.files:
                rep = preflight(cfg.final_eval.files, tokenizer=self.tokenizer,
                                max_prompt_tokens=cfg.data.max_prompt_tokens,
                                templates=cfg.data.templates, policy=cfg.data.validation_policy)
                self.final_rows = list(rep.rows)
            else:
                self.final_rows = list(self.data.val_rows)
            if cfg.final_eval.max_prompts:
                self.final_rows = self.final_rows[: cfg.final_eval.max_prompts]

        from nemo_prorl.policy.registry import build_policy

        policy_cfg = dataclasses.replace(cfg.policy, temperature=float(cfg.rollout.temperature or 1.0),
                                         seed=cfg.policy.seed)
        self.policy = build_policy(cfg.model_dir, policy_cfg)  # the engine policy.backend names
        self.dp_rank, self.dp_size = self._dp()
        for plan in phase_plans(cfg):  # every phase's mini-batches split over the actual DP ranks
            check_phase_batches(plan, cfg, self.dp_size)
        # The rollout driver (a RolloutEngine on every rank): hf = one engine on rank 0; vllm = an engine on
        # every rank (colocated), driven from rank-0 code through self.engine.on_rank0 (rollout_driver.py).
        from nemo_prorl.trainer.rollout_driver import build_rollout_driver

        # sized once for the longest response of any phase (vLLM fixes max_model_len at start-up)
        self.engine = build_rollout_driver(engine_rollout_config(cfg), str(cfg.model_dir), self.tokenizer)
        self.pool = RewardPool(cfg.rewards) if _rank() == 0 else None
        resume_step = self._maybe_resume()
        if resume_step is None:
            self._sync_weights()
        self.logger = None
        if _rank() == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, default=str))
            self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.logging.tensorboard,
                                        wandb_project=cfg.logging.wandb_project,
                                        wandb_name=cfg.logging.wandb_name,
                                        config=config_to_dict(cfg), resume_step=resume_step)
            if resume_step is not None:
                self.logger.log({"step": resume_step, "event": "resume", "from": str(self._resumed_from)})

    def _dp(self) -> tuple[int, int]:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()

    # ----------------------------------------------------------------------------------- resume
    def _maybe_resume(self) -> int | None:
        from nemo_prorl.policy.megatron.checkpoint import latest_checkpoint

        self._resumed_from = None
        if not self.cfg.checkpoint.resume:
            return None
        ckpt = latest_checkpoint(self.run_dir / "checkpoints", cleanup=_rank() == 0)
        if ckpt is None:
            return None
        state = self.policy.load_checkpoint(ckpt)
        self._load_state(state)
        self._resumed_from = ckpt
        if _rank() == 0:
            print(f"resumed from {ckpt} at step {self.step}", flush=True)
        self._sync_weights()
        return self.step

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "phase_index": self.phase_index,
            "sampler": self.data.sampler.state_dict(),
            "resets": self.resets.state_dict(),
            "nonfinite_total": self.nonfinite_total,
            "val_history": self.val_history,
            "torch_rng": torch.get_rng_state().tolist(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.data.sampler.load_state_dict(state["sampler"])
        self.resets.load_state_dict(state["resets"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.val_history = list(state.get("val_history", []))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        # phase overrides are re-applied (without their start-reset, which already happened)
        self.phase_index = -1
        self._enter_phase(self.step, resuming=True)
        self.phase_index = int(state["phase_index"])

    def _save(self, reason: str, state: dict[str, Any] | None = None, **info: Any) -> None:
        from nemo_prorl.policy.megatron.checkpoint import checkpoint_path, latest_checkpoint

        t0 = time.time()
        ckpt_dir = self.run_dir / "checkpoints"
        self._last_saved_step = self.step
        path = self.policy.save_checkpoint(checkpoint_path(ckpt_dir, self.step),
                                           self._state() if state is None else state)
        if _rank() == 0:
            ckpts = sorted((p for p in ckpt_dir.glob("step_*") if (p / "COMPLETE").exists()),
                           key=lambda p: int(p.name.split("_")[1]))
            for old in ckpts[: -self.cfg.checkpoint.keep_last]:
                if int(old.name.split("_")[1]) != self.resets.protected_step():  # the best is kept
                    shutil.rmtree(old, ignore_errors=True)
            assert latest_checkpoint(self.run_dir / "checkpoints") is not None
            self._event("checkpoint", path=str(path), reason=reason, seconds=round(time.time() - t0, 3),
                        **info)

    def _save_on_signal(self, signal_name: str | None, where: str,
                        state: dict[str, Any] | None = None) -> None:
        """Checkpoint for a preemption signal at a safe point (``where``), unless one exists already.

        Inside a step, ``state`` is the step's starting state, taken after its phase entry (and reset)
        and before its rollouts; the policy has not been updated since. The step is abandoned: the
        rollouts collected so far are dropped, and the resumed run redoes the step from the same sampler
        position, RNG and weights, so it generates and trains exactly as an uninterrupted run. When a
        checkpoint of this step count exists already (this step's interval save, the previous step's, or
        the one this run resumed from), it holds the same state and is kept (resuming from the previous
        step's redoes this step's phase entry).
        """
        from nemo_prorl.policy.megatron.checkpoint import checkpoint_path, is_complete

        path = checkpoint_path(self.run_dir / "checkpoints", self.step)
        reason = f"signal {signal_name}"
        if _broadcast(is_complete(path)):
            self._event("checkpoint", path=str(path), reason=reason, at=where, reused=True)
        else:
            self._save(reason, state=state, at=where)

    # ------------------------------------------------------------------------------------ phases
    def _enter_phase(self, step: int, resuming: bool = False) -> str | None:
        """Apply the phase in force at 0-based ``step``; returns a reset cause when it starts with one."""
        idx, phase = self.cfg.phase_at(step)
        if phase is None or idx == self.phase_index:
            return None
        self.phase_index = idx
        r = self.cfg.rollout
        self._n = phase.n or r.n
        self._temperature = r.temperature if phase.temperature is None else phase.temperature
        self._max_response = phase.max_response_tokens or r.max_response_tokens
        self._shaping = shaping_for_phase(self.cfg.algorithm.reward_shaping, phase.reward_shaping,
                                          self._max_response)
        self.policy.config.temperature = float(self._temperature or 1.0)
        weights = phase.mixture if phase.mixture is not None else self.cfg.data.weights_for_phase(phase.name)
        self.data.sampler.set_weights(weights)
        if not resuming:
            self._event("phase", name=phase.name, index=idx, n=self._n, temperature=self._temperature,
                        max_response_tokens=self._max_response)
        if phase.reset and not resuming and step > 0:
            return f"phase {phase.name!r} starts with a reset"
        return None

    # ----------------------------------------------------------------------------------- rollout
    def _sampling(self, round_idx: int, **over: Any):
        base = self.cfg.rollout.seed if self.cfg.rollout.seed is not None else self.cfg.seed
        seed = (base * 1_000_003 + self.step * 1009 + round_idx) % (2**31 - 1)
        params = self.cfg.rollout.sampling_params(temperature=float(self._temperature),
                                                  max_tokens=int(self._max_response), seed=seed)
        return dataclasses.replace(params, **over)

    def _tokenize(self, row: dict) -> list[int]:
        from nemo_prorl.data.templates import tokenize_prompt

        return tokenize_prompt(row, self.tokenizer, self.cfg.data.templates, self.cfg.data.system_prompt)

    def _collect(self, stop: Any = None) -> tuple[list[Group] | None, dict[str, float]]:
        """Rank 0: generate + score rounds until dynamic sampling has a full batch.

        ``stop`` (rank 0's preemption flag) is asked between rounds: when it is set, the step is
        abandoned and ``(None, {"_abandoned_after_rounds": rounds done})`` returned.
        """
        cfg, tc = self.cfg, self.cfg.trainer
        ds = cfg.algorithm.dynamic_sampling
        buf = DynamicSamplingBuffer(tc.prompts_per_step, ds.max_rounds, enable=ds.enable, tol=ds.tol,
                                    partial_ok=ds.on_exhausted == "partial")
        t_gen = t_score = 0.0
        # the length-penalty schedule's place: a function of the global step only (resumes exactly)
        position = phase_position([ph.steps for ph in cfg.phases], self.step, tc.max_steps)
        all_results = []
        all_ids: list[Any] = []  # the row id of each entry of all_results (named when rewards fail)
        round_idx = 0
        while not buf.ready:
            if round_idx and stop is not None and stop():  # safe point: between rounds
                return None, {"_abandoned_after_rounds": round_idx}
            per_round = tc.generation_prompts or prompts_per_round(tc.prompts_per_step, ds.oversample)
            rows = [dict(r) for r in self.data.sampler.next_batch(per_round)]
            prompts = [self._tokenize(r) for r in rows]
            t0 = time.time()
            out = self.engine.generate(prompts, self._n, self._sampling(round_idx))
            t_gen += time.time() - t0
            t0 = time.time()
            by_prompt: list[list[Any]] = [[] for _ in rows]
            for s in out.samples:
                by_prompt[s.prompt_index].append(s)
            flat = [scoring_row(rows[i], s.text) for i in range(len(rows)) for s in by_prompt[i]]
            results = self.pool.score(flat)
            t_score += time.time() - t0
            all_results.extend(results)
            all_ids.extend(rows[i].get("id") for i in range(len(rows)) for _ in by_prompt[i])
            groups, rewards = [], []
            k = 0
            for i, row in enumerate(rows):
                samples = by_prompt[i]
                res = results[k:k + len(samples)]
                k += len(samples)
                raw = torch.tensor([float(r.score) if r.status == "ok" else cfg.rewards.failure_score
                                    for r in res])
                shaped = shape_rewards(
                    raw, self._shaping,
                    truncated=torch.tensor([s.finish_reason == "length" for s in samples]),
                    lengths=torch.tensor([len(s.token_ids) for s in samples]),
                    step_in_phase=position[0], phase_steps=position[1],
                )
                groups.append(Group(row, prompts[i], samples, raw.tolist(), shaped.tolist(),
                                    [r.status for r in res]))
                rewards.append(shaped.tolist())  # filter on what the advantages are computed from
            try:
                buf.add(groups, rewards)
            except DynamicSamplingExhausted as exc:
                # failing rewards score failure_score everywhere, so no group has variance: name the cause
                bad = [(i, r.status, r.info) for i, r in zip(all_ids, all_results)
                       if r.status in ("error", "timeout")]
                if len(bad) / max(1, len(all_results)) > cfg.rewards.max_error_rate:
                    failing = json.dumps(bad[:5], default=str)[:2000]
                    raise TrainingError(
                        f"reward error/timeout rate {len(bad) / len(all_results):.1%} above "
                        f"rewards.max_error_rate={cfg.rewards.max_error_rate}, and no group had reward "
                        f"variance ({exc}); failing rows: {failing}") from exc
                raise
            round_idx += 1
        groups, stats = buf.pop_batch()
        if stats.partial:  # a short batch: its last mini-batch must still split over the DP ranks
            groups = groups[:dp_divisible_groups(len(groups), self._n, tc.mini_batch_prompts, self.dp_size)]
        bad = sum(map(is_grader_fault, all_results))  # the policy's timeouts/violations are not faults
        generated = [float(r.score) for r in all_results]
        metrics = {"time/generate": t_gen, "time/score": t_score,
                   "reward/error_rate": bad / max(1, len(all_results)),
                   "reward/timeout_rate": _status_rate(all_results, "timeout"),
                   "reward/violation_rate": _status_rate(all_results, "violation"),
                   # mean over every generated sample, before dynamic sampling keeps the informative
                   # groups (reward/mean is over the kept groups, which drifts toward 0.5 by design)
                   "reward/generated_mean": sum(generated) / max(1, len(generated))}
        metrics.update(stats.as_metrics())
        if self._shaping.length_penalty_coef > 0:
            metrics["reward/length_penalty_coef"] = length_penalty_weight(self._shaping, *position)
        if bad / max(1, len(all_results)) > cfg.rewards.max_error_rate:
            failing = [(i, r.status, r.info) for i, r in zip(all_ids, all_results) if is_grader_fault(r)][:5]
            metrics["_failing"] = json.dumps(failing, default=str)[:2000]
        return groups, metrics

    # ------------------------------------------------------------------------------------- batch
    def _build_batch(self, groups: list[Group]):
        """Token batch of all samples (group-major), with advantages and rollout log-probs."""
        from nemo_prorl.policy.interface import TokenBatch

        seqs, masks, roll_lp, shaped, group_ids = [], [], [], [], []
        for g_i, g in enumerate(groups):
            for s, r in zip(g.samples, g.shaped):
                seq = list(g.prompt_ids) + list(s.token_ids)
                seqs.append(seq)
                masks.append((len(g.prompt_ids), len(seq)))
                roll_lp.append(s.logprobs)
                shaped.append(r)
                group_ids.append(g_i)
        length = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.float32)
        rollout_lp = torch.zeros((len(seqs), length), dtype=torch.float32)
        for b, (seq, (start, end)) in enumerate(zip(seqs, masks)):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, start:end] = 1.0
            if roll_lp[b] is not None and end > start:
                rollout_lp[b, start:end] = torch.as_tensor(roll_lp[b], dtype=torch.float32)[: end - start]
            tis = self.cfg.algorithm.loss.tis
            if tis != "none" and (roll_lp[b] is None or len(roll_lp[b]) < end - start):
                raise TrainingError(f"algorithm.loss.tis={tis} needs the rollout engine's log-prob of every "
                                    f"response token; sample {b} has none or too few (keep rollout "
                                    "sampling logprobs on, or set algorithm.loss.tis=none)")
        # every rank holds the whole batch here, so batch-level estimators need no DP reduction (dp_group)
        adv = compute_advantages(torch.tensor(shaped, dtype=torch.float32), torch.tensor(group_ids),
                                 self.cfg.algorithm.advantage, num_tokens=mask.sum(dim=1))
        return TokenBatch(ids, mask, {"advantages": adv.float()}), rollout_lp

    def _dp_slice(self, batch, start: int, stop: int):
        """The share of sequences ``start:stop`` that this data-parallel rank trains on."""
        n = stop - start
        per = n // self.dp_size
        if per * self.dp_size != n:
            raise TrainingError(f"mini-batch of {n} sequences does not split over {self.dp_size} "
                                "data-parallel ranks; make trainer.mini_batch_prompts * rollout.n divisible "
                                "by the DP size")
        lo = start + self.dp_rank * per
        return batch.slice(lo, lo + per)

    def _loss_fn(self):
        return make_loss_fn(self.cfg.algorithm)

    # -------------------------------------------------------------------------------------- step
    def _train_on(self, groups: list[Group], stop: Any = None) -> dict[str, float]:
        """Log-probs and the step's updates.

        Raises :class:`_StepAbandoned` when ``stop()`` (a collective every rank calls) is true after the
        log-prob passes, before any update.
        """
        tc = self.cfg.trainer
        batch, rollout_lp = self._build_batch(groups)
        t0 = time.time()
        full = batch
        # old/ref log-probs: each DP rank computes its own shard (the whole batch when DP=1)
        per_rank = full.batch_size // self.dp_size
        mine = (full.slice(self.dp_rank * per_rank, (self.dp_rank + 1) * per_rank) if self.dp_size > 1
                else full)
        seqs_per_mb = tc.mini_batch_prompts * self._n
        n_updates = tc.ppo_epochs * -(-full.batch_size // seqs_per_mb)
        reuse = skip_old_logprobs(tc.old_logprobs, n_updates, self.policy)
        # the reference pass runs even when kl.coef is 0: the KL to the reference is always reported
        ref_lp = self.policy.logprobs(mine, reference=True)[0]
        if self.dp_size > 1:
            ref_lp = self._gather_dp(ref_lp)
        full.extras["ref_logprobs"] = ref_lp.float()
        token_mult = None
        # the loss weighs tokens by them (algorithm.loss.tis) and reports the mismatch metrics
        full.extras["rollout_logprobs"] = rollout_lp
        if not reuse:  # with reused old log-probs (skip_old_logprobs) the mismatch is measured in the loss
            old_lp, _ = self.policy.logprobs(mine)
            if self.dp_size > 1:
                old_lp = self._gather_dp(old_lp)
            full.extras["old_logprobs"] = old_lp.float()
            mask = full.response_mask
            mismatch = torch.exp((rollout_lp - old_lp).abs() * mask)
            token_mult = float((mismatch * mask).sum() / mask.sum().clamp(min=1))
        t_lp = time.time() - t0
        if stop is not None and stop():  # safe point: the weights are still the step's starting ones
            raise _StepAbandoned("after the log-prob passes")

        t0 = time.time()
        updates = []
        loss_fn = self._loss_fn()
        for _ in range(tc.ppo_epochs):
            for start in range(0, full.batch_size, seqs_per_mb):
                mb = self._dp_slice(full, start, min(start + seqs_per_mb, full.batch_size))
                m = self.policy.train_step(mb, loss_fn, with_entropy=True)
                if m.get("skipped_nonfinite"):  # the engine skipped this update (weights unchanged)
                    self.nonfinite_in_row += 1
                    self.nonfinite_total += 1
                else:
                    self.nonfinite_in_row = 0
                updates.append(m)
                if self.nonfinite_in_row >= tc.max_nonfinite_in_row:
                    raise TrainingError(f"{self.nonfinite_in_row} non-finite updates in a row at step "
                                        f"{self.step + 1} (trainer.max_nonfinite_in_row="
                                        f"{tc.max_nonfinite_in_row}); no checkpoint of the non-finite state "
                                        "was written")
        t_train = time.time() - t0
        metrics: dict[str, float] = {}
        for key in updates[0]:
            vals = [u[key] for u in updates if key in u]
            metrics[key] = sum(vals) / len(vals)
        out = {
            "loss": metrics.pop("loss", float("nan")),
            "kl": metrics.get("kl_loss", float("nan")),
            "entropy": metrics.get("entropy", float("nan")),
            "grad_norm": metrics.pop("grad_norm", float("nan")),
            "token_mult_prob_error": (metrics.pop("token_mult_prob_error", float("nan")) if token_mult is None
                                      else token_mult),
            "old_logprobs_reused": float(reuse),
            "time/logprobs": t_lp,
            "time/train": t_train,
            "num_updates": len(updates),
            "nonfinite_total": self.nonfinite_total,
        }
        for k, v in metrics.items():
            out.setdefault(k, v)
        return out

    def _gather_dp(self, t: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state as ps

        # the policy returns CPU tensors: the helper stages them on the DP group's device (NCCL: the GPU)
        return collectives.all_gather_cat(t, 0, group=ps.get_data_parallel_group())

    def _sync_weights(self) -> None:
        t0 = time.time()
        sd = self.policy.export_hf_state_dict()  # collective: full tensors on every rank
        if self.engine is not None:  # the driver loads them into every rank's engine (hf: rank 0's only)
            self.engine.update_weights(sd)
        self._last_sync_s = time.time() - t0

    # -------------------------------------------------------------------------------- validation
    def _evaluate(self, rows: list[dict], n: int, temperature: float, top_p: float, ks=(1,), prefix="val/",
                  seed_offset: int = 0) -> dict[str, float]:
        """Rank 0 samples + scores; the numbers are broadcast so every rank decides alike."""

        def on_rank0() -> dict[str, float]:  # generate calls reach every rank's engine through the driver
            base = self.cfg.rollout.seed if self.cfg.rollout.seed is not None else self.cfg.seed
            sampling = self.cfg.rollout.sampling_params(temperature=temperature, top_p=top_p,
                                                        max_tokens=int(self._max_response),
                                                        seed=base + 7_777_777 + seed_offset)
            recs = sample_and_score(self.engine, rows, [self._tokenize(r) for r in rows], n=n,
                                    sampling=sampling, score=self.pool.score)
            return summarize(recs, ks, prefix=prefix)

        result = self.engine.on_rank0(on_rank0) if rows else None
        return _broadcast(result) or {}

    def _validate(self) -> dict[str, float]:
        tc = self.cfg.trainer
        t0 = time.time()
        m = self._evaluate(self.val_rows, tc.val_n, tc.val_temperature, tc.val_top_p)
        if m:
            m["time/validate"] = time.time() - t0
            self.val_history.append({"step": self.step, **m})
        return m

    # --------------------------------------------------------------------------------------- fit
    def _event(self, event: str, **info: Any) -> None:
        if self.logger is not None:
            self.logger.log({"step": self.step, "event": event, **info})
        if _rank() == 0:
            print(f"[step {self.step}] {event}: {json.dumps(info, default=str)}", flush=True)

    def _reset(self, cause: str) -> None:
        last = self.val_history[-1] if self.val_history and self.val_history[-1]["step"] == self.step else {}
        src = self.resets.reference_source(self.step, last.get(self.cfg.reset.metric))
        if src is None:
            self.policy.reset_reference()
        else:  # reset.reference=best: the best checkpoint's policy weights (docs/algorithms.md)
            from nemo_prorl.policy.megatron.checkpoint import checkpoint_path

            self.policy.load_policy_weights(checkpoint_path(self.run_dir / "checkpoints", src),
                                            into_policy=self.cfg.reset.policy_to_best)
            if self.cfg.reset.policy_to_best:
                self._sync_weights()
        if self.cfg.reset.reset_optimizer:
            self.policy.reset_optimizer()
        self.resets.record(self.step, cause)
        self._event("reset", cause=cause, reset_optimizer=self.cfg.reset.reset_optimizer,
                    total_resets=len(self.resets.history),
                    reference="current" if src is None else f"best checkpoint (step {src})")
        for cb in self.callbacks:
            cb.on_reset(self.step, cause)

    def fit(self) -> dict[str, Any]:
        """Train until ``trainer.max_steps``; returns a summary. Raises :class:`TrainingError` on abort."""
        from nemo_prorl.launch import PreemptionHandler

        cfg, tc = self.cfg, self.cfg.trainer
        start_step = self.step
        if start_step >= tc.max_steps:
            raise TrainingError(f"nothing to train: run_dir {self.run_dir} already holds a checkpoint at "
                                f"step {start_step} >= trainer.max_steps={tc.max_steps}; raise "
                                "trainer.max_steps or use a new run_dir")
        if self.step == 0 and tc.val_interval and tc.val_at_start and self.val_rows:
            m = self._validate()
            self.resets.observe_validation(m.get(cfg.reset.metric))
            if self.logger:
                self.logger.log({"step": 0, **m})
            for cb in self.callbacks:
                cb.on_validation(0, dict(m))
        base_pass = None
        if cfg.final_eval.enabled and self.final_rows and self.step == 0:
            base_pass = self._final_eval("base")
        bar = None
        if tc.progress_bar and _rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.step, desc="ProRL", dynamic_ncols=True)
        self.progress_bar = bar  # the CLI closes it before printing why a run stopped
        preempted = False
        with PreemptionHandler(cfg.checkpoint.save_on_signals) as preempt:
            while self.step < tc.max_steps:
                t_step = time.time()
                phase_cause = self._enter_phase(self.step)
                if phase_cause:
                    self._reset(phase_cause)
                # safe points inside the step (docs/preemption.md) checkpoint this state and abandon it
                start_state = copy.deepcopy(self._state())
                if preempt.requested_on_any_rank():
                    self._save_on_signal(preempt.signal_name, "before rollouts", start_state)
                    preempted = True
                    break
                groups, rmetrics = self.engine.on_rank0(lambda: self._collect(stop=lambda: preempt.requested),
                                                        default=(None, None))
                groups, rmetrics = _broadcast((groups, rmetrics))
                if groups is None:  # rank 0 saw the signal between dynamic-sampling rounds
                    rounds = rmetrics["_abandoned_after_rounds"]
                    self._save_on_signal(preempt.signal_name, f"between rollout rounds ({rounds} done)",
                                          start_state)
                    preempted = True
                    break
                failing = rmetrics.pop("_failing", None)
                if failing is not None:
                    self.error_steps_in_row += 1
                    if self.error_steps_in_row >= cfg.rewards.error_window_steps:
                        raise TrainingError(
                            f"reward error rate {rmetrics['reward/error_rate']:.1%} above "
                            f"rewards.max_error_rate={cfg.rewards.max_error_rate} for "
                            f"{self.error_steps_in_row} steps; failing rows: {failing}")
                else:
                    self.error_steps_in_row = 0
                try:
                    tmetrics = self._train_on(groups, stop=preempt.requested_on_any_rank)
                except _StepAbandoned as exc:
                    self._save_on_signal(preempt.signal_name, str(exc), start_state)
                    preempted = True
                    break
                self.step += 1
                t0 = time.time()
                val_due = bool(tc.val_interval and self.step % tc.val_interval == 0 and self.val_rows)
                if val_due or not preempt.requested_on_any_rank():  # stopping: the resume syncs them
                    self._sync_weights()
                record = {"step": self.step, "phase": self.phase_index, **self._reward_metrics(groups),
                          **rmetrics, **tmetrics, "time/sync": time.time() - t0}
                val_cause, best_due = None, False
                if val_due:
                    vm = self._validate()
                    record.update(vm)
                    val_cause = self.resets.observe_validation(vm.get(cfg.reset.metric))
                    best_due = self.resets.best_checkpoint_due(vm.get(cfg.reset.metric))
                    if best_due:  # this step's checkpoint (saved below) becomes the best one
                        self.resets.mark_best_checkpoint(self.step, vm[cfg.reset.metric])
                    for cb in self.callbacks:
                        cb.on_validation(self.step, dict(vm))
                cause = self.resets.check(self.step, record.get("kl"), val_cause)
                record["time/step"] = time.time() - t_step
                ntok = sum(len(s.token_ids) for g in groups for s in g.samples)
                record["tokens_per_s"] = ntok / max(record["time/step"], 1e-9)
                self.reward_trace.append(record["reward/generated_mean"])
                if self.logger:
                    self.logger.log(record)
                for cb in self.callbacks:
                    cb.on_step_end(self.step, dict(record))
                if cause:
                    self._reset(cause)
                if tc.log_samples_interval and self.step % tc.log_samples_interval == 0 and _rank() == 0:
                    self._log_samples(groups)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{record['reward/generated_mean']:.3f}", kl=f"{record['kl']:.2e}",
                                    loss=f"{record['loss']:.3f}")
                if best_due or (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0):
                    self._save("best" if best_due else "interval")
                if preempt.requested_on_any_rank():
                    self._save_on_signal(preempt.signal_name, "end of step")
                    preempted = True
                    break
        if bar is not None:
            bar.close()
        if self.step == start_step and not preempted:  # a signal may stop a run before its first step
            raise TrainingError("the run trained zero steps")
        if not preempted and cfg.checkpoint.save_final and self._last_saved_step != self.step:
            self._save("final")
        summary: dict[str, Any] = {"steps": self.step, "resets": self.resets.history, "preempted": preempted,
                                   "run_dir": str(self.run_dir)}
        if preempted:
            summary["requeued"] = self._requeue()
        if not preempted:
            summary["hf_export"] = str(self._export_hf())
        if len(self.reward_trace) >= 10:
            first, last = self.reward_trace[:5], self.reward_trace[-5:]
            summary["reward_first5"] = sum(first) / 5
            summary["reward_last5"] = sum(last) / 5
        if cfg.final_eval.enabled and self.final_rows and not preempted:
            final_pass = self._final_eval("final")
            summary["passk"] = self._write_passk(base_pass, final_pass)
        return summary

    def _requeue(self) -> bool:
        """After a signal's checkpoint: rank 0 asks Slurm to requeue the job (False outside Slurm).

        The checkpoint is complete on every rank before this runs. Failure to requeue (no ``scontrol`` in
        the container, job not requeueable) is logged, not raised: the checkpoint is safe, and the batch
        scripts in ``examples/slurm`` requeue from the host in that case.
        """
        if _rank() != 0:
            return False
        from nemo_prorl.launch import RequeueError, request_slurm_requeue

        try:
            requeued = request_slurm_requeue()
        except (RequeueError, OSError) as exc:
            print(f"nemo-prorl train: could not requeue the Slurm job ({exc}); re-run the same command "
                  f"with run_dir={self.run_dir} to resume", flush=True)
            return False
        if requeued:
            self._event("requeue", job=os.environ.get("SLURM_JOB_ID", ""))
        return requeued

    def _export_hf(self) -> Path:
        """Write the final policy as an HF checkpoint (safetensors + config + tokenizer) in ``run_dir/hf``."""
        from nemo_prorl.policy.megatron.convert import save_hf_checkpoint

        state = self.policy.export_hf_state_dict()  # collective
        out = self.run_dir / "hf"
        if _rank() == 0:
            tmp = self.run_dir / "hf.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_hf_checkpoint(state, self.policy.hf_config, tmp, tokenizer_dir=self.cfg.model_dir)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        return out

    def _reward_metrics(self, groups: list[Group]) -> dict[str, float]:
        out: dict[str, float] = {}
        rewards = [r for g in groups for r in g.rewards]
        out["reward/mean"] = sum(rewards) / len(rewards)
        out["reward/shaped_mean"] = sum(x for g in groups for x in g.shaped) / len(rewards)
        by_dom: dict[str, list[float]] = {}
        for g in groups:
            by_dom.setdefault(g.row["domain"], []).extend(g.rewards)
        for d, v in by_dom.items():
            out[f"reward/{d}"] = sum(v) / len(v)
        lengths = [len(s.token_ids) for g in groups for s in g.samples]
        out["response_length/mean"] = sum(lengths) / len(lengths)
        out["response_length/max"] = max(lengths)
        truncated = sum(s.finish_reason == "length" for g in groups for s in g.samples)
        out["response/truncated_frac"] = truncated / len(lengths)
        return out

    def _log_samples(self, groups: list[Group]) -> None:
        path = self.run_dir / "samples.jsonl"
        with open(path, "a", encoding="utf-8") as fh:
            for g in groups[:2]:
                for s, r in list(zip(g.samples, g.rewards))[:2]:
                    fh.write(json.dumps({"step": self.step, "id": g.row.get("id"), "response": s.text,
                                         "reward": r}) + "\n")

    # ------------------------------------------------------------------------------ final pass@k
    def _final_eval(self, label: str) -> dict[str, float]:
        fe = self.cfg.final_eval
        m = self._evaluate(self.final_rows, fe.n, fe.temperature, fe.top_p, ks=fe.ks, prefix="")
        if _rank() == 0:
            print(f"pass@k ({label}): " + ", ".join(f"{k}={m.get(k, float('nan')):.3f}"
                                                   for k in (f"pass@{k}" for k in fe.ks)), flush=True)
        return m

    def _write_passk(self, base: dict[str, float] | None, final: dict[str, float]) -> dict[str, Any]:
        data = {"curves": {"final": final}}
        if base is not None:
            data["curves"]["base"] = base
        prev = self.run_dir / "passk.json"
        if base is None and prev.exists():  # resumed after the base eval: keep it
            old = json.loads(prev.read_text()).get("curves", {})
            if "base" in old:
                data["curves"]["base"] = old["base"]
        if _rank() == 0:
            tmp = prev.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, prev)
        return data

    def close(self, failed: bool = False) -> None:
        """Stop workers and flush logs (plots too, unless the run failed)."""
        if self.pool is not None:
            self.pool.close()
        if self.logger is not None:
            self.logger.close(failed=failed)
            if self.cfg.logging.plots and not failed:
                from nemo_prorl.trainer.plotting import plot_run

                plot_run(self.run_dir)
