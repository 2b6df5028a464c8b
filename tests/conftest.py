import pytest


@pytest.fixture(autouse=True)
def fresh_megatron_globals():
    """Tests that build models outside `train()` must not leak Megatron-Core's process-wide
    trackers (sized by the first model) into the next test."""
    yield
    from nemotron_train.training.loop import reset_megatron_globals

    reset_megatron_globals()


@pytest.fixture
def single_process():
    """A world-size-1 Megatron-Core runtime (gloo), torn down after the test."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemotron_train.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        initialize_distributed,
    )
    from nemotron_train.runtime.setup import prepare_runtime

    prepare_runtime()
    context = initialize_distributed(ParallelConfig())
    model_parallel_cuda_manual_seed(1234)
    yield context
    destroy_distributed()


GPU_DESELECTED = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where CUDA is present and are deselected (not skipped) elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    config.stash[GPU_DESELECTED] = len(gpu_tests)
    if gpu_tests:
        config.hook.pytest_deselected(items=gpu_tests)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many `gpu` tests did not run here, instead of hiding them in the deselected count."""
    count = config.stash.get(GPU_DESELECTED, 0)
    if count:
        terminalreporter.write_line(f"{count} tests marked gpu were deselected: no CUDA device here "
                                    "(benchmarks/gpu/run.sh runs them on a GPU)", yellow=True)
