import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run(args, extra):
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in launcher}
    env.update(extra, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nemo_prorl.launch", *args], env=env, capture_output=True,
                          text=True, timeout=60)


SLURM = {"SLURM_JOB_ID": "20001", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_TASKS_PER_NODE": "2(x2)"}


def test_check_prints_layout():
    proc = run(["check"], SLURM)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2, "node_rank": 1, "num_nodes": 2,
        "master_addr": "gpu07", "master_port": 20001, "source": "slurm",
    }


def test_check_reports_inconsistency():
    proc = run(["check"], dict(SLURM, SLURM_NTASKS="5"))
    assert proc.returncode == 2
    assert "SLURM_TASKS_PER_NODE='2(x2)' adds up to 4 tasks but SLURM_NTASKS=5" in proc.stderr


def test_exec_exports_and_replaces_process():
    code = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'], " \
           "os.environ['MASTER_PORT'], os.environ['LOCAL_RANK'])"
    proc = run(["--master-addr", "127.0.0.1", "exec", "--", sys.executable, "-c", code], SLURM)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "4", "127.0.0.1", "20001", "1"]


def test_exec_errors():
    proc = run(["exec", "--", "no-such-command-xyz"], {})
    assert proc.returncode == 127 and "cannot run 'no-such-command-xyz'" in proc.stderr
    proc = run(["exec"], {})
    assert proc.returncode == 2 and "exec needs a command" in proc.stderr
