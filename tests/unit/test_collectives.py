"""nemo_prorl.collectives: backend-aware placement, in one process, and "no collective elsewhere".

The NCCL side is emulated by ``fake_nccl.FakeNccl`` (this directory): a world-of-one gloo group that
reports ``nccl`` from ``torch.distributed.get_backend``, raises NCCL's ``No backend type associated
with device type cpu`` (``c10d::ProcessGroup::getBackend`` in ``torch/csrc/distributed/c10d/
ProcessGroup.cpp``) when a CPU tensor reaches a collective, stages object-collective pickles where
torch's ``_get_object_coll_device`` would for NCCL, and stands in torch's lazy device (a non-CPU device
of CPU builds that holds data) for ``cuda:<current>``. Its module docstring lists every emulated
behaviour. The call sites at 2 ranks (DP, TP, PP, the whole trainer) are driven in
``tests/distributed/test_collectives_placement.py``.
"""

from __future__ import annotations

import ast
import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from fake_nccl import FakeNccl, lazy_device

from nemo_prorl import collectives

#: the helper's implementation lives in ``algorithms`` (``nemo_prorl.collectives`` is the same module)
HELPER = Path(collectives.__file__).resolve()
PACKAGE = HELPER.parents[1]

#: every torch.distributed communication call (public and the two private base ops megatron uses)
COLLECTIVES = frozenset({
    "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce", "all_to_all",
    "all_to_all_single", "barrier", "batch_isend_irecv", "broadcast", "broadcast_object_list", "gather",
    "gather_object", "irecv", "isend", "monitored_barrier", "recv", "recv_object_list", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "scatter", "scatter_object_list", "send",
    "send_object_list", "_all_gather_base", "_reduce_scatter_base"})
