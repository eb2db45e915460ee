"""``nemo-prorl train --dry-run``: plans the paper recipe without its weights, refuses impossible recipes."""

from __future__ import annotations

import json

from nemo_prorl.cli import main as cli_main
from nemo_prorl.trainer.preflight import KNOWN_ARCHS


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dry_run_plans_the_paper_recipe_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's relative run_dir and model path would land here
    rc = cli_main(["train", "--config-name", "prorl_1p5b", "--dry-run", "--world-size", "32",
                   "run_dir=runs/planned", "checkpoint.interval=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert _files(tmp_path) == []  # no run_dir, no checkpoints, no config.json, nothing
    # the architecture came from the built-in table, and the output says so
    assert "architecture from built-in table (DeepSeek-R1-Distill-Qwen-1.5B" in out
    assert "1.777 B parameters: 28 layers, hidden 1536, 12 heads / 2 KV heads" in out
    assert "engine context 17408 tokens = prompt 1024 + the largest phase's response 16384" in out
    # the schedule: every phase with its steps, length and n
    assert "schedule: 2200 steps" in out
    lines = out.splitlines()
    run8 = next(line for line in lines if line.split()[:2] == ["7", "run8_16k"])
    assert "2000-2199 (200)" in run8 and "16384" in run8 and "stop_properly_penalty_coef=0" in run8
    run6 = next(line for line in lines if line.split()[:2] == ["5", "run6_n32"])
    assert run6.split()[4:6] == ["8192", "32"]
    # the memory plan: static state and each distinct phase shape, with and without recompute
    assert ("static: weights 3.55 + gradients 7.11 + optimizer 0.67 (fp32 m, v + master, sharded over DP "
            "32) + reference 3.55 = 14.88") in out
    plan = {line.split()[0]: line.split() for line in lines if line.startswith("  run")}
    assert set(plan) == {"run1", "run6_n32", "run8_16k"}
    # 18,432-token micro-batches, packed (policy.sequence_packing auto: TE on the GPU): one row of 18,432
    # tokens, as 2 padded rows of 9,216 would be (28 x 91,136 x 18,432 B = 47.03 GB without recompute)
    assert "one packed row of max(budget, seq) tokens" in out
    assert plan["run1"][1:4] == ["9216", "1", "47.03"]       # seq, micro-batch rows, no recompute
    assert plan["run1"][4:6] == ["10.04", "3.27"]            # selective (mlp), full
    assert plan["run8_16k"][1:3] == ["17408", "1"]
    assert "configured: policy.recompute = selective" in out
    # train peaks none/selective/full: the shipped selective recompute fits 80 GB with room
    assert plan["run1"][7] == "62.54/25.55/18.77"
    assert "28 KiB/token" in out


def test_dry_run_refuses_a_phase_past_the_model_positions(tmp_path, capsys):
    model = tmp_path / "short-model"
    model.mkdir()
    arch = {**KNOWN_ARCHS["deepseek-r1-distill-qwen-1.5b"], "max_position_embeddings": 16384}
    (model / "config.json").write_text(json.dumps(arch))
    rc = cli_main(["train", "--config-name", "prorl_1p5b", "--dry-run", f"model={model}",
                   f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert ("phases[7].max_response_tokens: 16384 + rollout.max_prompt_tokens 1024 = 17408 tokens (phase "
            "'run8_16k') exceed the model's max_position_embeddings 16384") in err
    assert not (tmp_path / "run").exists()


def test_dry_run_refuses_a_batch_that_does_not_split_over_the_ranks(tmp_path, capsys):
    rc = cli_main(["train", "--config-name", "prorl_1p5b", "--dry-run", "--world-size", "48",
                   f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "rollout.n: phase 'run1'" in err and "does not split over 48" in err


def test_dry_run_of_the_embedded_default_reads_the_shipped_model(tmp_path, capsys):
    rc = cli_main(["train", "--dry-run", f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "assets/demo/config.json" in out and "rollout hf" in out and "vLLM" not in out
    assert not (tmp_path / "run").exists()


def test_dry_run_plans_the_v2_recipe(tmp_path, monkeypatch, capsys):
    """``prorl_v2_1p5b`` composes with the v2 algorithm and passes every check at 32 ranks."""
    from nemo_prorl.trainer.config import build_config, compose

    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", "--config-name", "prorl_v2_1p5b", "--dry-run", "--world-size", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert _files(tmp_path) == []
    assert "schedule: 3000 steps" in out
    assert "checks: passed for 6 phase(s)" in out
    p6 = next(line for line in out.splitlines() if line.split()[:2] == ["5", "v2_p6"])
    assert "2500-2999 (500)" in p6 and "yes" in p6 and "length penalty cosine 0.1->0 at 8192" in p6
    alg = build_config(compose("prorl_v2_1p5b", []), require_model=False).algorithm
    assert alg.advantage.estimator == "reinforce_pp_baseline"
    assert (alg.loss.clip_high, alg.loss.dual_clip, alg.loss.tis, alg.loss.tis_min, alg.loss.tis_max) == \
        (0.27, None, "icepop", 0.5, 5.0)
    assert (alg.kl.coef, alg.kl.estimator) == (1e-4, "k2")
