"""``ProRLTrainer.fit``: the ProRL loop, a pipeline of small typed stages around a policy and an engine.

One step (the stages live in their own modules, over the records of ``records.py``)::

    phase_settings(cfg, step)        -> PhaseSettings  (phases.py; frozen, passed to the stages)
    collect_rollouts (rank 0)        -> RolloutBatch   (collect.py: generate n each, score, shape,
                                                        dynamic sampling with refill, error policy)
    build_token_batch                -> TokenBatch     (update.py: tokens, mask, advantages, rollout lp)
    attach_logprobs                  -> TokenBatch     (+ reference and old log-probs; the old ones are
                                                        skipped when the batch gets one update)
    run_updates                      -> UpdateStats    (ppo_epochs x mini-batch updates)
    train_metrics / reward_metrics   -> the metrics.jsonl record
    -> validation every val_interval -> reset callback (reference + optimizer) -> checkpoint
    -> sync weights into the rollout engine

The trainer talks to the training engine only through :class:`~nemo_prorl.policy.interface.PolicyInterface`
(built by name from the policy registry; data-parallel gathers happen behind it) and never imports
megatron-core. All ranks run this loop. Generation and scoring happen on global rank 0 (the CPU engine;
the vLLM engine generates on every rank in its own group) and the rollout batch is broadcast; each
data-parallel rank then trains on its slice. Every decision (resets, phases, aborts) is taken from values
that are identical on all ranks. A preemption signal is honoured at safe points inside the step (before
its rollouts, between dynamic-sampling rounds, after the log-prob passes) and at its end; see
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
from pathlib import Path
from typing import Any

import torch

from nemo_prorl import collectives
from nemo_prorl.eval.sampling import sample_and_score, summarize
from nemo_prorl.policy.checkpoint_layout import checkpoint_path, is_complete, latest_checkpoint
from nemo_prorl.policy.interface import TokenBatch
from nemo_prorl.trainer.batch_broadcast import broadcast_rollout_batch
from nemo_prorl.trainer.callbacks import build_callbacks
from nemo_prorl.trainer.collect import (  # noqa: F401  (dp_divisible_groups: re-exported)
    collect_rollouts,
    dp_divisible_groups,
    reward_error_streak,
    round_sampling,
)
from nemo_prorl.trainer.config import ProRLConfig, config_to_dict
from nemo_prorl.trainer.errors import StepAbandoned, TrainingError
from nemo_prorl.trainer.metrics_log import MetricsLogger
from nemo_prorl.trainer.phases import phase_reset_cause, phase_settings, run_settings
from nemo_prorl.trainer.preflight import check_phase_batches, engine_rollout_config, phase_plans
from nemo_prorl.trainer.records import Abandoned, Group, NonfiniteCount, PhaseSettings, RolloutBatch
from nemo_prorl.trainer.resets import ResetController
from nemo_prorl.trainer.update import (  # noqa: F401  (make_loss_fn, skip_old_logprobs: re-exported)
    ProRLLossFn,
    attach_logprobs,
    build_token_batch,
    make_loss_fn,
    plan_updates,
    reward_metrics,
    run_updates,
    skip_old_logprobs,
    train_metrics,
)

__all__ = ["Group", "ProRLTrainer", "TrainingError", "dp_divisible_groups", "make_loss_fn",
           "skip_old_logprobs"]


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


def _share_rollouts(result: RolloutBatch | Abandoned | None) -> RolloutBatch | Abandoned:
    """Rank 0's collect result on every rank (collective); the groups travel as tensors.

    ``result`` is rank 0's :class:`RolloutBatch` or :class:`Abandoned` (``None`` on the other ranks);
    :func:`~nemo_prorl.trainer.batch_broadcast.broadcast_rollout_batch` carries the groups and, in its
    JSON header, the metrics with the abandon marker and the failing rows.
    """
    groups, metrics = None, {}
    if isinstance(result, Abandoned):
        metrics = {"_abandoned_after_rounds": result.rounds}
    elif result is not None:
        groups, metrics = result.groups, dict(result.metrics)
        if result.failing is not None:
            metrics["_failing"] = result.failing
    groups, metrics = broadcast_rollout_batch(groups, metrics, Group)
    if groups is None:
        return Abandoned(int(metrics["_abandoned_after_rounds"]))
    failing = metrics.pop("_failing", None)
    return RolloutBatch(list(groups), metrics, failing)


class ProRLTrainer:
    """Runs a ProRL job from a validated :class:`ProRLConfig`."""

    def __init__(self, cfg: ProRLConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        self.phase_index = -1
        #: the settings in force (a frozen value; replaced when a phase is entered, never mutated)
        self.settings: PhaseSettings = run_settings(cfg)
        self.nonfinite = NonfiniteCount()
        self.error_steps_in_row = 0
        self.resets = ResetController(cfg.reset)
        self._last_saved_step = -1  # the step of this process's newest checkpoint
        self.callbacks = build_callbacks(cfg.trainer.callbacks)  # docs: nemo_prorl/trainer/callbacks.py
        self.val_history: list[dict[str, float]] = []
        #: training reward per step of this process's lifetime (for the end-of-run summary)
        self.reward_trace: list[float] = []
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
        self.dp_rank, self.dp_size = self.policy.dp_rank, self.policy.dp_size
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

    # ----------------------------------------------------------------------------------- resume
    def _maybe_resume(self) -> int | None:
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
            "nonfinite_total": self.nonfinite.total,
            "val_history": self.val_history,
            "torch_rng": torch.get_rng_state().tolist(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.data.sampler.load_state_dict(state["sampler"])
        self.resets.load_state_dict(state["resets"])
        self.nonfinite = NonfiniteCount(self.nonfinite.in_row, int(state.get("nonfinite_total", 0)))
        self.val_history = list(state.get("val_history", []))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        # phase overrides are re-applied (without their start-reset, which already happened)
        self.phase_index = -1
        self._enter_phase(self.step, resuming=True)
        self.phase_index = int(state["phase_index"])

    def _save(self, reason: str, state: dict[str, Any] | None = None, **info: Any) -> None:
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
        path = checkpoint_path(self.run_dir / "checkpoints", self.step)
        reason = f"signal {signal_name}"
        if _broadcast(is_complete(path)):
            self._event("checkpoint", path=str(path), reason=reason, at=where, reused=True)
        else:
            self._save(reason, state=state, at=where)

    # ------------------------------------------------------------------------------------ phases
    def _enter_phase(self, step: int, resuming: bool = False) -> str | None:
        """Apply the phase in force at 0-based ``step``; returns a reset cause when it starts with one."""
        settings = phase_settings(self.cfg, step)
        if settings.index < 0 or settings.index == self.phase_index:
            return None
        self.phase_index = settings.index
        self.settings = settings
        self.policy.set_temperature(settings.policy_temperature)
        self.data.sampler.set_weights(settings.mixture)
        if not resuming:
            self._event("phase", name=settings.name, index=settings.index, n=settings.n,
                        temperature=settings.temperature, max_response_tokens=settings.max_response_tokens)
        return phase_reset_cause(settings, step, resuming)

    # ----------------------------------------------------------------------------------- rollout
    def _sampling(self, round_idx: int, **over: Any):
        """The sampling parameters of round ``round_idx`` of this step (``over``: fields replaced)."""
        return dataclasses.replace(round_sampling(self.cfg, self.settings, self.step, round_idx), **over)

    def _tokenize(self, row: dict) -> list[int]:
        from nemo_prorl.data.templates import tokenize_prompt

        return tokenize_prompt(row, self.tokenizer, self.cfg.data.templates, self.cfg.data.system_prompt)

    def _collect(self, stop: Any = None) -> RolloutBatch | Abandoned:
        """Rank 0: the collect stage (:func:`~nemo_prorl.trainer.collect.collect_rollouts`) for this step."""
        return collect_rollouts(self.cfg, self.step, self.settings, next_rows=self.data.sampler.next_batch,
                                tokenize=self._tokenize, generate=self.engine.generate, score=self.pool.score,
                                dp_size=self.dp_size, stop=stop, sampling=self._sampling)

    # -------------------------------------------------------------------------------------- step
    def _build_batch(self, groups: list[Group]) -> TokenBatch:
        """The build stage (:func:`~nemo_prorl.trainer.update.build_token_batch`) with this run's settings."""
        alg = self.cfg.algorithm
        return build_token_batch(groups, self.tokenizer.pad_token_id or 0, alg.advantage, alg.loss.tis)

    def _loss_fn(self) -> ProRLLossFn:
        return make_loss_fn(self.cfg.algorithm)

    def _train_on(self, groups: list[Group], stop: Any = None) -> dict[str, float]:
        """Build the token batch, attach log-probs, run the step's updates; returns the train metrics.

        Raises :class:`StepAbandoned` when ``stop()`` (a collective every rank calls) is true after the
        log-prob passes, before any update.
        """
        tc = self.cfg.trainer
        batch = self._build_batch(groups)
        plan = plan_updates(batch.batch_size, self.settings.n, tc, self.policy)
        t0 = time.time()
        batch, token_mult = attach_logprobs(self.policy, batch, plan)
        t_lp = time.time() - t0
        if stop is not None and stop():  # safe point: the weights are still the step's starting ones
            raise StepAbandoned("after the log-prob passes")
        stats = run_updates(self.policy, batch, self._loss_fn(), plan, self.nonfinite,
                            max_nonfinite_in_row=tc.max_nonfinite_in_row, step=self.step + 1)
        self.nonfinite = stats.nonfinite
        return train_metrics(stats, plan, token_mult, t_lp)

    def _sync_weights(self) -> None:
        t0 = time.time()
        # collective: a lazy stream gathered tensor by tensor on the device (no full host copy per rank)
        # where the policy offers one, else the full state dict on every rank
        stream = getattr(self.policy, "iter_hf_weights", None)
        sd = stream() if stream is not None else self.policy.export_hf_state_dict()
        if self.engine is not None:  # the driver loads them into every rank's engine (hf: rank 0's only)
            self.engine.update_weights(sd)
        elif stream is not None:
            for _ in sd:  # no engine here: still run this rank's part of the gathers
                pass
        self._last_sync_s = time.time() - t0

    # -------------------------------------------------------------------------------- validation
    def _evaluate(self, rows: list[dict], n: int, temperature: float, top_p: float, ks=(1,), prefix="val/",
                  seed_offset: int = 0) -> dict[str, float]:
        """Rank 0 samples + scores; the numbers are broadcast so every rank decides alike."""

        def on_rank0() -> dict[str, float]:  # generate calls reach every rank's engine through the driver
            base = self.cfg.rollout.seed if self.cfg.rollout.seed is not None else self.cfg.seed
            sampling = self.cfg.rollout.sampling_params(temperature=temperature, top_p=top_p,
                                                        max_tokens=int(self.settings.max_response_tokens),
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
            self._validate_at_start()
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
                # the collect stage runs on rank 0 (its generate calls reach every rank's engine); the batch
                # then reaches every rank as tensors, not a pickle of the groups (batch_broadcast.py)
                rollouts = _share_rollouts(self.engine.on_rank0(
                    lambda: self._collect(stop=lambda: preempt.requested), weights_follow=True))
                if isinstance(rollouts, Abandoned):  # rank 0 saw the signal between dynamic-sampling rounds
                    self._save_on_signal(preempt.signal_name,
                                          f"between rollout rounds ({rollouts.rounds} done)", start_state)
                    preempted = True
                    break
                self.error_steps_in_row = reward_error_streak(rollouts, self.error_steps_in_row, cfg.rewards)
                groups = rollouts.groups
                try:
                    tmetrics = self._train_on(groups, stop=preempt.requested_on_any_rank)
                except StepAbandoned as exc:
                    self._save_on_signal(preempt.signal_name, str(exc), start_state)
                    preempted = True
                    break
                self.step += 1
                if self._finish_step(groups, rollouts.metrics, tmetrics, t_step, preempt, bar):
                    preempted = True
                    break
        if bar is not None:
            bar.close()
        if self.step == start_step and not preempted:  # a signal may stop a run before its first step
            raise TrainingError("the run trained zero steps")
        return self._summary(preempted, base_pass)

    def _validate_at_start(self) -> None:
        """Step-0 validation: the reset rule's first observation, logged and passed to the callbacks."""
        m = self._validate()
        self.resets.observe_validation(m.get(self.cfg.reset.metric))
        if self.logger:
            self.logger.log({"step": 0, **m})
        for cb in self.callbacks:
            cb.on_validation(0, dict(m))

    def _finish_step(self, groups: list[Group], rmetrics: dict[str, float], tmetrics: dict[str, float],
                     t_step: float, preempt: Any, bar: Any) -> bool:
        """Everything after the update of step ``self.step``; True when a stop signal was seen at its end.

        Weight sync, validation, the reset rule, the step's record (logger, callbacks, progress bar),
        samples, checkpoint; on a stop signal the end-of-step checkpoint is saved before returning True.
        """
        cfg, tc = self.cfg, self.cfg.trainer
        t0 = time.time()
        val_due = bool(tc.val_interval and self.step % tc.val_interval == 0 and self.val_rows)
        if val_due or not preempt.requested_on_any_rank():  # stopping: the resume syncs them
            self._sync_weights()
        record = {"step": self.step, "phase": self.phase_index, **reward_metrics(groups),
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
            return True
        return False

    def _summary(self, preempted: bool, base_pass: dict[str, float] | None) -> dict[str, Any]:
        """The run's summary after the loop: final checkpoint, requeue or HF export, rewards, pass@k."""
        cfg = self.cfg
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
        return self.policy.export_hf_checkpoint(self.run_dir / "hf", tokenizer_dir=self.cfg.model_dir)

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