#: names that other objects use too (Tensor.gather, functools.reduce, Connection.send/recv, ...): only
#: flagged when called on torch.distributed itself
AMBIGUOUS = frozenset({"broadcast", "gather", "scatter", "reduce", "send", "recv", "barrier"})


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def find_direct_collectives(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: call`` for each torch.distributed collective called directly in ``source``.

    Recognised: ``import torch.distributed as X`` / ``from torch import distributed as X`` / ``X =
    torch.distributed`` / ``X = _dist()`` aliases, ``torch.distributed.<op>(...)``, ``_dist().<op>(...)``,
    ``from torch.distributed[.distributed_c10d] import <op>``, and any ``.<op>(...)`` of an unambiguous
    collective name on anything but the :mod:`nemo_prorl.collectives` module.
    """
    tree = ast.parse(source, filename)
    dist_names: set[str] = set()
    helper_names: set[str] = {"collectives"}
    hits: list[str] = []
    c10d_modules = ("torch.distributed", "torch.distributed.distributed_c10d")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch.distributed" and a.asname:
                    dist_names.add(a.asname)
                if a.name in ("nemo_prorl.collectives", "nemo_prorl.algorithms.collectives"):
                    helper_names.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            for a in node.names:
                if mod == "torch" and a.name == "distributed":
                    dist_names.add(a.asname or a.name)
                if mod in ("nemo_prorl", "nemo_prorl.algorithms") and a.name == "collectives":
                    helper_names.add(a.asname or a.name)
                if mod in c10d_modules and a.name in COLLECTIVES:
                    hits.append(f"{filename}:{node.lineno}: from {mod} import {a.name}")
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value
            if _dotted(value) == "torch.distributed" or (
                    isinstance(value, ast.Call) and _dotted(value.func).split(".")[-1] == "_dist"):
                dist_names.add(node.targets[0].id)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        op, recv = node.func.attr, node.func.value
        if op not in COLLECTIVES:
            continue
        on_dist = (_dotted(recv) in dist_names or _dotted(recv) == "torch.distributed"
                   or (isinstance(recv, ast.Call) and _dotted(recv.func).split(".")[-1] == "_dist"))
        on_helper = _dotted(recv) in helper_names
        if on_dist or (op not in AMBIGUOUS and not on_helper):
            hits.append(f"{filename}:{node.lineno}: {_dotted(recv) or '<expr>'}.{op}(...)")
    return hits


def test_no_collective_is_called_outside_the_helper():
    hits: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == HELPER:
            continue
        hits += find_direct_collectives(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    assert not hits, ("call these through nemo_prorl.collectives (it places tensors on the device the "
                      "group's backend needs):\n" + "\n".join(hits))


def test_the_scanner_finds_each_spelling_and_ignores_lookalikes():
    src = '''import functools
import torch.distributed as dist
from torch.distributed import all_reduce
from nemo_prorl import collectives

def _dist():
    return dist

def f(t, conn, group):
    d = _dist()
    d.broadcast_object_list([t], src=0)         # 11: alias from _dist()
    dist.gather(t, None, dst=0)                 # 12: ambiguous name on the module alias
    torch.distributed.barrier()                 # 13: full path
    _dist().all_gather_object([None], t)        # 14: on the call itself
    group.all_reduce(t)                         # 15: unambiguous name on anything
    t.gather(0, t)                              # tensor op: fine
    conn.send(t); conn.recv()                   # pipes: fine
    functools.reduce(max, [1, 2])               # fine
    collectives.all_reduce(t, group=group)      # the helper: fine
    collectives.barrier()                       # fine
'''
    hits = find_direct_collectives(src)
    assert [h.split(":")[1] for h in hits] == ["3", "11", "12", "13", "14", "15"], hits


# ------------------------------------------------------------------------------------ placement rules


@pytest.mark.parametrize("backend,expected", [("nccl", "lazy"), ("gloo", "cpu"), ("mpi", "cpu"),
                                              ("cpu:gloo,cuda:nccl", "cpu"), ("cuda:nccl", "lazy")])
def test_backend_device_by_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(collectives, "_cuda_device", lazy_device)  # stands in for cuda:<current>
    assert collectives.backend_device().type == expected


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "ucc")
    with pytest.raises(ValueError, match="'ucc' is not supported"):
        collectives.backend_device()


def test_without_a_process_group_every_collective_is_the_identity():
    assert not dist.is_initialized()
    t = torch.arange(3.0)
    assert collectives.all_reduce(t) is t and collectives.broadcast(t, 0) is t
    assert collectives.all_gather(t)[0] is t and collectives.all_gather_cat(t) is t
    assert collectives.broadcast_object({"a": 1}) == {"a": 1}
    assert collectives.all_gather_object(5) == [5] and collectives.gather_object(5) == [5]
    collectives.barrier()
    assert collectives.world_size() == 1


# ----------------------------------------------------------------------------- a world of one, "NCCL"


@pytest.fixture
def fake_nccl(tmp_path):
    """A gloo world of one process that behaves like NCCL (see fake_nccl.py); every call is checked."""
    assert not dist.is_initialized()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    fake = FakeNccl(check_all=True)
    with fake.installed():
        dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        try:
            yield fake
        finally:
            dist.destroy_process_group()


def _ops(fake: FakeNccl) -> list[tuple[str, list[str]]]:
    return [(c.op, c.devices) for c in fake.calls]


def test_the_emulation_refuses_a_cpu_tensor_like_nccl(fake_nccl):
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.ones(2))
    t = torch.ones(2).to(lazy_device())
    dist.all_reduce(t)  # on the "GPU": accepted, and the value comes back
    assert t.cpu().tolist() == [1.0, 1.0]


def test_tensor_collectives_run_on_the_gpu_and_keep_in_place_semantics(fake_nccl):
    t = torch.tensor([1.0, 2.0, 3.0])
    out = collectives.all_reduce(t, op=collectives.ReduceOp.MAX)
    assert out is t and t.device.type == "cpu" and t.tolist() == [1.0, 2.0, 3.0]
    strided = torch.arange(6.0).view(2, 3).t()  # not contiguous: staged as a contiguous copy
    collectives.broadcast(strided, src=0)
    assert strided.tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    parts = collectives.all_gather(torch.tensor([[7, 8]]))
    assert len(parts) == 1 and parts[0].device.type == "cpu" and parts[0].tolist() == [[7, 8]]
    cat = collectives.all_gather_cat(torch.tensor([[1.5], [2.5]]), 0)
    assert cat.device.type == "cpu" and cat.tolist() == [[1.5], [2.5]]
    collectives.barrier()
    assert _ops(fake_nccl) == [("all_reduce", ["lazy:0"]), ("broadcast", ["lazy:0"]),
                               ("all_gather", ["lazy:0", "lazy:0"]), ("all_gather", ["lazy:0", "lazy:0"]),
                               ("barrier", ["device_ids=[0]"])]


def test_a_gpu_tensor_on_a_gloo_group_goes_through_the_host(fake_nccl):
    gloo = dist.new_group(backend="gloo")  # recorded by the emulation as a gloo group
    t = torch.tensor([4.0, 5.0]).to(lazy_device())
    assert collectives.all_reduce(t, group=gloo) is t
    assert t.device.type == "lazy" and t.cpu().tolist() == [4.0, 5.0]
    assert _ops(fake_nccl)[-1] == ("all_reduce", ["cpu"])


def test_object_collectives_stage_their_pickles_on_the_gpu(fake_nccl):
    obj = {"step": 3, "groups": [[1, 2], [3]], "name": "x"}
    assert collectives.broadcast_object(obj, src=0) == obj
    assert collectives.all_gather_object(obj) == [obj]
    assert collectives.gather_object(obj, dst=0) == [obj]
    ops = _ops(fake_nccl)
    assert {op for op, _ in ops} == {"broadcast", "all_gather", "gather"}
    assert all(d == "lazy:0" for _, devs in ops for d in devs), ops  # sizes and bytes, all on the "GPU"


def test_the_policy_gathers_cpu_logprobs_over_the_dp_group_on_the_gpu(fake_nccl):
    """The DP>1 crash: MegatronPolicy.logprobs returns CPU tensors; the trainer's log-prob stage has the
    policy gather them (MegatronPolicy.gather_data_parallel, the DP gather behind PolicyInterface)."""
    from megatron.core import parallel_state as ps

    from nemo_prorl.policy.megatron import parallel
    from nemo_prorl.policy.megatron.engine import MegatronPolicy

    parallel.init_parallel(1, 1)  # megatron's groups on the fake-NCCL world (its *_gloo groups stay gloo)
    try:
        lp = torch.randn(4, 7)  # [B, L] float32 on the CPU, as the policy returns them
        # the pre-fix call: a CPU tensor straight into the DP group's all_gather is what NCCL refuses
        with pytest.raises(RuntimeError, match="device type cpu"):
            dist.all_gather([torch.empty_like(lp)], lp, group=ps.get_data_parallel_group())
        fake_nccl.calls.clear()
        policy = MegatronPolicy.__new__(MegatronPolicy)  # only its parallel layout is needed here
        policy._parallel = parallel
        assert (policy.dp_rank, policy.dp_size) == (0, 1)
        full = policy.gather_data_parallel(lp)
        assert full.device.type == "cpu" and torch.equal(full, lp)
        site = "nemo_prorl.policy.megatron.engine:MegatronPolicy.gather_data_parallel"
        assert fake_nccl.checked_sites() == {site: {"all_gather"}}
        assert _ops(fake_nccl) == [("all_gather", ["lazy:0", "lazy:0"])]
    finally:
        parallel.destroy_parallel()


def test_the_preemption_flag_is_reduced_on_the_gpu(fake_nccl):
    from nemo_prorl.launch import PreemptionHandler

    handler = PreemptionHandler(["SIGUSR1"])
    assert handler.requested_on_any_rank() is False
    handler.request("test")
    assert handler.requested_on_any_rank() is True
    assert _ops(fake_nccl) == [("all_reduce", ["lazy:0"])] * 2
    site = "nemo_prorl.launch.preemption:PreemptionHandler.requested_on_any_rank"
    assert fake_nccl.checked_sites() == {site: {"all_reduce"}}
