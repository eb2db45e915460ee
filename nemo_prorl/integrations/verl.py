r"""ProRL's rewards as verl's custom reward function.

verl calls a custom reward function (``custom_reward_function.path`` / ``.name`` in its PPO config,
loaded by ``verl/trainer/ppo/reward.py::get_custom_reward_fn``, which merges
``custom_reward_function.reward_kwargs`` into every call) in one of two shapes:

* one row at a time, by ``NaiveRewardManager`` (``verl/workers/reward_manager/naive.py``)::

      compute_score(data_source=str, solution_str=str, ground_truth=Any, extra_info=dict, **reward_kwargs)

* a whole batch, by ``BatchRewardManager`` (``verl/workers/reward_manager/batch.py``)::

      compute_score(data_sources=..., solution_strs=list[str], ground_truths=list, extra_infos=list[dict],
                    **reward_kwargs)

and reads back a float, or a dict whose ``"score"`` is the reward and whose every key is gathered into
``reward_extra_info`` (so every row must return the same keys). Both functions here return
``{"score": float, "status": str, "domain": str}`` and score through a :class:`RewardPool` (killable
workers, per-sample deadlines, the code sandbox; ``reward_model`` rows in this process, batched).

**Rows.** A verl row ``(data_source, ground_truth, extra_info)`` becomes a scoring row by
:func:`to_row`. The domain is, in order: ``extra_info["domain"]``; ``reward_kwargs["domain_map"]``
(``{data_source: domain}``); the built-in map :data:`DATA_SOURCES` (the names verl's
``default_compute_score`` dispatches on); a ``data_source`` that is itself a registered domain. Ground
truth per domain:

* ``math`` / ``mcq``: ``answer = ground_truth``. verl's GSM8K and DAPO prompts ask for ``#### 42`` and
  ``Answer: 42`` instead of ``\boxed{42}``; for those sources (and ``answer_format`` in ``extra_info``)
  a response without a ``\boxed{}`` is read through that convention (:func:`boxed_from_convention`).
* ``code``: verl's APPS/TACO/CodeContests JSON ``{"inputs": [...], "outputs": [...], "fn_name"?}``
  (stdin/stdout pairs; with ``fn_name``, call-based cases become asserts on that function) or our own
  ``tests`` list.
* ``reasoning_gym``, ``ifeval``: a ``ground_truth`` dict with our fields (``task``/``entry``,
  ``instructions``), or those fields in ``extra_info``.
* ``reward_model``: no ground truth; verl does not pass the prompt to the reward function, so the RM
  reads ``extra_info["prompt"]`` (or ``extra_info["question"]``) when present.

Other keys of ``extra_info`` named like our ground-truth fields (``options``, ``entry_point``...) are
copied. An unmapped ``data_source`` raises ``ValueError`` (as verl's default does for an unknown one).

**Config.** ``reward_kwargs["rewards"]`` is a ``rewards:`` mapping (:class:`RewardsConfig`); one pool is
kept per process and config and closed at exit. Example (verl Hydra overrides)::

    custom_reward_function.path=$(python -c "import nemo_prorl.integrations.verl as m; print(m.__file__)")
    custom_reward_function.name=compute_score_batch  reward_model.reward_manager=batch
    +custom_reward_function.reward_kwargs.rewards.num_workers=8

Importing this module pulls in neither torch nor megatron-core.
"""

from __future__ import annotations

import atexit
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nemo_prorl.rewards.base import RewardResult, registered_rewards
from nemo_prorl.rewards.config import RewardsConfig
from nemo_prorl.rewards.pool import RewardPool

#: verl ``data_source`` names -> our domains (the groups of ``verl.utils.reward_score.default_compute_score``
#: plus common code sets that use the same ``{"inputs", "outputs"}`` ground truth)
DATA_SOURCES: dict[str, str] = {
    "openai/gsm8k": "math",
    "lighteval/MATH": "math",
    "DigitalLearningGmbH/MATH-lighteval": "math",
    "HuggingFaceH4/MATH-500": "math",
    "math_dapo": "math",
    "math_dapo_reasoning": "math",
    "numina_aops_forum": "math",
    "numina_synthetic_math": "math",
    "numina_amc_aime": "math",
    "numina_synthetic_amc": "math",
    "numina_cn_k12": "math",
    "numina_olympiads": "math",
    "hiyouga/geometry3k": "math",
    "codecontests": "code",
    "apps": "code",
    "codeforces": "code",
    "taco": "code",
    "primeintellect": "code",
}

#: data sources whose prompts ask for a final answer in another convention than ``\boxed{}``
ANSWER_FORMATS: dict[str, str] = {"openai/gsm8k": "gsm8k", "math_dapo": "dapo", "math_dapo_reasoning": "dapo"}

