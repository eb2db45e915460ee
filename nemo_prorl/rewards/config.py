"""``RewardsConfig``: how rewards are executed (worker pool, deadlines) and each domain's options."""

from __future__ import annotations

import inspect
import os
import pwd
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class RewardsConfig:
    """Options of the reward worker pool and of every reward domain.

    Attributes:
        num_workers: reward worker processes (each scores one sample at a time). When the pool runs
            as root, rows of ``privileged_domains`` get up to this many workers of their own.
        timeout_s: hard wall-clock deadline per sample, enforced by the parent: a worker still busy
            after it is SIGKILLed and replaced, and the sample gets status ``timeout``.
        load_timeout_s: extra time granted the first time a worker loads a domain (imports such as
            reasoning-gym take seconds) and for a fresh worker to start.
        max_retries: how many times a sample whose worker *died* (not timed out) is re-run on a new
            worker before it gets status ``error``.
        domains: per-domain keyword options, e.g. ``{"math": {"mv_timeout_s": None}}``; keys must be
            registered reward names and options must be keyword arguments of that reward.
        code_sandbox: sandbox options of the code reward (``backend``, ``allow_unsafe``, ``memory_mb``...),
            passed through as its keyword arguments; ``domains["code"]`` wins on a clash.
        domain_timeout_s: per-domain override of ``timeout_s`` (the code reward runs many test cases
            and needs its ``total_timeout_s`` plus a margin).
        max_error_rate: the trainer aborts when the fraction of grader faults (status ``error``)
            exceeds this for ``error_window_steps`` consecutive steps. The policy's own ``timeout``,
            ``violation`` and ``no_answer`` samples are zero rewards, never grader faults: a policy
            that writes slow or hostile output cannot stop the run.
        error_window_steps: see ``max_error_rate``.
        failure_score: reward the trainer gives samples whose status is not ``ok`` (0.0 by contract;
            a negative value acts as a penalty).
        worker_user: when the pool runs as root, the user (name or uid) the reward workers switch to
            after their imports; ``null`` keeps them root (not recommended). Workers of
            ``privileged_domains`` stay root.
        privileged_domains: domains scored in workers that keep root when the pool is root: the
            ``code`` reward needs it to run each sandbox under its own slot uid (it never runs model
            code outside that sandbox).
        worker_env: extra environment variables of the workers. Workers otherwise get a scrubbed
            environment: ``PATH``, ``PYTHONPATH``, a private ``HOME``/``TMPDIR``, a few fixed settings
            and the variables named in ``worker_env_passthrough`` (never the parent's secrets).
        worker_env_passthrough: names of parent environment variables passed to the workers.

    """

    num_workers: int = 2
    timeout_s: float = 10.0
    load_timeout_s: float = 60.0
    max_retries: int = 1
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    code_sandbox: dict[str, Any] = field(default_factory=dict)
    domain_timeout_s: dict[str, float] = field(default_factory=lambda: {"code": 45.0})
    max_error_rate: float = 0.05
    error_window_steps: int = 3
    failure_score: float = 0.0
    worker_user: str | int | None = "nobody"
    privileged_domains: list[str] = field(default_factory=lambda: ["code"])
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_env_passthrough: list[str] = field(
        default_factory=lambda: ["LANG", "LC_ALL", "LC_CTYPE", "TZ", "NLTK_DATA"])

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RewardsConfig:
        """Build from a plain mapping (e.g. an OmegaConf container); unknown keys are an error."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"rewards config: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (sent to the worker processes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def worker_ids(self) -> tuple[int, int] | None:
        """``(uid, gid)`` the workers switch to, or ``None`` (not root, or ``worker_user: null``).

        Raises:
            ValueError: naming ``rewards.worker_user`` when the user does not exist.

        """
        if self.worker_user is None or os.geteuid() != 0:
            return None
        if isinstance(self.worker_user, int) or str(self.worker_user).isdigit():
            uid = int(self.worker_user)
            try:
                return uid, pwd.getpwuid(uid).pw_gid
            except KeyError:
                return uid, uid
        try:
            entry = pwd.getpwnam(str(self.worker_user))
        except KeyError as exc:
            raise ValueError(f"rewards.worker_user: no user {self.worker_user!r} on this host; name an "
                             "existing unprivileged user or uid (or null to keep root)") from exc
        if entry.pw_uid == 0:
            raise ValueError("rewards.worker_user names root; name an unprivileged user (or null)")
        return entry.pw_uid, entry.pw_gid

    def reward_kwargs(self, domain: str) -> dict[str, Any]:
        """Keyword arguments for the reward of ``domain``."""
        kwargs = dict(self.code_sandbox) if domain == "code" else {}
        kwargs.update(self.domains.get(domain) or {})
        return kwargs

    def timeout_for(self, domain: Any) -> float:
        """The per-sample deadline for ``domain`` in seconds."""
        return float(self.domain_timeout_s.get(domain, self.timeout_s)) if isinstance(domain, str) \
            else float(self.timeout_s)

    def validate(self) -> None:
        """Check ranges and that every domain option names a real keyword of its reward.

        Raises:
            ValueError: naming the offending field.

        """
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"rewards.num_workers must be an integer >= 1, got {self.num_workers!r}")
        for name in ("timeout_s", "load_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"rewards.{name} must be > 0, got {value!r}")
        if not isinstance(self.domain_timeout_s, dict) or not all(
                isinstance(v, (int, float)) and v > 0 for v in self.domain_timeout_s.values()):
            raise ValueError("rewards.domain_timeout_s must map domains to seconds > 0, "
                             f"got {self.domain_timeout_s!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"rewards.max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not 0.0 <= float(self.max_error_rate) <= 1.0:
            raise ValueError(f"rewards.max_error_rate must be in [0, 1], got {self.max_error_rate!r}")
        if not isinstance(self.error_window_steps, int) or self.error_window_steps < 1:
            raise ValueError(f"rewards.error_window_steps must be >= 1, got {self.error_window_steps!r}")
        if self.worker_user is not None and not isinstance(self.worker_user, (str, int)):
            raise ValueError(f"rewards.worker_user must be a user, a uid or null, got {self.worker_user!r}")
        if not isinstance(self.privileged_domains, (list, tuple)) or not all(
                isinstance(d, str) for d in self.privileged_domains):
            raise ValueError(f"rewards.privileged_domains must be a list, got {self.privileged_domains!r}")
        if not isinstance(self.worker_env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.worker_env.items()):
            raise ValueError(f"rewards.worker_env must map names to strings, got {self.worker_env!r}")
        if not isinstance(self.worker_env_passthrough, (list, tuple)) or not all(
                isinstance(k, str) for k in self.worker_env_passthrough):
            raise ValueError("rewards.worker_env_passthrough must be a list of variable names, "
                             f"got {self.worker_env_passthrough!r}")
        if not isinstance(self.domains, dict):
            raise ValueError("rewards.domains must be a mapping domain -> options")
        from nemo_prorl.rewards import registered_rewards

        rewards = registered_rewards()
        for domain, opts in self.domains.items():
            if domain not in rewards:
                raise ValueError(f"rewards.domains: unknown domain {domain!r}; registered: {sorted(rewards)}")
            if opts is not None and not isinstance(opts, dict):
                raise ValueError(f"rewards.domains.{domain} must be a mapping of options")
        for domain in set(self.domains) | ({"code"} if self.code_sandbox else set()):
            if domain not in rewards:
                continue
            params = inspect.signature(rewards[domain].__init__).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            for key in self.reward_kwargs(domain):
                if key not in params or key == "self":
                    allowed = sorted(k for k in params if k != "self")
                    raise ValueError(f"rewards.domains.{domain}: unknown option {key!r}; allowed: {allowed}")
        for domain in self.domains:
            # a reward may check its option values up front (e.g. reward_model: a local safetensors path)
            check = getattr(rewards.get(domain), "check_options", None)
            if callable(check):
                problems = check(self.reward_kwargs(domain))
                if problems:
                    raise ValueError("; ".join(problems))
