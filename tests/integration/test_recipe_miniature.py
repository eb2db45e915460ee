"""The shipped recipes (``prorl_1p5b``, ``prorl_v2_1p5b``), miniaturised by overrides only, through every
phase to the end on CPU.

What is kept from the recipe: its phases (names, order, resets, per-phase reward shaping and data
mixtures), the ratios between its lengths (8k -> 16k becomes 16 -> 32 response tokens), its n (16 -> 4,
the n=32 runs -> 8), 4 optimizer updates per step, dynamic sampling with 1.5x oversampling, the
validation-plateau reset trigger, dual clip, KL in the loss, and checkpoints.
What is replaced: the 1.5B model (the shipped 2-layer demo base), vLLM (the transformers engine on CPU),
the data (the shipped per-domain fixtures plus the demo's chain_sum rows, which the demo base answers
~18% right, so groups have reward variance), the prompt templates (bare, as the demo base was trained),
and the sizes (4 prompts per step, 2 steps per phase). The v2 recipe keeps its algorithm as shipped
(REINFORCE++-baseline, ICE-POP against the CPU engine's log-probs, the cosine length penalty, whose cap
follows the scaled response limit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_prorl.cli import main as cli_main
from nemo_prorl.trainer.config import compose

FIXTURES = Path(__file__).resolve().parents[2] / "nemo_prorl" / "data" / "fixtures"
LENGTH_SCALE = 512       # 8192 -> 16, 16384 -> 32
N_SCALE = 4              # 16 -> 4, 32 -> 8
STEPS_PER_PHASE = 2


def _flow(value) -> str:
    """A Hydra override value for a plain list/dict/scalar (bare keys, double-quoted strings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(value)


def miniature_overrides(run_dir: Path, name: str = "prorl_1p5b") -> list[str]:
    """Overrides that shrink the shipped recipe ``name``, derived from it so that they follow its phases."""
    recipe = compose(name, [])
    r, tc = recipe["rollout"], recipe["trainer"]
    phases = []
    for ph in recipe["phases"]:
        mini = {**ph, "steps": STEPS_PER_PHASE}
        if "max_response_tokens" in ph:
            mini["max_response_tokens"] = ph["max_response_tokens"] // LENGTH_SCALE
        if "n" in ph:
            mini["n"] = ph["n"] // N_SCALE
        phases.append(mini)
    prompts = 4
    mini_batch = prompts * tc["mini_batch_prompts"] // tc["prompts_per_step"]  # 4 updates per step, as 256/64
    train = sorted(str(p) for p in (FIXTURES / "train").glob("*.jsonl")) + ["demo:train.jsonl"]
    templates = {d: "{prompt}\n" for d in ("math", "code", "reasoning_gym", "ifeval")}
    templates["mcq"] = "{prompt}{options}\n"
    return [
        "model=demo", f"run_dir={run_dir}",
        f"phases={_flow(phases)}", f"trainer.max_steps={STEPS_PER_PHASE * len(phases)}",
        # lengths and n scaled, ratios kept; the CPU engine
        "rollout.backend=hf", f"rollout.n={r['n'] // N_SCALE}", "rollout.max_prompt_tokens=96",
        f"rollout.max_response_tokens={r['max_response_tokens'] // LENGTH_SCALE}", "rollout.dtype=float32",
        f"trainer.prompts_per_step={prompts}", f"trainer.mini_batch_prompts={mini_batch}",
        "policy.params_dtype=fp32", "policy.micro_batch_size=4", "policy.lr=1.0e-4",
        # local data in place of the ProRL blend (same domains)
        f"data.train_files={_flow(train)}", "data.val_files=[demo:val.jsonl]",
        f"data.templates={_flow(templates)}",
        # a tiny policy cannot fill 4 groups every round: train on what 10 rounds found
        "algorithm.dynamic_sampling.on_exhausted=partial",
        "rewards.num_workers=2",
        # validation every 4 steps (the recipe: 50), plateau trigger kept with patience 2
        "trainer.val_interval=4", "trainer.val_n=2", "trainer.val_max_prompts=8", "reset.patience=2",
        "checkpoint.interval=4", "trainer.progress_bar=false", "logging.tensorboard=false",
        "logging.plots=false", "trainer.log_samples_interval=0",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prorl_1p5b", "prorl_v2_1p5b"])
def test_recipe_miniature_runs_every_phase_to_the_end(tmp_path, capsys, name):
    run = tmp_path / "run"
    argv = ["train", "--config-name", name, *miniature_overrides(run, name)]
    # the dry run plans the miniature and accepts it
    assert cli_main([*argv[:3], "--dry-run", *argv[3:]]) == 0
    assert not run.exists()
    assert cli_main(argv) == 0, capsys.readouterr().err[-3000:]

    full = compose(name, [])
    recipe = full["phases"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    events = [x for x in lines if "event" in x]
    steps = [x for x in lines if "event" not in x and "loss" in x]
    total = STEPS_PER_PHASE * len(recipe)
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    # every phase was entered, in order, at its first step, with its scaled settings
    entered = [e for e in events if e["event"] == "phase"]
    assert [e["name"] for e in entered] == [ph["name"] for ph in recipe]
    assert [e["step"] for e in entered] == [STEPS_PER_PHASE * i for i in range(len(recipe))]
    for e, ph in zip(entered, recipe):
        assert e["n"] == ph.get("n", 16) // N_SCALE
        assert e["max_response_tokens"] == ph.get("max_response_tokens", 8192) // LENGTH_SCALE
    # each phase that starts with a reset did reset (reference and optimizer), at its boundary
    phase_resets = [e for e in events if e["event"] == "reset" and "starts with a reset" in e["cause"]]
    assert [e["step"] for e in phase_resets] == [STEPS_PER_PHASE * i for i, ph in enumerate(recipe)
                                                 if ph.get("reset")]
    assert all(e["reset_optimizer"] == full["reset"]["reset_optimizer"] for e in phase_resets)
    # per step: the phase index, n and the response cap of the phase in force
    for s in steps:
        i = (s["step"] - 1) // STEPS_PER_PHASE
        assert s["phase"] == i
        assert s["num_seqs"] % (recipe[i].get("n", 16) // N_SCALE) == 0
        assert s["response_length/max"] <= recipe[i].get("max_response_tokens", 8192) // LENGTH_SCALE
        assert s["num_updates"] >= 1
    # a longer last phase (v1's 16k: 32 tokens) used its cap: the engine was sized for it
    if recipe[-1].get("max_response_tokens", 0) > full["rollout"]["max_response_tokens"]:
        assert max(s["response_length/max"] for s in steps if s["phase"] == len(recipe) - 1) > 16
    alg = full["algorithm"]
    if alg.get("loss", {}).get("tis", "none") != "none":  # the CPU engine's log-probs are usable
        assert all(s["is_oob_ratio"] == 0.0 for s in steps)
    if alg.get("reward_shaping", {}).get("length_penalty_coef", 0) > 0:  # restarts at each phase
        assert all(s["reward/length_penalty_coef"] == pytest.approx(0.1 if (s["step"] - 1) % 2 == 0 else 0.05)
                   for s in steps)
    # validation ran, checkpoints were written, and the run ended with a final checkpoint and HF export
    assert any("val/reward/mean" in x for x in lines)
    ckpts = [e for e in events if e["event"] == "checkpoint"]
    assert ckpts and ckpts[-1]["step"] == total
    assert (run / "hf" / "model.safetensors").is_file()