#: fields copied from ``extra_info`` / a dict ``ground_truth`` into the scoring row
_ROW_KEYS = ("answer", "options", "tests", "entry_point", "task", "entry", "instructions", "prompt")

_GSM8K = re.compile(r"#### (-?[0-9.,]+)")
_DAPO = re.compile(r"(?im)^[ \t]*Answer[ \t]*:[ \t]*(.+?)[ \t]*$")


def plain(value: Any) -> Any:
    """``value`` as plain JSON-like Python (lists, dicts, Python numbers).

    verl's ``non_tensor_batch`` holds parquet columns as numpy object arrays, and Hydra's ``reward_kwargs``
    nest OmegaConf containers; neither survives the pool's JSON protocol as is.
    """
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, Sequence):
        return [plain(v) for v in value]
    return value


def domain_of(data_source: str, extra_info: Mapping[str, Any] | None = None,
              domain_map: Mapping[str, str] | None = None) -> str:
    """Our domain for a verl row (see the module docstring for the order of the rules).

    Raises:
        ValueError: when nothing maps ``data_source``, naming the two ways to fix it.

    """
    if extra_info and isinstance(extra_info.get("domain"), str):
        return extra_info["domain"]
    if domain_map and data_source in domain_map:
        return domain_map[data_source]
    if data_source in DATA_SOURCES:
        return DATA_SOURCES[data_source]
    if isinstance(data_source, str) and data_source.startswith("aime"):
        return "math"  # verl: data_source.startswith("aime") -> math_dapo
    if data_source in registered_rewards():
        return data_source
    raise ValueError(f"verl data_source {data_source!r} has no ProRL domain: set extra_info['domain'] in the "
                     "data, or pass custom_reward_function.reward_kwargs.domain_map "
                     "{data_source: domain}")


def boxed_from_convention(response: str, fmt: str) -> str:
    r"""``response`` with its final answer re-stated as ``\boxed{}`` when it uses another convention.

    ``gsm8k``: the last ``#### <number>`` (commas dropped, as verl's strict GSM8K extraction);
    ``dapo``: the last line ``Answer: <text>``. A response that already has a ``\boxed`` is unchanged.
    """
    if "\\boxed" in response:
        return response
    if fmt == "gsm8k":
        hits = _GSM8K.findall(response)
        if hits:
            return f"{response}\n\\boxed{{{hits[-1].replace(',', '').rstrip('.')}}}"
    elif fmt == "dapo":
        hits = _DAPO.findall(response)
        if hits:
            return f"{response}\n\\boxed{{{hits[-1]}}}"
    return response


def code_tests(ground_truth: Any) -> tuple[list[dict], str | None]:
    """Our ``tests`` (and ``entry_point``) from verl's code ground truth.

    Args:
        ground_truth: ``{"inputs": [...], "outputs": [...], "fn_name"?: str}`` or its JSON string
            (APPS / TACO / CodeContests as verl's ``prime_code`` reads them), or our own test list.

    Returns:
        ``(tests, entry_point)``. Standard-input cases become ``{"input", "output"}`` (a list of lines is
        joined with newlines); with ``fn_name`` each case becomes the assert
        ``fn(*inputs) == out or fn(*inputs) == out[0]`` (APPS wraps a call's expected value in a list).

    Raises:
        ValueError: on a shape that is neither.

    """
    gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(gt, list):
        return gt, None
    if not isinstance(gt, Mapping) or "inputs" not in gt or "outputs" not in gt:
        raise ValueError("code ground_truth: expected {'inputs': [...], 'outputs': [...]} or a list of tests")
    inputs, outputs, fn = gt["inputs"], gt["outputs"], gt.get("fn_name")
    if len(inputs) != len(outputs):
        raise ValueError(f"code ground_truth: {len(inputs)} inputs but {len(outputs)} outputs")
    if fn:
        if not str(fn).isidentifier():
            raise ValueError(f"code ground_truth: fn_name {fn!r} is not a Python identifier")
        tests = []
        for args, out in zip(inputs, outputs):
            args = args if isinstance(args, list) else [args]
            call = f"{fn}({', '.join(repr(a) for a in args)})"
            check = f"assert {call} == {out!r}"
            if isinstance(out, list) and len(out) == 1:
                check += f" or {call} == {out[0]!r}"
            tests.append({"assert": check})
        return tests, str(fn)

    def text(v: Any) -> str:
        return "\n".join(map(str, v)) if isinstance(v, list) else str(v)

    return [{"input": text(i), "output": text(o)} for i, o in zip(inputs, outputs)], None


