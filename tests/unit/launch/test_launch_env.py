import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_prorl.launch import (
    DEFAULT_MASTER_PORT,
    DistEnv,
    DistEnvError,
    port_from_job_id,
    resolve_dist_env,
    setup_distributed_env,
)


def encode_tasks(per_node):
    """Run-length encode like Slurm: [2, 2, 2, 1] -> '2(x3),1'."""
    parts = []
    for count, group in itertools.groupby(per_node):
        n = len(list(group))
        parts.append(f"{count}(x{n})" if n > 1 else str(count))
    return ",".join(parts)


def srun_env(rank, per_node, nodelist, job_id="123456", **extra):
    """The variables srun gives task `rank` under the default block distribution."""
    node = 0
    first = 0
    while rank >= first + per_node[node]:
        first += per_node[node]
        node += 1
    env = {
        "SLURM_JOB_ID": job_id,
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": str(sum(per_node)),
        "SLURM_LOCALID": str(rank - first),
        "SLURM_NODEID": str(node),
        "SLURM_NNODES": str(len(per_node)),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_TASKS_PER_NODE": encode_tasks(per_node),
    }
    env.update(extra)
    return env


def torchrun_env(rank, nnodes, nproc, addr="10.0.0.1", port="29400", group_rank=True, **extra):
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(nnodes * nproc),
        "LOCAL_RANK": str(rank % nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
    }
    if group_rank:
        env["GROUP_RANK"] = str(rank // nproc)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------- Slurm
def test_slurm_uneven_tasks_per_node():
    per_node = [2, 2, 2, 1]
    envs = [resolve_dist_env(srun_env(r, per_node, "node[001-003,007]")) for r in range(7)]
    assert [e.node_rank for e in envs] == [0, 0, 1, 1, 2, 2, 3]
    assert [e.local_rank for e in envs] == [0, 1, 0, 1, 0, 1, 0]
    assert [e.local_world_size for e in envs] == [2, 2, 2, 2, 2, 2, 1]
    last = envs[-1]
    assert last == DistEnv(6, 7, 0, 1, 3, 4, "node001", 15000 + 123456 % 15000, "slurm")
    assert last.master_port == 18456


def test_slurm_port_derivation():
    assert port_from_job_id("0") == 15000
    assert port_from_job_id("14999") == 29999
    assert port_from_job_id("15000") == 15000
    assert port_from_job_id("987654321") == 15000 + 9321 == 24321
    with pytest.raises(DistEnvError, match="SLURM_JOB_ID='12a'"):
        port_from_job_id("12a")


def test_slurm_overrides_and_defaults():
    base = srun_env(0, [1, 1], "gpu-a1,gpu-b7")
    assert resolve_dist_env(base).master_addr == "gpu-a1"
    with_env = dict(base, MASTER_ADDR="10.1.2.3", MASTER_PORT="41000")
    env = resolve_dist_env(with_env)
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 41000)
    assert resolve_dist_env(with_env, master_addr="127.0.0.1").master_addr == "127.0.0.1"
    no_job = {k: v for k, v in base.items() if k != "SLURM_JOB_ID"}
    assert resolve_dist_env(no_job).master_port == DEFAULT_MASTER_PORT


