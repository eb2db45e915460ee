"""``DataConfig``: every knob of the data pipeline, validated when it is built (before any model)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.config_schema import ConfigError, check, load
from nemo_prorl.schema import known_domains

POLICIES: tuple[str, ...] = ("skip", "fail")


def check_weights(weights: Mapping[str, float], where: str = "mixture") -> dict[str, float]:
    """Validate a domain -> weight mapping and return it as a plain dict of floats.

    Args:
        weights: relative weight per domain (need not sum to 1).
        where: name used in error messages (for example ``"phase_mixtures.run3"``).

    Raises:
        ConfigError: on an unknown domain, a negative / non-finite / non-numeric weight, or an
            all-zero mapping, naming ``where.<domain>``.

    """
    if not isinstance(weights, Mapping):
        raise ConfigError(where, f"expected a mapping domain -> weight, got {type(weights).__name__}")
    out: dict[str, float] = {}
    for domain, w in weights.items():
        if domain not in (known := known_domains()):
            raise ConfigError(f"{where}.{domain}", f"unknown domain (known: {', '.join(known)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"{where}.{domain}", f"weight must be a number, got {w!r}")
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"{where}.{domain}", f"weight must be finite and >= 0, got {w!r}")
        out[domain] = float(w)
    if not out or sum(out.values()) <= 0:
        raise ConfigError(where, "at least one domain needs a weight > 0")
    return out


@dataclass
class DataConfig:
    """Configuration of training / validation data (the ``data:`` group of the Hydra config).

    Attributes:
        train_files: training data: JSONL, JSON (array or lines) or parquet files, or directories of
            such shards. Rows follow :mod:`nemo_prorl.schema`.
        val_files: validation data, same formats; evaluated every ``val_interval`` steps.
        mixture: relative sampling weight per domain, e.g. ``{"math": 40, "code": 24}``. ``None``
            samples every row once per epoch, so the mix follows the data set sizes (ProRL's setting).
        phase_mixtures: per-phase weights keyed by phase name; the trainer passes
            ``weights_for_phase(name)`` to ``MixtureSampler.set_weights`` when a phase starts (ProRL's
            run 3 added instruction following this way). Phases not listed keep ``mixture``.
        templates: per-domain prompt format strings overriding the defaults of
            :data:`nemo_prorl.data.templates.DEFAULT_TEMPLATES`; placeholders ``{prompt}`` and
            ``{options}`` only.
        system_prompt: optional system message put before the user turn when a chat template is used.
        max_prompt_tokens: prompts longer than this (in tokens, after the template) are filtered out at
            preflight and their ids listed. ``None`` disables the check.
        validation_policy: ``"skip"`` drops malformed rows and reports them; ``"fail"`` aborts the run
            before any model is built when any row is malformed.
        check_rewards: also ask each registered reward to validate its domain's ground truth.
        seed: seed of the shuffles and of the domain draws; the sampler is deterministic given it.
        shuffle: reshuffle every epoch (permutation seeded by ``(seed, epoch)``); ``False`` keeps file
            order.

    """

    train_files: list[str] = field(default_factory=list, metadata={"nonempty": True, "one_or_many": True})
    val_files: list[str] = field(default_factory=list, metadata={"nonempty": True, "one_or_many": True})
    mixture: dict[str, float] | None = None
    phase_mixtures: dict[str, dict[str, float]] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    max_prompt_tokens: int | None = field(default=None, metadata={"ge": 1, "fix": "or null (no check)"})
    validation_policy: str = field(default="skip", metadata={"choices": POLICIES})
    check_rewards: bool = True
    seed: int = field(default=42, metadata={"ge": 0})
    shuffle: bool = True

    def __post_init__(self) -> None:
        """Check the values (a bad one fails here, before any data is read); one path may be a string."""
        for name in ("train_files", "val_files"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
        self.phase_mixtures = dict(self.phase_mixtures)
        self.templates = dict(self.templates)
        check(self, "data")
        if self.mixture is not None:
            self.mixture = check_weights(self.mixture, "data.mixture")
        self.phase_mixtures = {k: check_weights(v, f"data.phase_mixtures.{k}")
                               for k, v in self.phase_mixtures.items()}

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """The domain weights and the templates (their own checks raise :class:`ConfigError`)."""
        if self.mixture is not None:
            check_weights(self.mixture, f"{key}.mixture")
        for name, weights in self.phase_mixtures.items():
            check_weights(weights, f"{key}.phase_mixtures.{name}")
        # imported here: templates imports nothing from config, but keep the module light to import
        from nemo_prorl.data.templates import check_templates

        check_templates(self.templates, f"{key}.templates")
        return iter(())

    def weights_for_phase(self, phase: str | None) -> dict[str, float] | None:
        """The mixture weights for ``phase`` (``mixture`` when the phase has none of its own)."""
        if phase is not None and phase in self.phase_mixtures:
            return dict(self.phase_mixtures[phase])
        return None if self.mixture is None else dict(self.mixture)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """Build from a plain mapping (e.g. ``OmegaConf.to_container(cfg.data)``), checked."""
        return load(cls, values, "data")