def to_row(data_source: str, solution_str: str, ground_truth: Any,
           extra_info: Mapping[str, Any] | None = None,
           domain_map: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The scoring row of one verl row (see the module docstring).

    Raises:
        ValueError: for an unmapped ``data_source`` or unusable code ground truth.

    """
    extra = plain(dict(extra_info or {}))
    ground_truth = plain(ground_truth)
    domain = domain_of(data_source, extra, domain_map)
    row: dict[str, Any] = {"domain": domain}
    if isinstance(ground_truth, Mapping):
        row.update({k: ground_truth[k] for k in _ROW_KEYS if k in ground_truth})
    row.update({k: extra[k] for k in _ROW_KEYS if k in extra and k not in row})
    response = solution_str
    if domain in ("math", "mcq"):
        if not isinstance(ground_truth, Mapping):
            row["answer"] = ground_truth
        fmt = extra.get("answer_format") or ANSWER_FORMATS.get(data_source) or (
            "dapo" if str(data_source).startswith("aime") else None)
        if fmt:
            response = boxed_from_convention(response, str(fmt))
    elif domain == "code" and "tests" not in row:
        row["tests"], entry_point = code_tests(ground_truth)
        if entry_point and "entry_point" not in row:
            row["entry_point"] = entry_point
    elif domain == "ifeval" and isinstance(ground_truth, (list, str)) and "instructions" not in row:
        row["instructions"] = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    elif domain == "reward_model" and "prompt" not in row and isinstance(extra.get("question"), str):
        row["prompt"] = extra["question"]
    if domain != "reward_model":
        row.pop("prompt", None)  # only the reward model reads it
    row["response"] = response
    return row


_POOLS: dict[str, RewardPool] = {}


def _pool(rewards: Mapping[str, Any] | RewardsConfig | None) -> RewardPool:
    if isinstance(rewards, RewardsConfig):
        cfg = rewards
    else:
        cfg = RewardsConfig.from_dict(plain(dict(rewards or {})))
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    if key not in _POOLS:
        _POOLS[key] = RewardPool(cfg)
    return _POOLS[key]


@atexit.register
def close_pools() -> None:
    """Stop every reward pool this module started (also run at interpreter exit)."""
    while _POOLS:
        _POOLS.popitem()[1].close()


def _as_verl(result: RewardResult, domain: str, failure_score: float) -> dict[str, Any]:
    score = float(result.score) if result.status == "ok" else float(failure_score)
    return {"score": score, "status": result.status, "domain": domain}


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any],
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None, *,
                        rewards: Mapping[str, Any] | None = None, domain_map: Mapping[str, str] | None = None,
                        **_unused: Any) -> list[dict[str, Any]]:
    """The verl ``BatchRewardManager`` form: one ``{"score", "status", "domain"}`` dict per row, in order.

    Args:
        data_sources, solution_strs, ground_truths, extra_infos: as verl passes them (same length; verl
            hands numpy object arrays, any sequence works).
        rewards: the ``rewards:`` config of the pool (workers, deadlines, per-domain options).
        domain_map: extra ``{data_source: domain}`` entries.

    Rows whose status is not ``ok`` (wrong format, deadline, sandbox violation) get
    ``rewards.failure_score`` (0.0 by default).

    Raises:
        ValueError: when the lengths differ or a ``data_source`` is unmapped.

    """
    n = len(solution_strs)
    extras = list(extra_infos) if extra_infos is not None else [None] * n
    if not len(data_sources) == len(ground_truths) == len(extras) == n:
        raise ValueError(f"compute_score_batch: lengths differ (data_sources {len(data_sources)}, "
                         f"solution_strs {n}, ground_truths {len(ground_truths)}, extra_infos {len(extras)})")
    rows = [to_row(str(ds), s, gt, ex, domain_map)
            for ds, s, gt, ex in zip(data_sources, solution_strs, ground_truths, extras)]
    pool = _pool(rewards)
    results = pool.score(rows)
    return [_as_verl(r, row["domain"], pool.config.failure_score) for r, row in zip(results, rows)]


def compute_score(data_source: str, solution_str: str, ground_truth: Any,
                  extra_info: Mapping[str, Any] | None = None, *, rewards: Mapping[str, Any] | None = None,
                  domain_map: Mapping[str, str] | None = None, **_unused: Any) -> dict[str, Any]:
    """The verl ``NaiveRewardManager`` form: score one row; returns ``{"score", "status", "domain"}``.

    Goes through the same pool as :func:`compute_score_batch` (one sample in flight at a time; prefer
    the batch form, ``reward_model.reward_manager=batch``, for throughput). Extra keyword arguments
    verl may pass (``sandbox_fusion_url``, ``concurrent_semaphore``, ``memory_limit_mb``) are ignored:
    code runs in our sandbox.
    """
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info],
                               rewards=rewards, domain_map=domain_map)[0]
