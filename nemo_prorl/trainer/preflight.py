"""Start-up checks of a whole recipe, phase by phase, before any model is built.

A ProRL job runs for weeks through several phases (the paper's 8 runs). Anything a later phase asks for
that the job cannot give -- a response length past the rollout engine's context or the model's
positions, an overlong-shaping ramp that no longer ends at the phase's length, a mini-batch that does not
split over the data-parallel ranks -- is refused here, at start-up, naming the phase and the dotted key.

The contract with the trainer:

* the rollout engine is built once, sized for the **largest** response length of any phase
  (:func:`engine_rollout_config`); each phase then samples with its own ``max_tokens``;
* the overlong-shaping ramp follows the phase's ``max_response_tokens`` unless a length is set explicitly
  (:func:`shaping_for_phase`), and an explicit length must equal it;
* the groups a phase trains on split into mini-batches of ``mini_batch_prompts * n`` sequences, and each
  mini-batch over the data-parallel ranks (:func:`check_phase_batches`).

Everything here is a small pure function of the config (and of the model's architecture numbers, read
from its ``config.json`` by :func:`load_model_arch`); :func:`check_recipe` runs them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemo_prorl.algorithms.config import RewardShapingConfig
from nemo_prorl.config_schema import ConfigError, check

if TYPE_CHECKING:  # the config module imports this one at validation time
    from nemo_prorl.rollout.config import RolloutConfig
    from nemo_prorl.trainer.config import ProRLConfig


# ------------------------------------------------------------------------------------ architecture
@dataclass(frozen=True)
class ModelArch:
    """The architecture numbers the checks and the memory plan need (a decoder-only Qwen2/Llama model).

    Attributes:
        hidden_size: ``h``.
        num_layers: transformer layers ``l``.
        num_heads: attention (query) heads ``a``.
        num_kv_heads: key/value heads (GQA; = ``num_heads`` without it).
        ffn_hidden_size: MLP intermediate size ``I``.
        vocab_size: ``V``.
        max_position_embeddings: the longest sequence (prompt + response) the model has positions for.
        head_dim: per-head size (``h / a`` unless the config says otherwise).
        tied_embeddings: the LM head shares the input embedding.
        qkv_bias: q/k/v projections have biases (Qwen2).
        gated_mlp: SwiGLU (gate, up, down) rather than a two-matrix MLP.
        source: where the numbers came from (named in the dry-run output).

    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    head_dim: int
    tied_embeddings: bool = False
    qkv_bias: bool = True
    gated_mlp: bool = True
    source: str = ""

    @property
    def kv_dim(self) -> int:
        """``num_kv_heads * head_dim``: the width of K (and of V)."""
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        """q, k, v, o projections (+ q/k/v biases), the MLP and the two norms of one layer."""
        h, kv, q = self.hidden_size, self.kv_dim, self.num_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_hidden_size
        return attn + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the LM head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def num_params(self) -> int:
        """Total parameters: layers, embeddings and the final norm."""
        return self.num_layers * self.params_per_layer + self.embedding_params + self.hidden_size


