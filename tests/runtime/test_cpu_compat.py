"""The CPU stand-ins do what the CUDA originals do for Megatron-Core."""

import numpy as np
import pytest
import torch

from nemotron_train.runtime import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU runtime is inactive with CUDA")


@pytest.fixture(scope="module", autouse=True)
def cpu_runtime():
    assert cpu_compat.activate() is True


def test_cuda_named_allocations_and_moves_land_on_the_cpu():
    assert torch.empty(3, device="cuda").device.type == "cpu"
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2, device=torch.device("cuda", 0)).device.type == "cpu"
    tensor = torch.arange(3)
    assert tensor.cuda() is tensor
    assert tensor.to("cuda").device.type == "cpu"
    assert torch.empty(1).type() == "torch.cuda.FloatTensor"


def test_rng_tracker_forks_draw_from_megatrons_per_rank_seeds():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    seed = 77
    model_parallel_cuda_manual_seed(seed, tp_rank=1, ep_rank=0, etp_rank=0)
    before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        drawn = torch.rand(4, device="cuda")
    # Megatron-Core seeds the tensor-parallel stream with seed + 2718 + tp_rank.
    expected = torch.rand(4, generator=torch.Generator().manual_seed(seed + 2718 + 1))
    assert torch.equal(drawn, expected)
    assert torch.equal(torch.get_rng_state(), before)
    with get_cuda_rng_tracker().fork():
        # The stream continues where it stopped, as CUDA generator states do.
        continued = torch.rand(4, device="cuda")
    generator = torch.Generator().manual_seed(seed + 2718 + 1)
    torch.rand(4, generator=generator)
    assert torch.equal(continued, torch.rand(4, generator=generator))


def test_moe_split_sizes_reach_the_host_as_numpy():
    from megatron.core.transformer.moe import token_dispatcher

    sizes = token_dispatcher.maybe_move_tensor_to_cpu(torch.tensor([3, 1]), as_numpy=True)
    assert isinstance(sizes, np.ndarray) and sizes.tolist() == [3, 1]


def test_streams_and_events_are_usable():
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        stream.wait_stream(torch.cuda.current_stream())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    torch.cuda.synchronize()
    assert end.elapsed_time(start) <= 0.0 <= start.elapsed_time(end)


def _uneven_collectives(rank, port, results):
    import os

    import torch.distributed as dist
    from megatron.core.tensor_parallel import mappings

    cpu_compat.activate()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = dist.new_group([0, 1])
    sizes = [3, 1]
    mine = torch.full((sizes[rank], 2), float(rank + 1))
    gathered = mappings._gather_along_first_dim(mine, group, output_split_sizes=sizes)
    full = torch.arange(8, dtype=torch.float32).reshape(4, 2) * (rank + 1)
    scattered = mappings._reduce_scatter_along_first_dim(full, group, input_split_sizes=sizes)
    results[rank] = (gathered.tolist(), scattered.tolist())
    dist.destroy_process_group()


def test_uneven_gather_and_reduce_scatter_over_gloo():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_uneven_collectives, args=(port, results), nprocs=2, start_method="spawn")
    expected_gather = [[1.0, 1.0]] * 3 + [[2.0, 2.0]]
    total = (torch.arange(8, dtype=torch.float32).reshape(4, 2) * 3).tolist()  # ranks add x*1 + x*2
    assert results[0] == (expected_gather, total[:3])
    assert results[1] == (expected_gather, total[3:])
