"""The whole-run config: Hydra YAML in ``nemo_prorl/conf/`` + ``key=value`` overrides, checked before a model.

Each package owns and validates its own section (``policy``, ``rollout``, ``data``, ``rewards``,
``algorithm``); this module owns the run-level sections (``trainer``, ``reset``, ``phases``,
``checkpoint``, ``logging``, ``final_eval``) and the cross-section checks. Nothing in a config names
code: there is no ``_target_`` and no ``hydra.utils.instantiate``; components are chosen by registry
names only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nemo_prorl.algorithms.config import AlgorithmConfig
from nemo_prorl.config_schema import ConfigError, build, check, unknown_key
from nemo_prorl.data.config import DataConfig, check_weights
from nemo_prorl.policy.config import MegatronPolicyConfig
from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rollout.config import RolloutConfig

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: the shipped recipes and the demo's base model + data: package data, so a wheel install finds them from
#: any working directory (``setup.py`` ``package_data``). Paths a user gives stay relative to the cwd.
CONF_DIR = PACKAGE_ROOT / "conf"
ASSETS = {"demo": PACKAGE_ROOT / "assets" / "demo", "boundary": PACKAGE_ROOT / "assets" / "boundary"}
DEFAULT_CONFIG = "demo"
#: values of ``trainer.old_logprobs``
OLD_LOGPROB_MODES = ("auto", "recompute")


#: field metadata of the common value rules (:mod:`nemo_prorl.config_schema`)
POS = {"ge": 1}
NONNEG = {"ge": 0}


def _callbacks() -> list[str]:
    from nemo_prorl.trainer.callbacks import registered_callbacks

    return sorted(registered_callbacks())


@dataclass
class TrainerConfig:
    """The fit loop.

    Attributes:
        max_steps: training steps (one step = one rollout batch and its updates). Phases, when given,
            must add up to at least this.
        prompts_per_step: prompts (groups) per step after dynamic sampling (ProRL: 256).
        mini_batch_prompts: prompts per optimizer update; ``prompts_per_step / mini_batch_prompts``
            updates per epoch (ProRL: 64, i.e. 4 updates per step).
        ppo_epochs: passes over the rollout batch per step (ProRL: 1).
        old_logprobs: ``"auto"`` (default): when the rollout batch gets exactly one optimizer update
            (``ppo_epochs == 1`` and ``mini_batch_prompts == prompts_per_step``) and the policy has no
            dropout, skip the separate old-log-prob forward and use the update's own log-probs,
            detached, as the old ones (they are the same numbers; the ratio is exactly 1).
            ``token_mult_prob_error`` is then computed from the train step's log-probs, and the
            step's ``old_logprobs_reused`` metric is 1. ``"recompute"``: always run the old-log-prob
            forward before the updates.
        generation_prompts: prompts generated per dynamic-sampling round; ``None`` = prompts_per_step.
        val_interval: validate every this many steps (0 = never); also at step 0 when ``val_at_start``.
        val_at_start: validate the initial policy before training.
        val_n: samples per validation prompt.
        val_temperature: validation sampling temperature (ProRL eval: 0.6).
        val_top_p: validation nucleus mass (ProRL eval: 0.95).
        val_max_prompts: cap on validation prompts (None = all).
        log_samples_interval: log sample completions every this many steps (0 = never).
        max_nonfinite_in_row: abort after this many consecutive steps with a NaN/inf loss or grad norm
            (each such update is skipped and counted).
        progress_bar: show a tqdm bar with the key numbers.
        callbacks: registry names of trainer callbacks (:mod:`nemo_prorl.trainer.callbacks`: on step end,
            on validation, on reset), in call order; packages add names through the
            ``nemo_prorl.callbacks`` entry points.

    """

    max_steps: int = field(default=10, metadata=POS)
    prompts_per_step: int = field(default=8, metadata=POS)
    mini_batch_prompts: int = field(default=8, metadata=POS)
    ppo_epochs: int = field(default=1, metadata=POS)
    old_logprobs: str = field(default="auto", metadata={"choices": OLD_LOGPROB_MODES})
    generation_prompts: int | None = field(default=None, metadata=POS)
    val_interval: int = field(default=0, metadata=NONNEG)
    val_at_start: bool = True
    val_n: int = field(default=4, metadata=POS)
    val_temperature: float = field(default=0.6, metadata={"ge": 0, "le": 10})
    val_top_p: float = field(default=0.95, metadata={"gt": 0, "le": 1})
    val_max_prompts: int | None = field(default=None, metadata=POS)
    log_samples_interval: int = field(default=0, metadata=NONNEG)
    max_nonfinite_in_row: int = field(default=3, metadata=POS)
    progress_bar: bool = True
    callbacks: list[str] = field(default_factory=list, metadata={
        "choices": _callbacks, "fix": "packages add them through the nemo_prorl.callbacks entry points"})

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        if self.prompts_per_step % self.mini_batch_prompts:
            yield (f"{key}.mini_batch_prompts", f"{self.mini_batch_prompts} does not divide "
                   f"{key}.prompts_per_step={self.prompts_per_step}")

    def validate(self, p: str = "trainer") -> None:
        """Raise :class:`ConfigError` naming the first bad key (prefixed with ``p``)."""
        check(self, p)


@dataclass
class ResetConfig:
    """ProRL's hard reset: reference := current policy, optimizer state re-initialised, in the running job.

    Triggers combine (any one fires a reset):

    Attributes:
        at_steps: explicit steps; the reset happens after that step's update.
        every_n_steps: every N steps (0 = off).
        on_val_plateau: the paper's trigger: reset when the validation metric has not improved by
            ``min_delta`` for ``patience`` validations, or dropped by more than ``drop_delta`` from its best.
        metric: validation metric read for the plateau trigger (e.g. ``val/reward/mean``).
        patience: validations without improvement before a reset.
        min_delta: improvement that counts.
        drop_delta: a drop from the best this large resets at once (None = off).
        kl_above: reset when the step's KL to the reference exceeds this (None = off).
        reset_optimizer: also zero the optimizer state (ProRL: yes).
        min_steps_between: do not reset again within this many steps of the last reset.
        reference: what the reference becomes at a reset. ``current``: the current policy (ProRL v1).
            ``best``: the policy weights of the best checkpoint by ``metric`` (ProRL v2's reset to the
            best policy): a checkpoint is saved whenever a validation improves on the best so far, it is
            kept when older checkpoints rotate out (``checkpoint.keep_last``), and the run state records
            it; when the policy validated at the reset's step is at least as good, it is the current policy.
            Needs validation (``trainer.val_interval > 0`` and ``data.val_files``).
        policy_to_best: with ``reference: best``, also load the best checkpoint's weights into the policy
            (the run goes back to the best policy; the rollout engine is re-synced).

    """

    at_steps: list[int] = field(default_factory=list, metadata=POS)
    every_n_steps: int = field(default=0, metadata=NONNEG)
    on_val_plateau: bool = False
    metric: str = "val/reward/mean"
    patience: int = field(default=2, metadata=POS)
    min_delta: float = field(default=0.0, metadata=NONNEG)
    drop_delta: float | None = field(default=None, metadata=NONNEG)
    kl_above: float | None = field(default=None, metadata=NONNEG)
    reset_optimizer: bool = True
    min_steps_between: int = field(default=1, metadata=POS)
    reference: str = field(default="current", metadata={"choices": ("current", "best")})
    policy_to_best: bool = False

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        if self.policy_to_best and self.reference != "best":
            yield (f"{key}.policy_to_best", "loads the best checkpoint into the policy, which only "
                   f"reset.reference=best tracks; set {key}.reference=best or {key}.policy_to_best=false")

    def validate(self, p: str = "reset") -> None:
        """Raise :class:`ConfigError` naming the first bad key (prefixed with ``p``)."""
        check(self, p)


@dataclass
class PhaseConfig:
    """One run phase (the paper's runs 1-8 are phases of one job).

    Attributes:
        name: phase name (also the key of ``data.phase_mixtures``).
        steps: length in steps.
        reset: start the phase with a hard reset (reference + optimizer).
        n: rollouts per prompt in this phase (None = ``rollout.n``).
        temperature: sampling temperature (None = ``rollout.temperature``).
        max_response_tokens: response cap (None = ``rollout.max_response_tokens``).
        mixture: domain weights for this phase (None = ``data.phase_mixtures[name]`` or ``data.mixture``).
        reward_shaping: overrides of ``algorithm.reward_shaping`` fields for this phase.

    """

    name: str = "phase"
    steps: int = field(default=1, metadata=POS)
    reset: bool = False
    n: int | None = field(default=None, metadata=POS)
    temperature: float | None = field(default=None, metadata=NONNEG)
    max_response_tokens: int | None = field(default=None, metadata=POS)
    mixture: dict[str, float] | None = None
    reward_shaping: dict[str, Any] = field(default_factory=dict)

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The mixture (``reward_shaping`` is checked against ``algorithm`` by :func:`validate`)."""
        if self.mixture is not None:
            check_weights(self.mixture, f"{key}.mixture")
        return iter(())


@dataclass
class CheckpointConfig:
    """Checkpoints and resume.

    Attributes:
        interval: save every N steps (0 = only at the end and on signals).
        keep_last: complete checkpoints kept (older ones deleted).
        save_on_signals: signals that trigger a save-and-exit (Slurm preemption sends SIGUSR1/SIGTERM).
        resume: resume from the newest complete checkpoint in ``run_dir`` when there is one.
        save_final: save after the last step.

    """

    interval: int = field(default=0, metadata=NONNEG)
    keep_last: int = field(default=2, metadata=POS)
    save_on_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"], metadata={
        "choices": ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")})
    resume: bool = True
    save_final: bool = True

    def validate(self, p: str = "checkpoint") -> None:
        """Raise :class:`ConfigError` naming the first bad key (prefixed with ``p``)."""
        check(self, p)


@dataclass
class LoggingConfig:
    """What a run writes besides ``metrics.jsonl``.

    Attributes:
        tensorboard: write TensorBoard event files under ``run_dir/tensorboard``.
        wandb_project: log to Weights & Biases under this project (None = off); the run id is kept in
            ``run_dir`` so a resumed run continues the same W&B run.
        wandb_name: W&B run name.
        plots: write PNG plots of the curves into ``run_dir/plots`` at the end.

    """

    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_name: str | None = None
    plots: bool = True


@dataclass
class FinalEvalConfig:
    """pass@k of the base and the final policy on held-out prompts, at the end of the run.

    Attributes:
        enabled: run it.
        files: held-out files (None = ``data.val_files``).
        n: samples per prompt.
        ks: k values (each <= n).
        temperature: sampling temperature.
        top_p: nucleus mass.
        max_prompts: cap on prompts (None = all).

    """

    enabled: bool = False
    files: list[str] | None = None
    n: int = field(default=16, metadata=POS)
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16], metadata=POS)
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompts: int | None = None

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The rules across fields, as ``(dotted key, message)``."""
        for k in self.ks:
            if k > self.n:
                yield f"{key}.ks", f"k={k} exceeds {key}.n={self.n}"

    def validate(self, p: str = "final_eval") -> None:
        """Raise :class:`ConfigError` naming the first bad key (prefixed with ``p``)."""
        check(self, p)


@dataclass
class ProRLConfig:
    """A whole run.

    Attributes:
        model: the HF model directory to train (``demo``: the packaged tiny demo base model); a dry run
            also accepts a known model name without a directory.
        run_dir: where checkpoints, ``metrics.jsonl``, TensorBoard files and plots go.
        seed: seed of the run (the data order's default ``data.seed``).
        policy: the training engine (:class:`~nemo_prorl.policy.config.MegatronPolicyConfig`).
        rollout: the rollout engine and its sampling (:class:`~nemo_prorl.rollout.config.RolloutConfig`).
        data: training and validation data (:class:`~nemo_prorl.data.config.DataConfig`).
        rewards: the reward worker pool and each domain's options
            (:class:`~nemo_prorl.rewards.config.RewardsConfig`).
        algorithm: advantages, loss, KL, entropy, dynamic sampling and reward shaping
            (:class:`~nemo_prorl.algorithms.config.AlgorithmConfig`).
        trainer: the fit loop.
        reset: ProRL's hard resets.
        phases: the run's phases in order (the paper's runs 1-8); empty = one phase-less run.
        checkpoint: checkpoints and resume.
        logging: TensorBoard, W&B and plots.
        final_eval: pass@k of the base and final policy at the end.

    """

    model: str = field(default="demo", metadata={"nonempty": True})
    run_dir: str = field(default="runs/default", metadata={"nonempty": True})
    seed: int = field(default=42, metadata=NONNEG)
    policy: MegatronPolicyConfig = field(default_factory=MegatronPolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reset: ResetConfig = field(default_factory=ResetConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    final_eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)

    @property
    def model_dir(self) -> Path:
        """The HF model directory (``demo`` / ``boundary`` name the packaged base models)."""
        return ASSETS.get(self.model, Path(self.model))

    def phase_at(self, step: int) -> tuple[int, PhaseConfig | None]:
        """(index, phase) in force at 0-based ``step`` (the last phase extends to the end)."""
        if not self.phases:
            return -1, None
        start = 0
        for i, ph in enumerate(self.phases):
            if step < start + ph.steps:
                return i, ph
            start += ph.steps
        return len(self.phases) - 1, self.phases[-1]

    def phase_start(self, index: int) -> int:
        """First step of phase ``index``."""
        return sum(ph.steps for ph in self.phases[:index])


def _resolve_paths(values: list[str]) -> list[str]:
    """``demo:NAME`` / ``boundary:NAME`` -> a packaged asset file; other paths unchanged (relative to cwd)."""
    out = []
    for v in values:
        name, sep, rest = v.partition(":")
        out.append(str(ASSETS[name] / rest) if sep and name in ASSETS else v)
    return out


def build_config(raw: dict[str, Any], *, require_model: bool = True) -> ProRLConfig:
    """Validate a plain dict (composed YAML + overrides) into a :class:`ProRLConfig`.

    ``require_model=False`` (the dry run) accepts a model directory without ``config.json`` when its
    name is in :data:`nemo_prorl.trainer.preflight.KNOWN_ARCHS`.

    Raises:
        ConfigError / ValueError: naming the offending key, before anything is built.

    """
    cfg = _build(raw)
    validate(cfg, require_model=require_model)  # checks every section, then across them
    return cfg


def parse_config(raw: Mapping[str, Any]) -> ProRLConfig:
    """Load a plain dict into a :class:`ProRLConfig` with every section checked on its own.

    The generic loader (:func:`nemo_prorl.config_schema.load`) names unknown keys, wrong types and bad
    values by their dotted key; the cross-section checks and the model are :func:`validate`'s.
    """
    cfg = _build(raw)
    check(cfg)
    return cfg


def _build(raw: Mapping[str, Any]) -> ProRLConfig:
    """Build (types checked, values not yet) with ``demo:NAME`` paths made the packaged demo files.

    ``data.seed`` defaults to ``seed``.
    """
    raw = dict(raw)
    data = raw.get("data")
    data_seed = isinstance(data, Mapping) and "seed" in data
    if isinstance(data, Mapping):
        data = dict(data)
        for k in ("train_files", "val_files"):
            if isinstance(data.get(k), str):
                data[k] = [data[k]]
            if isinstance(data.get(k), (list, tuple)) and all(isinstance(v, str) for v in data[k]):
                data[k] = _resolve_paths(list(data[k]))
        raw["data"] = data
    fe = raw.get("final_eval")
    if isinstance(fe, Mapping) and isinstance(fe.get("files"), (list, tuple)) \
            and all(isinstance(v, str) for v in fe["files"]):
        raw["final_eval"] = {**fe, "files": _resolve_paths(list(fe["files"]))}
    cfg = build(ProRLConfig, raw)
    if not data_seed:
        cfg.data.seed = cfg.seed
    return cfg


def validate(cfg: ProRLConfig, *, require_model: bool = True, world_size: int | None = None) -> None:
    """Every section (:func:`~nemo_prorl.config_schema.check`), then the cross-section checks and the phases.

    Every phase is checked against the rollout engine, the model's positions, reward shaping and the
    batch layout (:mod:`nemo_prorl.trainer.preflight`); the data-parallel split for ``world_size``, by
    default the launch's ``WORLD_SIZE``.
    """
    check(cfg)
    for i, ph in enumerate(cfg.phases):
        if ph.reward_shaping:
            known = {f.name for f in fields(type(cfg.algorithm.reward_shaping))}
            bad = sorted(set(ph.reward_shaping) - known)
            if bad:
                raise unknown_key(f"phases[{i}].reward_shaping", bad[0], known)
            check(dataclasses.replace(cfg.algorithm.reward_shaping, **ph.reward_shaping),
                  f"phases[{i}].reward_shaping")
    names = {ph.name for ph in cfg.phases}
    for name in cfg.data.phase_mixtures:
        if name not in names:  # it would never apply: most likely a misspelt phase name
            raise ConfigError(f"data.phase_mixtures.{name}",
                              f"no phase is named {name!r} (phases: {', '.join(sorted(names)) or 'none'})")
    total = sum(ph.steps for ph in cfg.phases)
    if cfg.phases and total < cfg.trainer.max_steps:
        raise ConfigError("phases", f"phases add up to {total} steps, fewer than "
                          f"trainer.max_steps={cfg.trainer.max_steps}")
    from nemo_prorl.trainer import preflight

    if require_model and not cfg.model_dir.joinpath("config.json").is_file():
        raise ConfigError("model", f"{cfg.model_dir} is not an HF model directory (no config.json)")
    try:
        arch = preflight.load_model_arch(cfg.model_dir)
    except (ValueError, OSError) as exc:
        raise ConfigError("model", str(exc)) from None
    if arch is None:
        raise ConfigError("model", f"{cfg.model_dir} has no config.json and is not a known model name "
                          f"({', '.join(sorted(preflight.KNOWN_ARCHS))}); pass model=PATH to a HF model "
                          "directory (only its config.json is read by a dry run)")
    if not cfg.data.train_files:
        raise ConfigError("data.train_files", "no training files configured")
    if cfg.reset.on_val_plateau and not (cfg.trainer.val_interval and cfg.data.val_files):
        # the trigger reads validation results: without validation it would silently never fire
        raise ConfigError("reset.on_val_plateau", "the validation trigger needs validation: set "
                          "trainer.val_interval > 0 and data.val_files, or reset.on_val_plateau=false")
    if cfg.reset.reference == "best" and not (cfg.trainer.val_interval and cfg.data.val_files):
        # the best checkpoint is chosen by validation: without it there is none
        raise ConfigError("reset.reference", "reset.reference=best picks the checkpoint by validation: set "
                          "trainer.val_interval > 0 and data.val_files, or reset.reference=current")
    if cfg.algorithm.loss.tis != "none":
        # the weights compare the engine's log-probs with the trainer's log_softmax(logits / T): the engine
        # must return those of the untruncated, temperature-scaled distribution
        r = cfg.rollout
        if r.top_p < 1 or r.top_k not in (-1, 0) or r.logprobs_mode != "processed_logprobs":
            raise ConfigError("algorithm.loss.tis", f"{cfg.algorithm.loss.tis} needs rollout.top_p=1, "
                              "rollout.top_k=-1 and rollout.logprobs_mode=processed_logprobs (got "
                              f"{r.top_p}, {r.top_k}, {r.logprobs_mode}): the trainer's log-probs are of "
                              "the untruncated distribution at the sampling temperature")
    if cfg.algorithm.advantage.estimator in ("grpo", "reinforce_pp_baseline"):
        # the n in force in each phase (a phase without its own n uses rollout.n)
        used = [(f"phases[{i}].n", ph.n) if ph.n is not None else ("rollout.n", cfg.rollout.n)
                for i, ph in enumerate(cfg.phases)] or [("rollout.n", cfg.rollout.n)]
        for key, n in used:
            if n < 2:
                raise ConfigError(key, f"{cfg.algorithm.advantage.estimator} needs at least 2 rollouts per "
                                  f"prompt (a group-mean baseline), got {n}")
    world = world_size if world_size is not None else preflight.world_size_from_env()
    preflight.check_recipe(cfg, arch, world)


def compose(config_name: str | None, overrides: list[str], config_dir: str | None = None) -> dict[str, Any]:
    """Compose ``<config_dir or CONF_DIR>/<name>.yaml`` with ``key=value`` overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf_dir = Path(config_dir) if config_dir else CONF_DIR
    name = config_name or DEFAULT_CONFIG
    if not (conf_dir / f"{name}.yaml").is_file():
        avail = sorted(p.stem for p in conf_dir.glob("*.yaml"))
        raise ConfigError("--config-name",
                          f"no config {name!r} in {conf_dir} (available: {', '.join(avail)})")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
        dc = hydra_compose(config_name=name, overrides=[_force_known(o) for o in overrides])
    container = OmegaConf.to_container(dc, resolve=True)
    container.pop("hydra", None)
    if any("_target_" in str(k) for k in _walk_keys(container)):
        raise ConfigError("_target_", "configs may not name code (_target_ is not supported)")
    return container


def _force_known(override: str) -> str:
    """``key=value`` -> ``++key=value`` (set or add).

    A recipe YAML lists only the keys it changes; Hydra's struct mode would refuse to override a
    field that has its default from the dataclass and is absent from the YAML, or a key inside a
    free-form mapping such as ``rewards.domains``. A key outside the schema is then reported by the
    loader (:func:`nemo_prorl.config_schema.load`) with its dotted name and the close matches.
    """
    if override.startswith(("+", "~")) or "=" not in override:
        return override
    return f"++{override}"


def _walk_keys(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_keys(v)


def load_config(config_name: str | None = None, overrides: list[str] | None = None,
                config_dir: str | None = None) -> ProRLConfig:
    """Compose and validate a run config."""
    return build_config(compose(config_name, overrides or [], config_dir))


def config_to_dict(cfg: ProRLConfig) -> dict[str, Any]:
    """Plain-JSON form of the config (written to ``run_dir/config.json``)."""
    return dataclasses.asdict(cfg)