def arch_from_hf_config(config: Mapping[str, Any], source: str = "") -> ModelArch:
    """:class:`ModelArch` from a HF ``config.json`` mapping (Qwen2 / Llama field names).

    Raises:
        ValueError: a required field is missing or not a positive integer.

    """

    def need(name: str) -> int:
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{source or 'config.json'}: {name} must be a positive integer, got {value!r}")
        return value

    h, heads = need("hidden_size"), need("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    model_type = str(config.get("model_type", ""))
    qkv_bias = bool(config.get("attention_bias", model_type == "qwen2"))
    return ModelArch(hidden_size=h, num_layers=need("num_hidden_layers"), num_heads=heads,
                     num_kv_heads=int(kv), ffn_hidden_size=need("intermediate_size"),
                     vocab_size=need("vocab_size"), max_position_embeddings=need("max_position_embeddings"),
                     head_dim=int(head_dim), tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                     qkv_bias=qkv_bias, gated_mlp=True, source=source)


def _qwen2(h: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, max_pos: int) -> dict[str, Any]:
    return {"model_type": "qwen2", "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ffn,
            "vocab_size": vocab,
            "max_position_embeddings": max_pos, "tie_word_embeddings": False}


#: architecture numbers of the models the shipped recipes and docs/scaling.md name, for a dry run on a
#: machine without the weights (keyed by the model directory's name, case-insensitive).
KNOWN_ARCHS: dict[str, dict[str, Any]] = {
    "deepseek-r1-distill-qwen-1.5b": _qwen2(1536, 28, 12, 2, 8960, 151936, 131072),
    "deepseek-r1-distill-qwen-7b": _qwen2(3584, 28, 28, 4, 18944, 152064, 131072),
    "qwen2.5-7b": _qwen2(3584, 28, 28, 4, 18944, 152064, 131072),
    "qwen2.5-32b": _qwen2(5120, 64, 40, 8, 27648, 152064, 131072),
}


def load_model_arch(model_dir: str | os.PathLike) -> ModelArch | None:
    """The model's architecture: its ``config.json`` when present, else :data:`KNOWN_ARCHS` by name.

    Returns:
        ``None`` when there is neither a ``config.json`` nor a known name.

    """
    path = Path(model_dir)
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        return arch_from_hf_config(json.loads(cfg_file.read_text(encoding="utf-8")), source=str(cfg_file))
    known = KNOWN_ARCHS.get(path.name.lower())
    if known is None:
        return None
    return arch_from_hf_config(known, source=f"built-in table ({path.name}; {path} has no config.json)")


# -------------------------------------------------------------------------------------- phases
@dataclass(frozen=True)
class PhasePlan:
    """The settings in force during one phase (or the whole run when there are no phases).

    Attributes:
        index: phase index (-1 for a run without phases).
        name: phase name.
        start: first 0-based step.
        steps: steps the phase trains (the last phase is cut at ``trainer.max_steps``).
        reset: starts with a hard reset.
        n, temperature, max_response_tokens: sampling settings in force.
        shaping: reward shaping in force (overlong length filled in, see :func:`shaping_for_phase`).
        mixture: domain weights (None = the data's natural mix).
        prefix: the config prefix of the phase's own keys (``phases[3]``, or ``rollout``).
        shaping_keys: the reward-shaping fields the phase itself sets.
        own_keys: the sampling fields (``n``, ``temperature``, ``max_response_tokens``) the phase sets.

    """

    index: int
    name: str
    start: int
    steps: int
    reset: bool
    n: int
    temperature: float
    max_response_tokens: int
    shaping: RewardShapingConfig
    mixture: dict[str, float] | None
    prefix: str
    shaping_keys: tuple[str, ...] = ()
    own_keys: tuple[str, ...] = ()

    def key(self, field_name: str, default_prefix: str = "rollout") -> str:
        """Dotted key of a setting: the phase's own when it sets it, else the run-level default's."""
        own = self.index >= 0 and field_name in self.own_keys
        return f"{self.prefix}.{field_name}" if own else f"{default_prefix}.{field_name}"


def shaping_for_phase(base: RewardShapingConfig, overrides: Mapping[str, Any],
                      max_response_tokens: int) -> RewardShapingConfig:
    """The reward shaping of a phase: ``base`` with the phase's ``overrides``.

    The overlong ramp follows the phase's ``max_response_tokens`` when no ``max_response_len`` is set
    (DAPO ends the ramp at the response limit: ``overlong_buffer.len`` before
    ``data.max_response_length``).
    """
    shaping = dataclasses.replace(base, **dict(overrides))
    if shaping.max_response_len is None:
        shaping = dataclasses.replace(shaping, max_response_len=int(max_response_tokens))
    return shaping


def phase_plans(cfg: ProRLConfig) -> list[PhasePlan]:
    """One :class:`PhasePlan` per phase that runs within ``trainer.max_steps`` (one for a phase-less run)."""
    r = cfg.rollout
    base = cfg.algorithm.reward_shaping
    if not cfg.phases:
        return [PhasePlan(-1, "run", 0, cfg.trainer.max_steps, False, r.n, float(r.temperature),
                          r.max_response_tokens, shaping_for_phase(base, {}, r.max_response_tokens),
                          cfg.data.weights_for_phase(None), "rollout")]
    plans, start = [], 0
    for i, ph in enumerate(cfg.phases):
        if start >= cfg.trainer.max_steps:
            break
        steps = min(ph.steps, cfg.trainer.max_steps - start)
        if i == len(cfg.phases) - 1:  # the last phase extends to the end (ProRLConfig.phase_at)
            steps = cfg.trainer.max_steps - start
        max_resp = ph.max_response_tokens or r.max_response_tokens
        plans.append(PhasePlan(
            i, ph.name, start, steps, bool(ph.reset), ph.n or r.n,
            float(r.temperature if ph.temperature is None else ph.temperature), max_resp,
            shaping_for_phase(base, ph.reward_shaping, max_resp),
            ph.mixture if ph.mixture is not None else cfg.data.weights_for_phase(ph.name), f"phases[{i}]",
            tuple(sorted(ph.reward_shaping)),
            tuple(k for k in ("n", "temperature", "max_response_tokens") if getattr(ph, k) is not None)))
        start += steps
    return plans


def largest_response_tokens(cfg: ProRLConfig) -> int:
    """The largest ``max_response_tokens`` of any phase (or ``rollout.max_response_tokens``)."""
    return max([cfg.rollout.max_response_tokens]
               + [ph.max_response_tokens for ph in cfg.phases if ph.max_response_tokens])


def engine_rollout_config(cfg: ProRLConfig) -> RolloutConfig:
    """The rollout config the engine is built with: sized for the largest response of any phase.

    vLLM fixes its context (``max_model_len = max_prompt_tokens + max_response_tokens``) when the engine
    is built, and the engines refuse ``max_tokens`` above their ``max_response_tokens``; phases then
    sample with their own, smaller ``max_tokens``.
    """
    return dataclasses.replace(cfg.rollout, max_response_tokens=largest_response_tokens(cfg))


def engine_context(rollout: RolloutConfig) -> int:
    """Tokens per sequence the engine built from ``rollout`` accepts (vLLM ``max_model_len``)."""
    return rollout.max_model_len or rollout.max_prompt_tokens + rollout.max_response_tokens


# --------------------------------------------------------------------------------------- checks
def check_phase_lengths(plan: PhasePlan, cfg: ProRLConfig, arch: ModelArch | None) -> None:
    """The phase's prompt + response fits the engine's context and the model's positions.

    Raises:
        ConfigError: naming the phase's ``max_response_tokens`` key.

    """
    r = cfg.rollout
    key = plan.key("max_response_tokens")
    total = r.max_prompt_tokens + plan.max_response_tokens
    what = (f"{plan.max_response_tokens} + rollout.max_prompt_tokens {r.max_prompt_tokens} = {total} tokens "
            f"(phase {plan.name!r})")
    context = engine_context(engine_rollout_config(cfg))
    if total > context:
        raise ConfigError(key, f"{what} exceed rollout.max_model_len={r.max_model_len} (the rollout "
                          "engine's context); raise rollout.max_model_len to at least "
                          f"{r.max_prompt_tokens + largest_response_tokens(cfg)} or set it to null (sized "
                          "from the largest phase)")
    if arch is not None and total > arch.max_position_embeddings:
        raise ConfigError(key, f"{what} exceed the model's max_position_embeddings "
                          f"{arch.max_position_embeddings} ({arch.source}); lower {key} or "
                          "rollout.max_prompt_tokens, or use a model with longer positions")


def check_phase_shaping(plan: PhasePlan) -> None:
    """Reward shaping in force in the phase is valid and its overlong ramp ends at the phase's length.

    Raises:
        ConfigError: naming ``algorithm.reward_shaping.*`` or ``phases[i].reward_shaping.*``.

    """
    s = plan.shaping

    def key(name: str) -> str:
        return (f"{plan.prefix}.reward_shaping.{name}" if name in plan.shaping_keys
                else f"algorithm.reward_shaping.{name}")

    if s.overlong_enable:
        where = plan.key("max_response_tokens")
        if s.overlong_buffer_len >= plan.max_response_tokens:
            raise ConfigError(key("overlong_buffer_len"),
                              f"{s.overlong_buffer_len} must be below {where}={plan.max_response_tokens} "
                              f"(phase {plan.name!r})")
        if s.max_response_len != plan.max_response_tokens:
            raise ConfigError(key("max_response_len"),
                              f"{s.max_response_len} differs from {where}={plan.max_response_tokens} in "
                              f"phase {plan.name!r}: the overlong ramp would not end at the response limit; "
                              "set it to null (it then follows each phase's max_response_tokens)")
    check(s, f"{plan.prefix}.reward_shaping" if plan.shaping_keys else "algorithm.reward_shaping")


def check_phase_batches(plan: PhasePlan, cfg: ProRLConfig, dp_size: int) -> None:
    """The phase's batch splits into mini-batches, each over the DP ranks.

    ``prompts_per_step * n`` sequences per step, ``mini_batch_prompts * n`` per optimizer update,
    ``mini_batch_prompts * n / dp_size`` per rank per update.

    Raises:
        ConfigError: naming ``trainer.*`` or the phase's ``n``.

    """
    tc = cfg.trainer
    if tc.prompts_per_step % tc.mini_batch_prompts:
        raise ConfigError("trainer.mini_batch_prompts", f"{tc.mini_batch_prompts} does not divide "
                          f"trainer.prompts_per_step={tc.prompts_per_step}")
    seqs = tc.mini_batch_prompts * plan.n
    if seqs % dp_size:
        raise ConfigError(plan.key("n"), f"phase {plan.name!r}: a mini-batch of trainer.mini_batch_prompts "
                          f"{tc.mini_batch_prompts} x n {plan.n} = {seqs} sequences does not split over "
                          f"{dp_size} data-parallel ranks; make mini_batch_prompts * n a multiple of "
                          f"{dp_size}")
    # Under PP a rank's rows need not fill whole micro-batches: the engine pads the last fixed-count
    # micro-batch with empty rows, and token-budget micro-batches exchange their shapes.


def data_parallel_size(cfg: ProRLConfig, world_size: int) -> int:
    """``world_size / (TP * PP)``.

    Raises:
        ConfigError: when ``TP * PP`` does not divide the world size.

    """
    tp, pp = cfg.policy.tensor_model_parallel_size, cfg.policy.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ConfigError("policy.tensor_model_parallel_size",
                          f"TP {tp} x PP {pp} does not divide the world size {world_size}")
    return world_size // (tp * pp)


def world_size_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The launch's world size (torchrun ``WORLD_SIZE``, else Slurm ``SLURM_NTASKS``), None outside one."""
    env = os.environ if environ is None else environ
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def check_algorithm(cfg: ProRLConfig) -> None:
    """Algorithm settings the trainer would otherwise accept and ignore.

    Raises:
        ConfigError: ``algorithm.kl.where: reward`` (the trainer applies the KL in the loss only), a data
            prompt limit above the engine's, or both ``trainer.generation_prompts`` and
            ``algorithm.dynamic_sampling.oversample`` set.

    """
    kl = cfg.algorithm.kl
    if kl.where != "loss" and kl.coef > 0:
        raise ConfigError("algorithm.kl.where", f"{kl.where!r} is not applied by the trainer (the KL "
                          "penalty would silently disappear); use algorithm.kl.where=loss (ProRL puts "
                          "beta * KL in the loss), or algorithm.kl.coef=0")
    d, r = cfg.data.max_prompt_tokens, cfg.rollout.max_prompt_tokens
    if d is not None and d > r:  # data preflight would pass prompts the engine then refuses mid-run
        raise ConfigError("data.max_prompt_tokens", f"{d} exceeds rollout.max_prompt_tokens={r}; prompts "
                          "between the two would pass data validation and stop the run at generation; lower "
                          "it or leave it null (= rollout.max_prompt_tokens)")
    ds = cfg.algorithm.dynamic_sampling
    if cfg.trainer.generation_prompts is not None and ds.oversample != 1:
        raise ConfigError("algorithm.dynamic_sampling.oversample",
                          f"{ds.oversample} and trainer.generation_prompts={cfg.trainer.generation_prompts} "
                          "both set the prompts per generation round; keep one")


def check_recipe(cfg: ProRLConfig, arch: ModelArch | None, world_size: int | None = None) -> list[PhasePlan]:
    """Every start-up check of a recipe, phase by phase.

    Args:
        cfg: the composed config (each section already validated on its own).
        arch: the model's architecture (None: the position check is skipped).
        world_size: ranks of the job (None: batch divisibility over DP is checked for DP = 1 only).

    Returns:
        The phase plans (what :func:`nemo_prorl.trainer.dry_run` prints).

    Raises:
        ConfigError: naming the phase and the dotted key, and the fix.

    """
    check_algorithm(cfg)
    dp = 1 if world_size is None else data_parallel_size(cfg, world_size)
    plans = phase_plans(cfg)
    for plan in plans:
        check_phase_lengths(plan, cfg, arch)
        check_phase_shaping(plan)
        check_phase_batches(plan, cfg, dp)
    return plans