def test_slurm_alternative_variables():
    env = srun_env(3, [2, 2], "n[1-2]")
    del env["SLURM_TASKS_PER_NODE"], env["SLURM_NNODES"]
    env["SLURM_NTASKS_PER_NODE"] = "2"
    got = resolve_dist_env(env)
    assert (got.node_rank, got.local_rank, got.num_nodes, got.local_world_size) == (1, 1, 2, 2)
    # the step's node list and task counts win over the allocation's (srun on a subset of nodes)
    env = srun_env(
        1, [1, 1], "big[01-04]", SLURM_STEP_NODELIST="big[03-04]", SLURM_STEP_TASKS_PER_NODE="1(x2)"
    )
    env["SLURM_NNODES"] = "2"
    got = resolve_dist_env(env)
    assert got.master_addr == "big03" and got.num_nodes == 2
    # SLURM_NPROCS is the older spelling of SLURM_NTASKS
    env = srun_env(0, [1], "solo")
    env["SLURM_NPROCS"] = env.pop("SLURM_NTASKS")
    assert resolve_dist_env(env).world_size == 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"SLURM_PROCID": "8"}, "SLURM_PROCID=8 is out of range for SLURM_NTASKS=8"),
        ({"SLURM_PROCID": "x1"}, "SLURM_PROCID='x1' is not an integer"),
        ({"SLURM_PROCID": "-1"}, "SLURM_PROCID='-1' must be >= 0"),
        ({"SLURM_NTASKS": "0"}, "SLURM_NTASKS='0' must be >= 1"),
        ({"SLURM_NTASKS": "9"}, "adds up to 8 tasks but SLURM_NTASKS=9"),
        ({"SLURM_NODEID": "2"}, "SLURM_NODEID=2 is out of range for 2 node"),
        ({"SLURM_NNODES": "3"}, re.escape("SLURM_NNODES=3 but SLURM_JOB_NODELIST='n[1-2]' names 2 host(s)")),
        ({"SLURM_TASKS_PER_NODE": "4(x3)"}, "lists 3 node"),
        ({"SLURM_TASKS_PER_NODE": "4(x)"}, "SLURM_TASKS_PER_NODE='4\\(x\\)': bad item"),
        ({"SLURM_JOB_NODELIST": "n[1-2"}, "SLURM_JOB_NODELIST: unclosed"),
        ({"SLURM_LOCALID": "4"}, "SLURM_LOCALID=4 is out of range"),
        ({"SLURM_LOCALID": "0"}, "do not match a block task distribution"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' is not a TCP port"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
        ({"SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID='abc' is not an integer"),
    ],
)
def test_slurm_inconsistent(change, fragment):
    env = srun_env(5, [4, 4], "n[1-2]")
    env.update(change)
    with pytest.raises(DistEnvError, match=fragment):
        resolve_dist_env(env)


@pytest.mark.parametrize("missing", ["SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID"])
def test_slurm_partial_set(missing):
    env = srun_env(1, [2], "n1")
    del env[missing]
    with pytest.raises(DistEnvError, match=f"incomplete set of variables; missing {missing}"):
        resolve_dist_env(env)


def test_slurm_missing_nodelist_and_tasks():
    env = srun_env(1, [2], "n1")
    del env["SLURM_JOB_NODELIST"]
    with pytest.raises(DistEnvError, match="SLURM_PROCID='1' is set but none of SLURM_STEP_NODELIST"):
        resolve_dist_env(env)
    env = srun_env(1, [2], "n1")
    del env["SLURM_TASKS_PER_NODE"]
    with pytest.raises(DistEnvError, match="cannot tell how many tasks"):
        resolve_dist_env(env)


@settings(max_examples=60, deadline=None)
@given(per_node=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6), data=st.data())
def test_slurm_block_layouts(per_node, data):
    rank = data.draw(st.integers(min_value=0, max_value=sum(per_node) - 1))
    nodelist = f"c[{10:03d}-{9 + len(per_node):03d}]"
    got = resolve_dist_env(srun_env(rank, per_node, nodelist, job_id="77"))
    assert got.world_size == sum(per_node)
    assert got.num_nodes == len(per_node)
    assert sum(per_node[: got.node_rank]) + got.local_rank == rank
    assert got.local_world_size == per_node[got.node_rank]
    assert (got.master_addr, got.master_port) == ("c010", 15077)


# ------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_nodes():
    envs = [resolve_dist_env(torchrun_env(r, 2, 4)) for r in range(8)]
    assert [e.node_rank for e in envs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert envs[5] == DistEnv(5, 8, 1, 4, 1, 2, "10.0.0.1", 29400, "torchrun")
    # without GROUP_RANK the node index follows from the homogeneous layout
    assert resolve_dist_env(torchrun_env(6, 2, 4, group_rank=False)).node_rank == 1


def test_torchrun_world_of_one_needs_no_rendezvous():
    env = resolve_dist_env({"RANK": "0", "WORLD_SIZE": "1"})
    assert env == DistEnv(0, 1, 0, 1, 0, 1, "127.0.0.1", DEFAULT_MASTER_PORT, "torchrun")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"LOCAL_RANK": "0"}, "LOCAL_RANK='0' is set but RANK is not"),
        ({"RANK": "0"}, "missing WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "missing RANK"),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
            "missing LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT",
        ),
        (torchrun_env(0, 1, 2, WORLD_SIZE="two"), "WORLD_SIZE='two' is not an integer"),
        (torchrun_env(0, 1, 2, RANK="2"), "RANK=2 is out of range for WORLD_SIZE=2"),
        (torchrun_env(0, 1, 2, LOCAL_RANK="2"), "LOCAL_RANK=2 is out of range for LOCAL_WORLD_SIZE=2"),
        (torchrun_env(0, 1, 2, GROUP_RANK="1"), "GROUP_RANK=1 is out of range"),
        (torchrun_env(0, 1, 4, WORLD_SIZE="6"), "WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4"),
        (torchrun_env(0, 1, 2, MASTER_PORT="0"), "MASTER_PORT='0' must be >= 1"),
        (torchrun_env(0, 1, 2, MASTER_ADDR=""), "empty rendezvous host"),
    ],
)
def test_torchrun_inconsistent(env, fragment):
    with pytest.raises(DistEnvError, match=fragment):
        resolve_dist_env(env)


