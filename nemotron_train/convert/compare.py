"""Our model against transformers' NemotronHForCausalLM on the same tokens.

What `compare-hf` reports: the largest absolute logit difference, the largest difference
relative to the largest HF logit magnitude (scale-free, so one tolerance fits any model),
and how often both models' top-1 tokens agree. It passes when the relative difference is
within the tolerance: by default 1e-4 in float32, where only the two implementations'
different summation orders separate them (fused QKV vs three projections, Megatron-Core's
and transformers' chunked scans), and 5e-2 in bfloat16.
"""

from dataclasses import asdict, dataclass

import torch

from nemotron_train.errors import ConfigError

DEFAULT_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Comparison:
    """Logit agreement of two models on one batch."""

    max_abs_diff: float
    max_rel_diff: float
    """max |ours - hf| / max |hf|."""
    top1_agreement: float
    tolerance: float
    tokens: int

    @property
    def passed(self) -> bool:
        return self.max_rel_diff <= self.tolerance

    def summary(self) -> str:
        verdict = "within" if self.passed else "OUTSIDE"
        return (f"max |diff| {self.max_abs_diff:.3e}, max |diff| / max |hf logit| {self.max_rel_diff:.3e} "
                f"({verdict} tolerance {self.tolerance:.0e}), top-1 agreement "
                f"{self.top1_agreement:.2%} over {self.tokens} tokens")

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare_logits(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> Comparison:
    """Compare two [batch, seq, vocab] logit tensors."""
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ: ours {list(ours.shape)}, transformers {list(theirs.shape)}")
    ours, theirs = ours.double(), theirs.double()
    difference = (ours - theirs).abs().max().item()
    return Comparison(max_abs_diff=difference,
                      max_rel_diff=difference / max(theirs.abs().max().item(), 1e-30),
                      top1_agreement=(ours.argmax(-1) == theirs.argmax(-1)).double().mean().item(),
                      tolerance=tolerance, tokens=ours.shape[0] * ours.shape[1])


def hf_logits(hf_dir, token_rows: list[list[int]], dtype: str = "fp32") -> torch.Tensor:
    """transformers' logits for `token_rows` from the model in `hf_dir` (loaded natively)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ConfigError("compare-hf", "transformers", "is not installed: pip install "
                          "'nemotron-train[hf]'") from None
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=TORCH_DTYPES[dtype])
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(token_rows, dtype=torch.long)).logits.float()


def random_token_rows(vocab_size: int, batch: int, seq_length: int, seed: int = 0) -> list[list[int]]:
    """Reproducible random token rows, for a comparison without a tokenizer."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=generator).tolist()
