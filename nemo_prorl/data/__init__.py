"""Training data: preflight validation, prompt templates, the domain mixture sampler, reasoning-gym rows.

Row format: :mod:`nemo_prorl.schema`. Typical use (the trainer does this before building a model)::

    from nemo_prorl.data import DataConfig, prepare_data, tokenize_prompt

    data = prepare_data(DataConfig(train_files=["train.jsonl"], max_prompt_tokens=1024), tokenizer)
    rows = data.sampler.next_batch(64)
    prompts = [tokenize_prompt(r, tokenizer, cfg.templates) for r in rows]
"""

from nemo_prorl.data.config import DataConfig, check_weights
from nemo_prorl.data.loading import PreparedData, load_hf_dataset, prepare_data
from nemo_prorl.data.mixture import MixtureSampler
from nemo_prorl.data.preflight import DataValidationError, Issue, PreflightReport, group_by_domain, preflight
from nemo_prorl.data.templates import DEFAULT_TEMPLATES, build_messages, format_prompt, tokenize_prompt

__all__ = [
    "DEFAULT_TEMPLATES",
    "DataConfig",
    "DataValidationError",
    "Issue",
    "MixtureSampler",
    "PreflightReport",
    "PreparedData",
    "build_messages",
    "check_weights",
    "format_prompt",
    "group_by_domain",
    "load_hf_dataset",
    "preflight",
    "prepare_data",
    "tokenize_prompt",
]
