"""The example sbatch scripts: syntax, directives, and a full run under a stand-in srun/scontrol."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_prorl.launch import DistEnv, port_from_job_id, resolve_dist_env

HERE = Path(__file__).parent
REPO = HERE.parents[2]
SLURM_DIR = REPO / "examples" / "slurm"
SCRIPTS = {"4node": SLURM_DIR / "prorl_1p5b_4node.sub", "1node": SLURM_DIR / "prorl_1p5b_1node.sub"}


def sbatch_directives(path):
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_parse_with_bash_n(name):
    proc = subprocess.run(["bash", "-n", str(SCRIPTS[name])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("name", "nodes"), [("4node", "4"), ("1node", "1")])
def test_directives(name, nodes):
    d = sbatch_directives(SCRIPTS[name])
    assert d["nodes"] == nodes
    assert d["ntasks-per-node"] == "8" and d["gpus-per-node"] == "8"
    assert d["signal"] == "B:USR1@120"
    assert "requeue" in d and d["open-mode"] == "append"
    text = SCRIPTS[name].read_text()
    assert 'nemo-prorl train --config-name "$CONFIG_NAME" run_dir="$RUN_DIR"' in text
    assert "CONFIG_NAME=${CONFIG_NAME:-prorl_1p5b}" in text
    assert "rank%t.log" in text


def test_four_node_layout_resolves():
    """The variables srun sets for the 4 x 8 layout give the expected DistEnv on every rank."""
    d = sbatch_directives(SCRIPTS["4node"])
    nodes, per_node = int(d["nodes"]), int(d["ntasks-per-node"])
    for rank in range(nodes * per_node):
        env = {
            "SLURM_JOB_ID": "4321987",
            "SLURM_JOB_NODELIST": "dgx-h100-[017-019,042]",
            "SLURM_NNODES": str(nodes),
            "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NODEID": str(rank // per_node),
        }
        assert resolve_dist_env(env) == DistEnv(
            rank=rank, world_size=32, local_rank=rank % 8, local_world_size=8, node_rank=rank // 8,
            num_nodes=4, master_addr="dgx-h100-017", master_port=15000 + 4321987 % 15000, source="slurm",
        )
    assert port_from_job_id("4321987") == 16987


@pytest.fixture
def fake_cluster(tmp_path):
    """PATH with stand-ins for srun, scontrol and nemo-prorl, and the batch environment Slurm would set."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "slurm.log"

    def tool(name, body):
        path = bindir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    tool("srun", f'exec "{sys.executable}" "{HERE / "fake_srun.py"}" "$@"\n')
    tool("scontrol", f'echo "scontrol $*" >> "{log}"\n')
    tool("nemo-prorl", f'exec "{sys.executable}" "{HERE / "fake_trainer.py"}" "$@"\n')
    python_dir = Path(sys.executable).parent
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                         "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")}
    env = dict(
        keep,
        PATH=f"{bindir}{os.pathsep}{python_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(REPO),
        FAKE_SLURM_LOG=str(log),
        RUN_DIR=str(tmp_path / "run"),
        SLURM_JOB_ID="4321987",
        SLURM_JOB_NAME="prorl-1p5b",
        SLURM_SUBMIT_DIR=str(tmp_path),
    )
    return env, log, tmp_path / "run"


def batch_env(env, script, nodelist):
    d = sbatch_directives(script)
    nodes, per_node = int(d["nodes"]), int(d["ntasks-per-node"])
    return dict(
        env,
        SLURM_NNODES=str(nodes),
        SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_JOB_NODELIST=nodelist,
        SLURM_NTASKS=str(nodes * per_node),
        SLURM_TASKS_PER_NODE=f"{per_node}(x{nodes})",
    )


@pytest.mark.slow  # 64 Python processes: ~10 s idle, 20+ s on a busy 2-core box
def test_four_node_script_end_to_end(fake_cluster):
    env, log, run_dir = fake_cluster
    env = batch_env(env, SCRIPTS["4node"], "dgx-h100-[017-019,042]")
    proc = subprocess.run(["bash", str(SCRIPTS["4node"]), "algorithm.kl_coef=0.0001"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = log.read_text().splitlines()
    assert len(steps) == 2
    assert all(s.startswith("srun --kill-on-bad-exit=1 --distribution=block") for s in steps)
    assert steps[1].endswith(
        f"python -m nemo_prorl.launch exec -- nemo-prorl train --config-name prorl_1p5b run_dir={run_dir} "
        "algorithm.kl_coef=0.0001"
    )
    logs = run_dir / "logs"
    for rank in range(32):
        checked = json.loads((logs / f"prorl-1p5b-4321987-r0-check-rank{rank}.log").read_text())
        assert checked["rank"] == rank and checked["node_rank"] == rank // 8
        assert (checked["master_addr"], checked["master_port"]) == ("dgx-h100-017", 16987)
        rec = json.loads((run_dir / f"train-rank{rank}.json").read_text())
        assert rec["args"] == ["train", "--config-name", "prorl_1p5b", f"run_dir={run_dir}",
                               "algorithm.kl_coef=0.0001"]
        assert rec["exported"] == {"RANK": str(rank), "WORLD_SIZE": "32", "LOCAL_RANK": str(rank % 8),
                                   "MASTER_ADDR": "dgx-h100-017", "MASTER_PORT": "16987"}
        assert rec["dist_env"]["source"] == "slurm"
        assert (logs / f"prorl-1p5b-4321987-r0-rank{rank}.log").exists()
    assert "scontrol" not in log.read_text()


def test_one_node_script_forwards_usr1_and_requeues(fake_cluster):
    env, log, run_dir = fake_cluster
    env = batch_env(env, SCRIPTS["1node"], "dgx-h100-001")
    env["FAKE_TRAIN_UNTIL_SIGNAL"] = "1"
    env["SLURM_RESTART_COUNT"] = "2"
    proc = subprocess.Popen(["bash", str(SCRIPTS["1node"])], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(run_dir.glob("train-rank*.json"))) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(run_dir.glob("train-rank*.json"))) == 8, "ranks did not start"
        proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@120` delivers to the batch shell
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "caught USR1" in out
    for rank in range(8):
        assert json.loads((run_dir / f"saved-rank{rank}.json").read_text()) == {"signal": "SIGUSR1"}
        assert (run_dir / "logs" / f"prorl-1p5b-4321987-r2-rank{rank}.log").exists()
    assert log.read_text().splitlines()[-1] == "scontrol requeue 4321987"
