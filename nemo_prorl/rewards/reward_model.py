r"""The ``reward_model`` reward: a learned Bradley-Terry reward model as a reward.

A Bradley-Terry RM is a sequence classifier with one output (``num_labels=1``) trained so that
``P(a preferred to b) = sigmoid(r(a) - r(b))``; its logit ``r(prompt, response)`` read at the last
non-pad token is the reward. The score of one response is

    z = (r - shift) / scale
    score = sigmoid(z)        (``squash="sigmoid"``, default: in (0, 1) like the verifiable rewards)
    score = z                 (``squash="none"``: the raw, unbounded logit, affinely rescaled)

Where it runs: in the process that calls :meth:`RewardPool.score <nemo_prorl.rewards.pool.RewardPool.score>`
(the trainer's rank 0, the scoring CLI, the eval runner), **not** in the reward workers. The workers are
small torch-free interpreters that score one sample at a time and are killed on a deadline; loading one
RM copy per worker would multiply its memory by ``num_workers`` and could not batch. So the pool keeps
one :class:`RewardModelReward` per process, sends every ``reward_model`` row of a ``score`` call to it
as one batched forward pass (``batch_size`` rows at a time, on ``device``), and the verifiable rows of
the same call to the workers as before: one call mixes both. The model is a trusted local file and its
forward pass is bounded by ``max_length``, so it needs no kill deadline.

Loading is local and pickle-free: ``from_pretrained(path, local_files_only=True, use_safetensors=True,
trust_remote_code=False)``; a directory without ``*.safetensors`` weights is refused at config time.

Rows: ``{"domain": "reward_model", "response": str, "prompt": str | [{role, content}, ...] (optional)}``.
With a chat prompt and a tokenizer that has a chat template, the RM reads
``apply_chat_template(prompt + [{"role": "assistant", "content": response}])``; otherwise
``prompt + "\n" + response`` (or the response alone). Texts longer than ``max_length`` tokens are
truncated on the left, so the end of the response (where the RM reads its logit) is always seen.
"""

from __future__ import annotations

import math
import os
from typing import Any

from nemo_prorl.rewards.base import Reward, RewardResult, register_reward
from nemo_prorl.schema import Problem

SQUASHES: tuple[str, ...] = ("sigmoid", "none")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
TEMPLATES: tuple[str, ...] = ("auto", "chat", "plain")

_KEY = "rewards.domains.reward_model"


