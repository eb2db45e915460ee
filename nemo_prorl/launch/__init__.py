"""Launch support: process layout from torchrun or Slurm, rendezvous, and preemption signals.

Pure Python (standard library; torch only inside :meth:`PreemptionHandler.requested_on_any_rank`), so the
launcher can be checked before anything heavy is imported.
"""

from nemo_prorl.launch.env import (
    DEFAULT_MASTER_PORT,
    DistEnv,
    DistEnvError,
    port_from_job_id,
    resolve_dist_env,
    setup_distributed_env,
)
from nemo_prorl.launch.hostlist import HostlistError, parse_hostlist, parse_tasks_per_node
from nemo_prorl.launch.preemption import (
    DEFAULT_PREEMPTION_SIGNALS,
    LeadTime,
    PreemptionHandler,
    RequeueError,
    request_slurm_requeue,
    signal_lead_time,
    slurm_requeue_enabled,
)

__all__ = [
    "DEFAULT_MASTER_PORT",
    "DEFAULT_PREEMPTION_SIGNALS",
    "DistEnv",
    "DistEnvError",
    "HostlistError",
    "LeadTime",
    "PreemptionHandler",
    "RequeueError",
    "parse_hostlist",
    "parse_tasks_per_node",
    "port_from_job_id",
    "request_slurm_requeue",
    "resolve_dist_env",
    "setup_distributed_env",
    "signal_lead_time",
    "slurm_requeue_enabled",
]
