"""Run the real ProRLTrainer on every torchrun rank and write what each rank saw.

    torchrun --nproc_per_node 2 trainer_ranks.py OUT_DIR [--fake-nccl] key=value ...

Each rank writes ``OUT_DIR/rank<R>.json``: the metrics its own ``_train_on`` returned per step (time
keys dropped), a SHA-256 digest of the full exported HF weights after training, and with
``--fake-nccl`` the collectives the package issued on NCCL groups (``tests/unit/fake_nccl.py``: gloo
underneath, CPU tensors refused as NCCL refuses them, the lazy device standing in for the GPU).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "unit"))  # fake_nccl


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    import contextlib

    out = Path(argv[0])
    fake = "--fake-nccl" in argv
    overrides = [a for a in argv[1:] if a != "--fake-nccl"]

    from fake_nccl import FakeNccl

    from nemo_prorl.trainer.config import load_config
    from nemo_prorl.trainer.trainer import ProRLTrainer, _rank

    emulation = FakeNccl()
    ctx = emulation.installed() if fake else contextlib.nullcontext()
    with ctx:
        trainer = ProRLTrainer(load_config(None, overrides))
        seen: list[dict] = []
        train_on = trainer._train_on

        def recording(groups, **kwargs):  # the real method; its per-rank result is kept for the comparison
            m = train_on(groups, **kwargs)
            seen.append({k: v for k, v in m.items() if not k.startswith("time/")})
            return m

        trainer._train_on = recording
        try:
            trainer.setup()
            summary = trainer.fit()
            digest = _digest(trainer.policy.export_hf_state_dict())  # collective: full weights everywhere
        finally:
            trainer.close()
        rank = _rank()
    report = {"rank": rank, "steps": summary["steps"], "train": seen, "digest": digest,
              "dp": [trainer.dp_rank, trainer.dp_size]}
    if fake:
        report["sites"] = {k: sorted(v) for k, v in emulation.checked_sites().items()}
        unchecked = {c.caller.split(":")[0] for c in emulation.calls if not c.checked}
        report["unchecked_callers"] = sorted(unchecked)  # megatron-core / torch internals
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