def squash_score(logit: float, squash: str = "sigmoid", shift: float = 0.0, scale: float = 1.0) -> float:
    """Map a raw RM logit to a score: ``sigmoid((logit - shift) / scale)`` or the affine part alone."""
    z = (float(logit) - shift) / scale
    if squash == "none":
        return z
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def check_options(opts: dict[str, Any]) -> list[str]:
    """Problems with the options of the ``reward_model`` domain, each naming its dotted key.

    Args:
        opts: the keyword options (``rewards.domains.reward_model``).

    Returns:
        Messages; empty when the options are usable.

    """
    out: list[str] = []
    path = opts.get("path")
    if not isinstance(path, str) or not path:
        out.append(f"{_KEY}.path: required, the local directory of a sequence-classification model "
                   "saved with save_pretrained(..., safe_serialization=True)")
    elif not os.path.isdir(path):
        out.append(f"{_KEY}.path: {path!r} is not a directory (models are loaded from local paths only)")
    elif not any(f.endswith(".safetensors") for f in os.listdir(path)):
        out.append(f"{_KEY}.path: no *.safetensors weights in {path!r}; pickle checkpoints are not loaded -- "
                   "convert with model.save_pretrained(dir, safe_serialization=True)")
    for key in ("batch_size", "max_length"):
        v = opts.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            out.append(f"{_KEY}.{key}: must be an integer >= 1, got {v!r}")
    if opts.get("squash", "sigmoid") not in SQUASHES:
        out.append(f"{_KEY}.squash: must be one of {SQUASHES}, got {opts.get('squash')!r}")
    if opts.get("dtype", "float32") not in DTYPES:
        out.append(f"{_KEY}.dtype: must be one of {DTYPES}, got {opts.get('dtype')!r}")
    if opts.get("template", "auto") not in TEMPLATES:
        out.append(f"{_KEY}.template: must be one of {TEMPLATES}, got {opts.get('template')!r}")
    scale = opts.get("scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0 or math.isinf(scale):
        out.append(f"{_KEY}.scale: must be a finite number > 0, got {scale!r}")
    shift = opts.get("shift", 0.0)
    if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not math.isfinite(shift):
        out.append(f"{_KEY}.shift: must be a finite number, got {shift!r}")
    device = opts.get("device", "cpu")
    if not isinstance(device, str) or not device:
        out.append(f"{_KEY}.device: must be a torch device string such as 'cpu' or 'cuda:0', got {device!r}")
    return out


@register_reward("reward_model")
class RewardModelReward(Reward):
    r"""Scores responses with a local Hugging Face Bradley-Terry reward model, batched.

    Args:
        path: local directory of an ``AutoModelForSequenceClassification`` checkpoint (safetensors) and its
            tokenizer; ``num_labels`` must be 1.
        device: torch device of the model (``"cpu"``, ``"cuda:0"``...).
        batch_size: rows per forward pass.
        max_length: token budget per text (left-truncated).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        squash: ``sigmoid`` (score in (0, 1)) or ``none`` (raw affine logit).
        shift, scale: ``z = (logit - shift) / scale`` before the squash (e.g. the RM's mean and std on
            reference responses).
        template: ``auto`` (chat template when the prompt is a message list and the tokenizer has one),
            ``chat`` (always; a string prompt becomes one user message) or ``plain`` (``prompt\nresponse``).

    """

    #: scored in the calling process as one batch (see :class:`~nemo_prorl.rewards.pool.RewardPool`)
    in_process = True
    check_options = staticmethod(check_options)

    def __init__(self, path: str = "", device: str = "cpu", batch_size: int = 8, max_length: int = 4096,
                 dtype: str = "float32", squash: str = "sigmoid", shift: float = 0.0, scale: float = 1.0,
                 template: str = "auto") -> None:
        problems = check_options(dict(path=path, device=device, batch_size=batch_size,
                                      max_length=max_length, dtype=dtype, squash=squash, shift=shift,
                                      scale=scale, template=template))
        if problems:
            raise ValueError("; ".join(problems))
        self.path, self.device, self.batch_size, self.max_length = path, device, batch_size, max_length
        self.dtype, self.squash, self.shift, self.scale = dtype, squash, float(shift), float(scale)
        self.template = template
        self._model: Any = None
        self._tok: Any = None

    # ------------------------------------------------------------------------------------------ model

    def warmup(self) -> None:
        """Load the tokenizer and the model (once)."""
        if self._model is not None:
            return
        import torch
        import transformers
        from packaging.version import Version
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # ``dtype`` replaced ``torch_dtype`` in transformers 4.56
        dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            **{dtype_kw: getattr(torch, self.dtype)})
        if model.config.num_labels != 1:
            raise ValueError(f"{_KEY}.path: {self.path!r} has num_labels={model.config.num_labels}; a "
                             "Bradley-Terry reward model has exactly one output (num_labels=1)")
        if tok.pad_token_id is None:
            if tok.eos_token_id is None:
                raise ValueError(f"{_KEY}.path: the tokenizer of {self.path!r} has neither a pad nor an eos "
                                 "token; set tokenizer.pad_token and save it again")
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        tok.padding_side = "right"
        tok.truncation_side = "left"
        self._tok = tok
        self._model = model.to(self.device).eval()

    def text(self, response: str, row: dict) -> str:
        """The text the RM reads for ``response`` to ``row["prompt"]`` (see the module docstring)."""
        prompt = row.get("prompt")
        has_template = getattr(self._tok, "chat_template", None) is not None
        use_chat = self.template == "chat" or (self.template == "auto" and isinstance(prompt, list)
                                                and has_template)
        if use_chat and prompt is not None:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            msgs.append({"role": "assistant", "content": response})
            return self._tok.apply_chat_template(msgs, tokenize=False)
        if isinstance(prompt, list):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
        return f"{prompt}\n{response}" if prompt else response

    def logits(self, texts: list[str]) -> list[float]:
        """Raw RM logits of ``texts``, ``batch_size`` at a time."""
        import torch

        self.warmup()
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self._tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self._model(**enc).logits
            out.extend(float(x) for x in logits[:, 0].float().cpu())
        return out

    # ------------------------------------------------------------------------------------------ score

    def validate(self, row: dict) -> list[Problem]:
        """A reward-model row needs nothing but a response; a prompt, when given, is text or messages."""
        prompt = row.get("prompt")
        if prompt is not None and not isinstance(prompt, (str, list)):
            got = type(prompt).__name__
            return [Problem("prompt", f"expected a string or a list of messages, got {got}")]
        return []

    def score_batch(self, responses: list[str], rows: list[dict]) -> list[RewardResult]:
        """Score many responses in batched forward passes; never raises (a failure is status ``error``)."""
        if not responses:
            return []
        try:
            texts = [self.text(r, row) for r, row in zip(responses, rows)]
            raw = self.logits(texts)
        except Exception as exc:
            reason = f"reward model failed: {type(exc).__name__}: {exc}"[:500]
            return [RewardResult(0.0, "error", {"reason": reason}) for _ in responses]
        results = []
        for logit in raw:
            if not math.isfinite(logit):
                results.append(RewardResult(0.0, "error", {"reason": f"reward model logit {logit!r}"}))
                continue
            results.append(RewardResult(squash_score(logit, self.squash, self.shift, self.scale), "ok",
                                        {"logit": logit}))
        return results

    def score(self, response: str, row: dict) -> RewardResult:
        """Score one response (a batch of one)."""
        return self.score_batch([response], [row])[0]
