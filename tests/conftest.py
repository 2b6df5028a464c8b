import importlib
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def fresh_megatron_globals():
    """Tests that build models outside `train()` must not leak Megatron-Core's process-wide
    trackers (sized by the first model) into the next test."""
    yield
    from nemotron_train.runtime.megatron_session import reset_megatron_globals

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


DESELECTED = pytest.StashKey[dict]()


def _deselect_reason(item) -> str | None:
    """What this machine lacks to run the test (a marker's name), or None where it can."""
    import torch

    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        return "gpu"
    for needed in item.iter_markers("imports"):
        try:
            importlib.import_module(needed.args[0])
        except Exception:  # TE and mamba_ssm raise more than ImportError without their libraries
            return "imports"
    reference = item.get_closest_marker("reference")
    if reference is not None and not Path(reference.args[0]).exists():
        return "reference"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` (CUDA), `imports(module)` (TransformerEngine, mamba_ssm) or
    `reference(path)` (a source tree fetched at run time) run where that is present and are
    deselected, not skipped, elsewhere."""
    reasons = {item: _deselect_reason(item) for item in items}
    deselected = [item for item in items if reasons[item]]
    counts = {}
    for item in deselected:
        counts[reasons[item]] = counts.get(reasons[item], 0) + 1
    config.stash[DESELECTED] = counts
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not reasons[item]]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many tests did not run here and why, instead of hiding them in the deselected count."""
    why = {"gpu": "marked gpu: no CUDA device here (benchmarks/gpu/run.sh runs them on a GPU)",
           "imports": "marked imports: an optional package does not import here",
           "reference": "marked reference: the fetched source tree is absent"}
    for reason, count in config.stash.get(DESELECTED, {}).items():
        terminalreporter.write_line(f"{count} tests {why[reason]}", yellow=True)
