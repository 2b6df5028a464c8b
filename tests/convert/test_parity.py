"""Our Megatron-Core model against transformers' own NemotronHForCausalLM, both directions.

Import: a random transformers checkpoint, imported, gives our model the same logits as
transformers'. Tolerance: max |diff| / max |logit| <= 1e-5 in float32. The two
implementations compute the same function in different summation orders (one fused QKV
GEMM against three, Megatron-Core's expert dispatch against transformers' expert loop, our
chunked SSD scan against transformers' own, with the same chunk size but different
einsum contractions), which leaves differences of a few float32 ulps per operation: 7e-7 to
8e-7 of the largest logit here (measured); 1e-5 is an order above that and far below what any
layout mistake gives (a transposed or misordered block changes logits by their own size).
The sequence length 37 is not a multiple of the Mamba chunk size 16.
"""

import pytest
import torch

from nemotron_train.convert.checkpoint_source import resolve_source
from nemotron_train.convert.compare import compare_logits
from nemotron_train.convert.import_hf import import_hf
from nemotron_train.convert.logits import model_logits
from tests.convert.hf_models import PARITY_CONFIGS, TIME_STEP_MIN, hf_logits_and_dt_min, save_hf_checkpoint

SEQ_LENGTH = 37
TOLERANCE = 1e-5


def token_rows(vocab_size: int, batch: int = 2, seed: int = 3) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, SEQ_LENGTH), generator=generator).tolist()


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_imported_checkpoint_gives_transformers_logits(tmp_path, name):
    hf_model = save_hf_checkpoint(tmp_path / "hf", PARITY_CONFIGS[name])
    rows = token_rows(hf_model.config.vocab_size)
    theirs, dt_min = hf_logits_and_dt_min(hf_model, rows)
    assert dt_min > 5 * TIME_STEP_MIN  # transformers' dt clamp (>= 5.15) played no part
    import_hf(tmp_path / "hf", tmp_path / "ours", log=lambda line: None)
    ours = model_logits(resolve_source(tmp_path / "ours"), rows)
    comparison = compare_logits(ours, theirs, TOLERANCE)
    assert theirs.std() > 0.3  # logits of a healthy scale, not near-zero
    assert comparison.passed, comparison.summary()
    assert comparison.top1_agreement == 1.0
