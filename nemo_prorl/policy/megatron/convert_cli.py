"""``nemo-prorl convert``: HF <-> Megatron checkpoints.

::

    nemo-prorl convert --from-hf HF_DIR --to-megatron MCORE_DIR [--tp N --pp N] [--dtype bf16]
    nemo-prorl convert --from-megatron MCORE_DIR --to-hf HF_DIR [--hf-config-from HF_DIR]

Runs single-process, or under ``torchrun --nproc_per_node TP*PP`` with ``--tp/--pp`` (each rank
then handles its own shard). A Megatron directory written here is self-contained::

    MCORE_DIR/
      weights/               megatron dist_checkpointing (loads at any TP/PP)
      hf_config/             config.json + tokenizer files of the source model
      nemo_prorl_convert.json  {"format": 1, "source": ..., "dtype": ...}

so the reverse direction needs no ``--hf-config-from`` (which, if given, overrides ``hf_config/``).
Exit codes: 0 ok, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "WEIGHTS_SUBDIR", "HF_CONFIG_SUBDIR", "META_FILE"]

from nemo_prorl.policy.megatron.layout import HF_CONFIG_SUBDIR, META_FILE, WEIGHTS_SUBDIR

_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nemo-prorl convert``."""
    p = argparse.ArgumentParser(prog="nemo-prorl convert", description="Convert HF <-> Megatron checkpoints.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", type=Path, metavar="DIR", help="HF checkpoint dir (safetensors)")
    src.add_argument("--from-megatron", type=Path, metavar="DIR", help="dir written by --to-megatron")
    p.add_argument("--to-megatron", type=Path, metavar="DIR", help="output Megatron dir (with --from-hf)")
    p.add_argument("--to-hf", type=Path, metavar="DIR", help="output HF dir (with --from-megatron)")
    p.add_argument("--hf-config-from", type=Path, metavar="DIR",
                   help="HF config + tokenizer dir for --from-megatron (default: DIR/hf_config)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (world = tp * pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES), help="parameter dtype (default fp32)")
    return p


def _fail(msg: str) -> int:
    print(f"nemo-prorl convert: {msg}", file=sys.stderr)
    return 2


def _check_args(args: argparse.Namespace) -> str | None:
    if args.from_hf is not None:
        if args.to_megatron is None or args.to_hf is not None:
            return "--from-hf needs --to-megatron (and not --to-hf)"
        if not (args.from_hf / "config.json").is_file():
            return f"{args.from_hf}: no config.json"
        out = args.to_megatron
    else:
        if args.to_hf is None or args.to_megatron is not None:
            return "--from-megatron needs --to-hf (and not --to-megatron)"
        cfg_dir = args.hf_config_from or args.from_megatron / HF_CONFIG_SUBDIR
        if not (cfg_dir / "config.json").is_file():
            return f"{cfg_dir}: no config.json (pass --hf-config-from DIR)"
        if not (args.from_megatron / WEIGHTS_SUBDIR / "metadata.json").is_file():
            return f"{args.from_megatron / WEIGHTS_SUBDIR}: not a megatron dist checkpoint (no metadata.json)"
        out = args.to_hf
    if out.exists() and any(out.iterdir()):
        return f"{out}: output directory exists and is not empty"
    if args.tp < 1 or args.pp < 1:
        return f"--tp and --pp must be >= 1 (got {args.tp}, {args.pp})"
    return None


def main(argv: list[str]) -> int:
    """Run the converter; returns the process exit code."""
    args = build_parser().parse_args(argv)
    error = _check_args(args)
    if error:
        return _fail(error)

    import torch
    import torch.distributed as dist
    from transformers import AutoConfig

    from nemo_prorl import collectives
    from nemo_prorl.policy.megatron import convert, parallel
    from nemo_prorl.policy.megatron.model import UnsupportedModelError, build_gpt_model

    dtype = getattr(torch, _DTYPES[args.dtype])
    cfg_dir = args.from_hf if args.from_hf is not None else (
        args.hf_config_from or args.from_megatron / HF_CONFIG_SUBDIR
    )
    try:
        hf_config = AutoConfig.from_pretrained(str(cfg_dir), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        return _fail(f"{cfg_dir / 'config.json'}: cannot read HF config ({err})")

    parallel.init_parallel(args.tp, args.pp)
    try:
        rank0 = dist.get_rank() == 0
        model = build_gpt_model(hf_config, params_dtype=dtype)
        if args.from_hf is not None:
            convert.load_hf_weights(model, args.from_hf, hf_config)
            out: Path = args.to_megatron
            convert.save_megatron_weights(model, out / WEIGHTS_SUBDIR)
            if rank0:
                (out / HF_CONFIG_SUBDIR).mkdir(parents=True, exist_ok=True)
                hf_config.save_pretrained(str(out / HF_CONFIG_SUBDIR))
                for fname in convert.TOKENIZER_FILES:
                    if (args.from_hf / fname).is_file():
                        shutil.copyfile(args.from_hf / fname, out / HF_CONFIG_SUBDIR / fname)
                meta = {"format": 1, "source": "hf", "model_type": hf_config.model_type,
                        "dtype": _DTYPES[args.dtype], "written_at_tp": args.tp, "written_at_pp": args.pp}
                (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        else:
            convert.load_megatron_weights(model, args.from_megatron / WEIGHTS_SUBDIR)
            state = convert.export_hf_state_dict(model, hf_config)
            out = args.to_hf
            if rank0:
                convert.save_hf_checkpoint(state, hf_config, out, tokenizer_dir=cfg_dir)
        collectives.barrier()
        if rank0:
            print(f"nemo-prorl convert: wrote {out}")
        return 0
    except (convert.ConversionError, UnsupportedModelError) as err:
        return _fail(str(err))
    finally:
        parallel.destroy_parallel()
