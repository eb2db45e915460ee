"""Where this process sits in the job: rank, world, node and rendezvous, from torchrun or Slurm.

Two launchers are supported and a plain ``python`` run is a world of one:

* **torchrun** exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker it spawns.
* **Slurm** (``srun``, one task per GPU) exports ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
  ``SLURM_NODEID``, ``SLURM_NNODES``, the tasks-per-node list and the compressed node list. The rendezvous
  host is the first node of the list and the port is derived from ``SLURM_JOB_ID`` unless ``MASTER_PORT``
  is set, so all tasks of a job agree without talking to each other first.

:func:`resolve_dist_env` reads either set, checks it for consistency and returns a :class:`DistEnv`;
every inconsistency raises :class:`DistEnvError` naming the variables and their values.
:func:`setup_distributed_env` then exports the torchrun-style variables so
``torch.distributed.init_process_group(init_method="env://")`` works the same under both launchers.

This module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Literal

from nemo_prorl.launch.hostlist import HostlistError, parse_hostlist, parse_tasks_per_node

__all__ = [
    "DEFAULT_MASTER_PORT",
    "SLURM_PORT_BASE",
    "SLURM_PORT_SPAN",
    "DistEnv",
    "DistEnvError",
    "port_from_job_id",
    "resolve_dist_env",
    "setup_distributed_env",
]

Source = Literal["torchrun", "slurm", "single"]

#: torch's own default rendezvous port; used for a single process and for Slurm without a job id.
DEFAULT_MASTER_PORT = 29500
#: Ports derived from ``SLURM_JOB_ID`` lie in ``[SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN)``,
#: below Linux's default ephemeral range (32768-60999) so an outgoing connection never holds the port.
SLURM_PORT_BASE = 15000
SLURM_PORT_SPAN = 15000

_TORCHRUN_CORE = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Set only by torchrun's elastic agent, never by setup_distributed_env(): their presence means the ranks
# were spawned by torchrun (possibly one agent per Slurm task), not by srun directly.
_TORCHRUN_AGENT_MARKERS = ("TORCHELASTIC_RUN_ID", "GROUP_RANK")
_SLURM_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
_SLURM_TASKS_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")


class DistEnvError(ValueError):
    """The launcher's environment variables are missing, malformed or contradict each other."""


@dataclass(frozen=True)
class DistEnv:
    """Where one process sits in a (possibly multi-node) job.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes in the job.
        local_rank: rank among the processes on this node; selects the GPU (``cuda:{local_rank}``).
        local_world_size: number of processes on this node.
        node_rank: index of this node, ``0 <= node_rank < num_nodes``.
        num_nodes: number of nodes in the job.
        master_addr: host of the rank-0 rendezvous store.
        master_port: TCP port of the rendezvous store.
        source: which launcher the values came from: ``"torchrun"``, ``"slurm"`` or ``"single"``.

    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    source: Source

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the process that writes shared files and requeues the job)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def torch_env(self) -> dict[str, str]:
        """The variables ``init_process_group(init_method="env://")`` and vLLM's external launcher read."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def as_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for logging into a run directory)."""
        return asdict(self)


def port_from_job_id(job_id: str, var: str = "SLURM_JOB_ID") -> int:
    """Derive the rendezvous port every task of a Slurm job computes identically.

    ``port = SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN``: two jobs sharing a node collide only when their
    ids are a multiple of 15,000 apart. Job arrays give each array task its own ``SLURM_JOB_ID``.

    Args:
        job_id: the value of ``SLURM_JOB_ID``, e.g. ``"123456"``.
        var: variable name for the error message.

    Returns:
        A port in ``[15000, 30000)``; e.g. job ``123456`` -> ``15000 + 123456 % 15000 = 18456``.

    Raises:
        DistEnvError: if ``job_id`` is not a non-negative integer.

    """
    value = _as_int(var, job_id, minimum=0)
    return SLURM_PORT_BASE + value % SLURM_PORT_SPAN


def _as_int(name: str, value: str, *, minimum: int) -> int:
    """Parse one variable as an integer ``>= minimum`` or raise an error naming it."""
    text = value.strip()
    try:
        number = int(text, 10)
    except ValueError:
        raise DistEnvError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise DistEnvError(f"{name}={value!r} must be >= {minimum}")
    return number


def _port(name: str, value: str) -> int:
    port = _as_int(name, value, minimum=1)
    if port > 65535:
        raise DistEnvError(f"{name}={value!r} is not a TCP port (1-65535)")
    return port


