"""Two "nodes" of one process each on loopback, wired only through simulated Slurm variables."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_prorl.launch import port_from_job_id

SCRIPT = Path(__file__).parent / "scripts" / "launch_two_nodes.py"
REPO = Path(__file__).resolve().parents[2]
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def free_port_in_slurm_range():
    """A currently free port p in [15000, 30000), so SLURM_JOB_ID = p - 15000 derives it."""
    for port in range(15000 + os.getpid() % 5000, 30000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 15000-30000")


def run_two_nodes(tmp_path, nodelist, extra):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _LAUNCHER_VARS}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    base["OMP_NUM_THREADS"] = "1"
    procs = []
    for node in range(2):
        env = dict(
            base,
            SLURM_JOB_NODELIST=nodelist,
            SLURM_NNODES="2",
            SLURM_NODEID=str(node),
            SLURM_PROCID=str(node),
            SLURM_LOCALID="0",
            SLURM_NTASKS="2",
            SLURM_TASKS_PER_NODE="1(x2)",
            **extra,
        )
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_nodes_port_from_job_id(tmp_path):
    port = free_port_in_slurm_range()
    job_id = str(port - 15000)
    assert port_from_job_id(job_id) == port
    results = run_two_nodes(tmp_path, "localhost,127.0.0.1", {"SLURM_JOB_ID": job_id})
    for rank, res in enumerate(results):
        env = res["dist_env"]
        assert env == {"rank": rank, "world_size": 2, "local_rank": 0, "local_world_size": 1,
                       "node_rank": rank, "num_nodes": 2, "master_addr": "localhost",
                       "master_port": port, "source": "slurm"}
        assert res["exported"] == {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                                   "MASTER_ADDR": "localhost", "MASTER_PORT": str(port)}
        assert res["sum"] == 3.0
        assert res["preempt_before"] is False and res["preempt_after"] is True
    assert results[1]["signal_name"] == "SIGUSR1"
    assert results[0]["signal_name"] == "peer"


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_nodes_master_addr_override(tmp_path):
    port = free_port_in_slurm_range()
    results = run_two_nodes(tmp_path, "node[001-002]",
                            {"SLURM_JOB_ID": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    for rank, res in enumerate(results):
        assert res["dist_env"]["node_rank"] == rank
        assert (res["dist_env"]["master_addr"], res["dist_env"]["master_port"]) == ("127.0.0.1", port)
        assert res["sum"] == 3.0
