"""The layout of a Megatron directory written by ``nemo-prorl convert --to-megatron`` (no torch import).

::

    MCORE_DIR/
      weights/                 megatron dist_checkpointing (loads at any TP/PP)
      hf_config/               config.json + tokenizer files of the source model
      nemo_prorl_convert.json  {"format": 1, "source": ..., "dtype": ...}

Shared by the converter's CLI and the library code that reads such directories (the evaluator), so that
no library module has to import a CLI module for three names.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_SUBDIR = "weights"
HF_CONFIG_SUBDIR = "hf_config"
META_FILE = "nemo_prorl_convert.json"


def is_megatron_dir(path: str | Path) -> bool:
    """Whether ``path`` holds the converter's metadata file (a directory written by ``--to-megatron``)."""
    return (Path(path) / META_FILE).is_file()