def _require(environ: Mapping[str, str], names: tuple[str, ...], context: str) -> None:
    """Raise one error listing every variable of ``names`` that is absent."""
    missing = [n for n in names if n not in environ]
    if missing:
        present = {n: environ[n] for n in names if n in environ}
        raise DistEnvError(
            f"{context}: incomplete set of variables; missing {', '.join(missing)}"
            + (f" (present: {_fmt(present)})" if present else "")
        )


def _fmt(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _check_ranges(env: DistEnv, names: Mapping[str, str]) -> None:
    """Check the invariants of a resolved layout; ``names`` maps field -> variable it came from."""

    def label(field: str) -> str:
        var = names.get(field)
        return f"{var}={getattr(env, field)}" if var else f"{field}={getattr(env, field)}"

    if env.world_size < 1:
        raise DistEnvError(f"{label('world_size')} must be >= 1")
    if not 0 <= env.rank < env.world_size:
        raise DistEnvError(f"{label('rank')} is out of range for {label('world_size')}")
    if env.local_world_size < 1 or env.local_world_size > env.world_size:
        raise DistEnvError(f"{label('local_world_size')} must be in 1..{label('world_size')}")
    if not 0 <= env.local_rank < env.local_world_size:
        raise DistEnvError(f"{label('local_rank')} is out of range for {label('local_world_size')}")
    if env.num_nodes < 1 or env.num_nodes > env.world_size:
        raise DistEnvError(f"{label('num_nodes')} must be in 1..{label('world_size')}")
    if not 0 <= env.node_rank < env.num_nodes:
        raise DistEnvError(f"{label('node_rank')} is out of range for {label('num_nodes')}")
    if not env.master_addr:
        raise DistEnvError(f"{label('master_addr')}: empty rendezvous host")


def _resolve_torchrun(environ: Mapping[str, str], master_addr: str | None) -> DistEnv:
    """Read the torchrun variables (also what a hand-written launcher or our own export sets)."""
    if "LOCAL_RANK" in environ and "RANK" not in environ:
        raise DistEnvError(
            f"LOCAL_RANK={environ['LOCAL_RANK']!r} is set but RANK is not: set RANK and WORLD_SIZE too, "
            "or launch with torchrun / srun"
        )
    _require(environ, ("RANK", "WORLD_SIZE"), "torchrun environment")
    rank = _as_int("RANK", environ["RANK"], minimum=0)
    world = _as_int("WORLD_SIZE", environ["WORLD_SIZE"], minimum=1)
    if world == 1:
        local_rank = _as_int("LOCAL_RANK", environ.get("LOCAL_RANK", "0"), minimum=0)
        local_world = _as_int("LOCAL_WORLD_SIZE", environ.get("LOCAL_WORLD_SIZE", "1"), minimum=1)
        addr = master_addr or environ.get("MASTER_ADDR", "127.0.0.1")
        port = _port("MASTER_PORT", environ.get("MASTER_PORT", str(DEFAULT_MASTER_PORT)))
    else:
        _require(
            environ,
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
            f"torchrun environment with WORLD_SIZE={world}",
        )
        local_rank = _as_int("LOCAL_RANK", environ["LOCAL_RANK"], minimum=0)
        local_world = _as_int("LOCAL_WORLD_SIZE", environ["LOCAL_WORLD_SIZE"], minimum=1)
        addr = master_addr or environ["MASTER_ADDR"].strip()
        port = _port("MASTER_PORT", environ["MASTER_PORT"])
    if world % local_world != 0:
        raise DistEnvError(
            f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local_world}: torchrun needs "
            "the same number of processes on every node"
        )
    num_nodes = world // local_world
    if "GROUP_RANK" in environ:
        node_rank = _as_int("GROUP_RANK", environ["GROUP_RANK"], minimum=0)
    else:
        node_rank = rank // local_world
    env = DistEnv(rank, world, local_rank, local_world, node_rank, num_nodes, addr, port, "torchrun")
    _check_ranges(
        env,
        {
            "rank": "RANK",
            "world_size": "WORLD_SIZE",
            "local_rank": "LOCAL_RANK",
            "local_world_size": "LOCAL_WORLD_SIZE",
            "node_rank": "GROUP_RANK",
            "master_addr": "MASTER_ADDR",
        },
    )
    return env


