"""``RewardsConfig``: how rewards are executed (worker pool, deadlines) and each domain's options."""

from __future__ import annotations

import inspect
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from nemo_prorl.config_schema import check, load


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

    num_workers: int = field(default=2, metadata={"ge": 1})
    timeout_s: float = field(default=10.0, metadata={"gt": 0})
    load_timeout_s: float = field(default=60.0, metadata={"gt": 0})
    max_retries: int = field(default=1, metadata={"ge": 0})
    domains: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    code_sandbox: dict[str, Any] = field(default_factory=dict)
    domain_timeout_s: dict[str, float] = field(default_factory=lambda: {"code": 45.0}, metadata={"gt": 0})
    max_error_rate: float = field(default=0.05, metadata={"ge": 0, "le": 1})
    error_window_steps: int = field(default=3, metadata={"ge": 1})
    failure_score: float = 0.0
    worker_user: str | int | None = "nobody"
    privileged_domains: list[str] = field(default_factory=lambda: ["code"])
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_env_passthrough: list[str] = field(
        default_factory=lambda: ["LANG", "LC_ALL", "LC_CTYPE", "TZ", "NLTK_DATA"])

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RewardsConfig:
        """Build from a plain mapping (e.g. an OmegaConf container), checked: :func:`config_schema.load`."""
        return load(cls, data, "rewards")

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

    def validate(self, key: str = "rewards") -> None:
        """Check types, ranges and that every domain option names a real keyword of its reward.

        Raises:
            ConfigError: naming the offending dotted key.

        """
        check(self, key)

    def problems(self, key: str) -> Iterator[tuple[str, str]]:
        """Every domain is a registered reward and every option a keyword of it (and valid, if it checks)."""
        from nemo_prorl.rewards import registered_rewards

        rewards = registered_rewards()
        for domain in self.domains:
            if domain not in rewards:
                yield f"{key}.domains", f"unknown domain {domain!r}; registered: {sorted(rewards)}"
        for domain in set(self.domains) | ({"code"} if self.code_sandbox else set()):
            if domain not in rewards:
                continue
            params = inspect.signature(rewards[domain].__init__).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                continue
            for name in self.reward_kwargs(domain):
                if name not in params or name == "self":
                    allowed = sorted(k for k in params if k != "self")
                    yield f"{key}.domains.{domain}", f"unknown option {name!r}; allowed: {allowed}"
        for domain in self.domains:
            # a reward may check its option values up front (e.g. reward_model: a local safetensors path);
            # each problem reads "<dotted key>: <message>"
            check_options = getattr(rewards.get(domain), "check_options", None)
            if callable(check_options):
                for problem in check_options(self.reward_kwargs(domain)):
                    where, sep, message = str(problem).partition(": ")
                    yield (where, message) if sep else (f"{key}.domains.{domain}", str(problem))
