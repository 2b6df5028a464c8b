import pytest


@pytest.fixture(autouse=True)
def fresh_megatron_globals():
    """Tests that build models outside `train()` must not leak Megatron-Core's process-wide
    trackers (sized by the first model) into the next test."""
    yield
    from nemotron_train.training.loop import reset_megatron_globals

    reset_megatron_globals()


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny byte-level BPE tokenizer.json with </s> as its end-of-document token, trained
    in milliseconds."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 10, trainer=trainer
    )
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


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


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where CUDA is present and are deselected (not skipped) elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        config.hook.pytest_deselected(items=gpu_tests)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
