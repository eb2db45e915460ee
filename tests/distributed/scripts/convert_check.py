"""torchrun worker for tests/distributed/test_convert.py (2 ranks, gloo).

modes:
  logits HF_DIR OUT_DIR  TP=1, TP=2 and PP=2 logits of the same HF weights -> OUT_DIR/*.safetensors;
                         TP=2 and PP=2 exports compared bit-exactly with the HF weights
  ckpt   HF_DIR OUT_DIR  save a Megatron checkpoint at TP=2, reload it at TP=1 (DP=2), compare logits
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

SEQ, BATCH = 12, 2


def _tokens(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
    return ids, torch.arange(SEQ).expand(BATCH, -1)


def _logits(model, cfg, pp: int) -> torch.Tensor | None:
    """Full-vocab logits ``[b, s, V]`` on the last pipeline stage, None on the others."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_prorl.policy.megatron import parallel

    ids, pos = _tokens(cfg.vocab_size)
    with torch.no_grad():
        if pp == 1:
            return model(ids, pos, attention_mask=None)[..., : cfg.vocab_size].clone()

        def step(data_iterator, model):
            out = model(ids, pos, attention_mask=None)
            return out, lambda output, non_loss_data=False: output

        data = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=SEQ, micro_batch_size=BATCH, forward_only=True, collect_non_loss_data=True,
        )
    if parallel.is_pipeline_last_stage():
        return data[0][..., : cfg.vocab_size].clone()
    return None


def _build(hf_dir, cfg, tp: int, pp: int):
    from megatron.core import parallel_state

    from nemo_prorl.policy.megatron import convert, parallel
    from nemo_prorl.policy.megatron.model import build_gpt_model

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel.init_parallel(tp=tp, pp=pp)
    model = build_gpt_model(cfg, parallel_output=False)
    if hf_dir is not None:
        convert.load_hf_weights(model, hf_dir, cfg)
    return model


def _save(out_dir: Path, name: str, tensor: torch.Tensor | None) -> None:
    from safetensors.torch import save_file

    from nemo_prorl.policy.megatron import parallel

    if tensor is not None and parallel.tp_rank() == 0 and parallel.dp_rank() == 0:
        save_file({"logits": tensor.contiguous()}, str(out_dir / f"{name}.safetensors"))


def mode_logits(hf_dir: Path, out_dir: Path) -> dict:
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron import convert

    cfg = AutoConfig.from_pretrained(hf_dir)
    original = convert.read_hf_state_dict(hf_dir)
    report = {}
    for tag, tp, pp in (("tp1", 1, 1), ("tp2", 2, 1), ("pp2", 1, 2)):
        model = _build(hf_dir, cfg, tp, pp)
        _save(out_dir, tag, _logits(model, cfg, pp))
        exported = convert.export_hf_state_dict(model, cfg)
        report[f"{tag}_export_equal"] = set(exported) == set(original) and all(
            torch.equal(exported[k], original[k]) for k in original
        )
    return report


def mode_ckpt(hf_dir: Path, out_dir: Path) -> dict:
    from transformers import AutoConfig

    from nemo_prorl.policy.megatron import convert

    cfg = AutoConfig.from_pretrained(hf_dir)
    model = _build(hf_dir, cfg, 2, 1)
    _save(out_dir, "written_tp2", _logits(model, cfg, 1))
    convert.save_megatron_weights(model, out_dir / "mcore")
    fresh = _build(None, cfg, 1, 1)  # random weights, then the checkpoint
    convert.load_megatron_weights(fresh, out_dir / "mcore")
    _save(out_dir, "loaded_tp1", _logits(fresh, cfg, 1))
    exported = convert.export_hf_state_dict(fresh, cfg)
    original = convert.read_hf_state_dict(hf_dir)
    return {"tp1_export_equal": all(torch.equal(exported[k], original[k]) for k in original)}


def main() -> int:
    mode, hf_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    from nemo_prorl.policy.megatron import parallel

    report = {"logits": mode_logits, "ckpt": mode_ckpt}[mode](hf_dir, out_dir)
    gathered: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, report)
    if dist.get_rank() == 0:
        (out_dir / "report.json").write_text(json.dumps(gathered))
    parallel.destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