# ------------------------------------------------------------------------------------------ both / none
def test_torchrun_agent_inside_slurm_allocation():
    # sbatch --nodes=2 --ntasks-per-node=1; each task runs `torchrun --nnodes 2 --nproc-per-node 8`
    slurm = srun_env(1, [1, 1], "n[1-2]")
    env = dict(slurm, **torchrun_env(13, 2, 8), TORCHELASTIC_RUN_ID="123456")
    got = resolve_dist_env(env)
    assert got.source == "torchrun" and got.world_size == 16 and got.node_rank == 1
    # torchrun launched for 2 nodes in a 4-node allocation: refused, with both sides named
    slurm = srun_env(1, [1, 1, 1, 1], "n[1-4]")
    env = dict(slurm, **torchrun_env(13, 2, 8), TORCHELASTIC_RUN_ID="123456")
    with pytest.raises(DistEnvError, match="disagree on the world size: WORLD_SIZE=16, LOCAL_WORLD_SIZE=8, "
                       "SLURM_NTASKS=4"):
        resolve_dist_env(env)


def test_exported_variables_must_match_slurm():
    slurm = srun_env(3, [2, 2], "n[1-2]")
    same = dict(slurm, RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="n1", MASTER_PORT="18456")
    assert resolve_dist_env(same) == resolve_dist_env(slurm)
    assert resolve_dist_env(same).source == "slurm"
    with pytest.raises(DistEnvError, match="RANK=2, WORLD_SIZE=4 but SLURM_PROCID=3, SLURM_NTASKS=4"):
        resolve_dist_env(dict(same, RANK="2"))
    with pytest.raises(DistEnvError, match="WORLD_SIZE=8 but SLURM_PROCID=3, SLURM_NTASKS=4"):
        resolve_dist_env(dict(same, WORLD_SIZE="8", LOCAL_WORLD_SIZE="4"))
    with pytest.raises(DistEnvError, match="LOCAL_RANK=0 but SLURM_LOCALID=1"):
        resolve_dist_env(dict(same, LOCAL_RANK="0"))


def test_single_process():
    assert resolve_dist_env({}) == DistEnv(0, 1, 0, 1, 0, 1, "127.0.0.1", DEFAULT_MASTER_PORT, "single")
    # an salloc shell carries SLURM_JOB_ID but no task identity: still one process
    env = resolve_dist_env({"SLURM_JOB_ID": "5", "MASTER_PORT": "12345"})
    assert (env.source, env.master_port) == ("single", 12345)


def test_setup_distributed_env_exports_and_round_trips():
    environ = srun_env(5, [4, 4], "n[1-2]", PATH="/usr/bin")
    got = setup_distributed_env(environ, master_addr="127.0.0.1")
    assert {k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                     "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "18456",
    }
    assert environ["PATH"] == "/usr/bin"
    # idempotent: resolving the exported environment again gives the same layout
    assert setup_distributed_env(environ) == got
    assert got.is_distributed and not got.is_main
    assert got.as_dict()["source"] == "slurm"


def test_setup_distributed_env_exports_nothing_on_error():
    environ = srun_env(5, [4, 4], "n[1-2]", SLURM_NTASKS="9")
    before = dict(environ)
    with pytest.raises(DistEnvError):
        setup_distributed_env(environ)
    assert environ == before