def _first_present(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if name in environ and environ[name].strip():
            return name, environ[name]
    return None


def _resolve_slurm(environ: Mapping[str, str], master_addr: str | None) -> DistEnv:
    """Read the variables ``srun`` sets for each task (one task per GPU)."""
    only_nprocs = "SLURM_NPROCS" in environ and "SLURM_NTASKS" not in environ
    ntasks_var = "SLURM_NPROCS" if only_nprocs else "SLURM_NTASKS"
    _require(environ, ("SLURM_PROCID", ntasks_var, "SLURM_LOCALID", "SLURM_NODEID"), "Slurm environment")
    nodelist = _first_present(environ, _SLURM_NODELIST_VARS)
    if nodelist is None:
        raise DistEnvError(
            f"Slurm environment: SLURM_PROCID={environ['SLURM_PROCID']!r} is set but none of "
            f"{', '.join(_SLURM_NODELIST_VARS)} is: cannot find the rendezvous host"
        )
    rank = _as_int("SLURM_PROCID", environ["SLURM_PROCID"], minimum=0)
    world = _as_int(ntasks_var, environ[ntasks_var], minimum=1)
    local_rank = _as_int("SLURM_LOCALID", environ["SLURM_LOCALID"], minimum=0)
    node_rank = _as_int("SLURM_NODEID", environ["SLURM_NODEID"], minimum=0)

    nodelist_var, nodelist_value = nodelist
    try:
        hosts = parse_hostlist(nodelist_value, nodelist_var)
    except HostlistError as err:
        raise DistEnvError(str(err)) from None

    nnodes_var = "SLURM_NNODES" if "SLURM_NNODES" in environ else "SLURM_JOB_NUM_NODES"
    if nnodes_var in environ:
        num_nodes = _as_int(nnodes_var, environ[nnodes_var], minimum=1)
        if num_nodes != len(hosts):
            raise DistEnvError(
                f"{nnodes_var}={num_nodes} but {nodelist_var}={nodelist_value!r} names {len(hosts)} "
                f"host(s)"
            )
    else:
        num_nodes = len(hosts)

    tasks = _first_present(environ, _SLURM_TASKS_VARS)
    if tasks is not None:
        tasks_var, tasks_value = tasks
        try:
            per_node = parse_tasks_per_node(tasks_value, tasks_var)
        except HostlistError as err:
            raise DistEnvError(str(err)) from None
        if len(per_node) != num_nodes:
            raise DistEnvError(
                f"{tasks_var}={tasks_value!r} lists {len(per_node)} node(s) but the job has {num_nodes} "
                f"({nodelist_var}={nodelist_value!r})"
            )
    elif "SLURM_NTASKS_PER_NODE" in environ:
        tasks_var = "SLURM_NTASKS_PER_NODE"
        tasks_value = environ[tasks_var]
        per_node = [_as_int(tasks_var, tasks_value, minimum=1)] * num_nodes
    else:
        raise DistEnvError(
            "Slurm environment: none of SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE, "
            "SLURM_NTASKS_PER_NODE is set: cannot tell how many tasks run on this node"
        )
    if sum(per_node) != world:
        raise DistEnvError(
            f"{tasks_var}={tasks_value!r} adds up to {sum(per_node)} tasks but {ntasks_var}={world}"
        )
    if not 0 <= node_rank < num_nodes:
        raise DistEnvError(f"SLURM_NODEID={node_rank} is out of range for {num_nodes} node(s)")
    local_world = per_node[node_rank]

    if master_addr is None:
        master_addr = environ.get("MASTER_ADDR", "").strip() or hosts[0]
    if environ.get("MASTER_PORT", "").strip():
        port = _port("MASTER_PORT", environ["MASTER_PORT"])
    elif environ.get("SLURM_JOB_ID", "").strip():
        port = port_from_job_id(environ["SLURM_JOB_ID"])
    else:
        port = DEFAULT_MASTER_PORT

    env = DistEnv(rank, world, local_rank, local_world, node_rank, num_nodes, master_addr, port, "slurm")
    _check_ranges(
        env,
        {
            "rank": "SLURM_PROCID",
            "world_size": ntasks_var,
            "local_rank": "SLURM_LOCALID",
            "local_world_size": tasks_var,
            "node_rank": "SLURM_NODEID",
            "num_nodes": nnodes_var,
            "master_addr": "MASTER_ADDR",
        },
    )
    # Tasks are numbered node by node under Slurm's default block distribution; a rank outside this
    # node's block means a cyclic distribution or a corrupted environment. Both break the assumption
    # that local_rank selects the GPU of a contiguous node-local group, so refuse them.
    first = sum(per_node[:node_rank])
    if not first <= rank < first + local_world or rank - first != local_rank:
        raise DistEnvError(
            f"SLURM_PROCID={rank}, SLURM_LOCALID={local_rank}, SLURM_NODEID={node_rank} do not match a block "
            f"task distribution ({tasks_var}={tasks_value!r} puts ranks {first}..{first + local_world - 1} "
            "on this node); launch with `srun --distribution=block`"
        )
    return env


def resolve_dist_env(environ: Mapping[str, str] | None = None, *, master_addr: str | None = None) -> DistEnv:
    """Work out rank, world size and rendezvous from torchrun's or Slurm's variables.

    Precedence: torchrun variables (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) win when present; Slurm's are
    then used only to cross-check. Both present happens in two legitimate ways, and any other
    combination is refused:

    * torchrun started inside a Slurm allocation (its agent sets ``TORCHELASTIC_RUN_ID``/``GROUP_RANK``):
      ``WORLD_SIZE`` must equal ``SLURM_NTASKS`` (one task per GPU declared to Slurm) or
      ``SLURM_NTASKS * LOCAL_WORLD_SIZE`` (one torchrun agent per Slurm task);
    * the variables were exported from Slurm's by :func:`setup_distributed_env` or by hand: ``RANK`` and
      ``WORLD_SIZE`` must equal ``SLURM_PROCID`` and ``SLURM_NTASKS``, and the result is the Slurm layout.

    Args:
        environ: the environment to read; ``os.environ`` when None.
        master_addr: rendezvous host override (e.g. ``"127.0.0.1"`` for nodes simulated on one machine);
            otherwise ``MASTER_ADDR`` if set, else the first host of the Slurm node list.

    Returns:
        The resolved :class:`DistEnv`.

    Raises:
        DistEnvError: naming the variables and values when they are missing, not integers, out of range,
            or when torchrun's and Slurm's values disagree.

    """
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    has_torchrun = any(n in env_map for n in _TORCHRUN_CORE)
    has_slurm = "SLURM_PROCID" in env_map

    if has_torchrun and has_slurm:
        tr = _resolve_torchrun(env_map, master_addr)
        ntasks_var = "SLURM_NTASKS" if "SLURM_NTASKS" in env_map else "SLURM_NPROCS"
        ntasks = _as_int(ntasks_var, env_map.get(ntasks_var, "1"), minimum=1)
        if any(m in env_map for m in _TORCHRUN_AGENT_MARKERS):
            allowed = {ntasks, ntasks * tr.local_world_size}
            if tr.world_size not in allowed:
                raise DistEnvError(
                    f"torchrun and Slurm disagree on the world size: WORLD_SIZE={tr.world_size}, "
                    f"LOCAL_WORLD_SIZE={tr.local_world_size}, {ntasks_var}={ntasks} (expected WORLD_SIZE to "
                    f"be {ntasks_var} or {ntasks_var} x LOCAL_WORLD_SIZE); check --nnodes/--nproc-per-node "
                    "against the sbatch allocation"
                )
            return tr
        slurm_rank = _as_int("SLURM_PROCID", env_map["SLURM_PROCID"], minimum=0)
        if tr.world_size != ntasks or tr.rank != slurm_rank:
            raise DistEnvError(
                f"torchrun and Slurm variables disagree: RANK={tr.rank}, WORLD_SIZE={tr.world_size} but "
                f"SLURM_PROCID={slurm_rank}, {ntasks_var}={ntasks}; unset RANK/WORLD_SIZE/LOCAL_RANK to let "
                "Slurm decide, or launch through torchrun"
            )
        sl = _resolve_slurm(env_map, master_addr)
        if tr.local_rank != sl.local_rank:
            raise DistEnvError(
                f"torchrun and Slurm variables disagree: LOCAL_RANK={tr.local_rank} but "
                f"SLURM_LOCALID={sl.local_rank}"
            )
        return sl
    if has_torchrun:
        return _resolve_torchrun(env_map, master_addr)
    if has_slurm:
        return _resolve_slurm(env_map, master_addr)
    addr = master_addr or env_map.get("MASTER_ADDR", "").strip() or "127.0.0.1"
    port = _port("MASTER_PORT", env_map.get("MASTER_PORT", str(DEFAULT_MASTER_PORT)))
    return DistEnv(0, 1, 0, 1, 0, 1, addr, port, "single")


def setup_distributed_env(
    environ: MutableMapping[str, str] | None = None, *, master_addr: str | None = None
) -> DistEnv:
    """Resolve the layout and export it as torchrun-style variables.

    After this call ``torch.distributed.init_process_group(backend, init_method="env://")`` and vLLM's
    ``distributed_executor_backend="external_launcher"`` work the same under torchrun, srun and a plain
    single process. Exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``.

    Args:
        environ: the environment to read and update; ``os.environ`` when None.
        master_addr: rendezvous host override (see :func:`resolve_dist_env`).

    Returns:
        The resolved :class:`DistEnv`.

    Raises:
        DistEnvError: see :func:`resolve_dist_env`; nothing is exported then.

    """
    target: MutableMapping[str, str] = os.environ if environ is None else environ
    env = resolve_dist_env(target, master_addr=master_addr)
    target.update(env.torch_env())
    return env
