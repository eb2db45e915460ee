"""``reset.reference=best`` in the trainer on CPU with the demo model (ProRL v2's reset to the best policy).

One short run validates after every step, checkpoints every step with ``checkpoint.keep_last=1``, and
resets after step 5 with ``reset.policy_to_best=true``. The tests check that the reset loads exactly the
weights of the best validated checkpoint into the reference and the policy, that this checkpoint
survives the rotation and is named in the run state, and that a run resumed after the best checkpoint was
taken makes the same reset and ends bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_prorl.trainer.callbacks import Callback
from nemo_prorl.trainer.config import load_config
from nemo_prorl.trainer.trainer import ProRLTrainer

#: as tests/integration/test_trainer.py: 4 prompts x 4 rollouts per step (one update), no final eval
TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=4", "rollout.n=4",
        "final_eval.enabled=false", "trainer.progress_bar=false", "logging.plots=false",
        "reset.on_val_plateau=false"]
METRIC = "val/reward/mean"
BEST = ["trainer.val_interval=1", "trainer.val_max_prompts=8", "trainer.val_n=2",
        "trainer.val_at_start=false", "reset.reference=best", "reset.policy_to_best=true",
        "reset.at_steps=[5]", "checkpoint.interval=1", "checkpoint.keep_last=1"]


class _Snapshots(Callback):
    """Copies the policy at each new best validation and the policy and reference after each reset."""

    def __init__(self, trainer: ProRLTrainer) -> None:
        self.trainer = trainer
        self.best: dict[int, dict[str, torch.Tensor]] = {}
        self.after_reset: dict[int, tuple[dict, dict]] = {}

    @staticmethod
    def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_validation(self, step, metrics):
        best = self.trainer.resets.best_checkpoint
        if best is not None and best["step"] == step:  # marked before the callbacks run
            self.best[step] = self._copy(self.trainer.policy.model)

    def on_reset(self, step, cause):
        pol = self.trainer.policy
        self.after_reset[step] = (self._copy(pol.model), self._copy(pol.ref_model))


def _read(run_dir: Path) -> tuple[list[dict], list[dict]]:
    steps, events = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        obj = json.loads(line)
        (events if "event" in obj else steps).append(obj)
    return steps, events


def _untimed(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith(("time/", "tokens_per_s"))}


def _fit(run_dir: Path, max_steps: int) -> _Snapshots:
    cfg = load_config(None, [*TINY, *BEST, f"run_dir={run_dir}", f"trainer.max_steps={max_steps}"])
    trainer = ProRLTrainer(cfg)
    snaps = _Snapshots(trainer)
    trainer.callbacks.append(snaps)
    try:
        trainer.setup()
        trainer.fit()
    finally:
        trainer.close()
    return snaps


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    run = tmp_path_factory.mktemp("best_full")
    return run, _fit(run, 6)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reset_loads_the_best_checkpoint_which_survives_rotation(full):
    run, snaps = full
    steps, events = _read(run)
    vals = {r["step"]: r[METRIC] for r in steps}
    # the best checkpoint before the reset after step 5: the first step with the highest value
    best_step = max(range(1, 5), key=lambda s: (vals[s], -s))
    assert vals[5] < vals[best_step], f"the demo run's validation no longer exercises the load: {vals}"
    marked = [e["step"] for e in events if e["event"] == "checkpoint" and e["reason"] == "best"]
    assert marked == [s for s in range(1, 7) if vals[s] > max([vals[t] for t in range(1, s)], default=-1)]
    reset = [e for e in events if e["event"] == "reset"]
    assert [(e["step"], e["reference"]) for e in reset] == [(5, f"best checkpoint (step {best_step})")]
    # bit for bit: the policy and the reference after the reset are the policy validated at best_step
    policy_after, ref_after = snaps.after_reset[5]
    assert _same(policy_after, snaps.best[best_step]) and _same(ref_after, snaps.best[best_step])
    # reference = policy after the reset: the next step's (single-update) KL starts at zero
    assert steps[5]["kl"] == pytest.approx(0.0, abs=1e-7)
    # keep_last=1 keeps the newest checkpoint and the best one; the run state names the best
    best_final = max(range(1, 7), key=lambda s: (vals[s], -s))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == sorted({f"step_{best_final:08d}", "step_00000006"})
    extra = json.loads((run / "checkpoints" / "step_00000006" / "extra_state.json").read_text())
    assert extra["resets"]["best_checkpoint"] == {"step": best_final, "value": vals[best_final]}


def test_resume_after_the_best_checkpoint_is_exact(full, tmp_path):
    run_full, _ = full
    split = tmp_path / "split"
    _fit(split, 3)  # stops after the best checkpoint was taken, before the reset that loads it
    snaps = _fit(split, 6)
    a, events_a = _read(run_full)
    b, events_b = _read(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert _untimed(ra) == _untimed(rb), f"step {ra['step']} differs after resume"
    resets = [[(e["step"], e["reference"]) for e in ev if e["event"] == "reset"]
              for ev in (events_a, events_b)]
    assert resets[0] == resets[1]
    assert 5 in snaps.after_reset  # the resumed process made the reset itself
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == \
        sorted(p.name for p in (run_full / "checkpoints").iterdir())
    from safetensors.torch import load_file

    wa = load_file(str(run_full / "hf" / "model.safetensors"))
    wb = load_file(str(split / "hf" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
