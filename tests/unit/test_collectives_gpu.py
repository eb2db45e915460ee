"""nemo_prorl.collectives on a real NCCL group (one GPU, world of one): what the CPU emulation assumes.

``tests/unit/fake_nccl.py`` emulates NCCL refusing host tensors (``c10d::ProcessGroup::getBackend`` in
``torch/csrc/distributed/c10d/ProcessGroup.cpp``: "No backend type associated with device type cpu")
and object collectives staging their pickles on the current GPU. Here both are checked against NCCL
itself, and every helper is run with host tensors on an NCCL group: the results come back on the host,
in place where the collective is in-place.
"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from nemo_prorl import collectives

pytestmark = pytest.mark.gpu


@pytest.fixture
def nccl_world(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    torch.cuda.set_device(0)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_nccl_refuses_host_tensors_as_emulated(nccl_world):
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.ones(2))
    assert collectives.backend_device() == torch.device("cuda", torch.cuda.current_device())


def test_every_helper_accepts_host_tensors_on_nccl(nccl_world):
    t = torch.tensor([1.0, 2.0])
    assert collectives.all_reduce(t, op=collectives.ReduceOp.MAX) is t and t.device.type == "cpu"
    assert t.tolist() == [1.0, 2.0]
    b = torch.arange(6.0).view(2, 3).t()
    collectives.broadcast(b, src=0)
    assert b.device.type == "cpu" and b.tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    parts = collectives.all_gather(torch.tensor([[3, 4]]))
    assert [p.device.type for p in parts] == ["cpu"] and parts[0].tolist() == [[3, 4]]
    assert collectives.all_gather_cat(torch.ones(2, 1)).device.type == "cpu"
    g = torch.ones(3, device="cuda")
    assert collectives.all_reduce(g) is g  # already on the GPU: used as is
    obj = {"a": [1, 2], "b": "x"}
    assert collectives.broadcast_object(obj) == obj
    assert collectives.all_gather_object(obj) == [obj]
    assert collectives.gather_object(obj) == [obj]
    collectives.barrier()
    torch.cuda.synchronize()
