"""Hybrid layer patterns: `M` Mamba-2, `E` MoE, `*` attention, `-` dense MLP.

`|` marks pipeline-stage boundaries and `/` starts a multi-token-prediction
block (`"MEM*E/*E/*E"`: main stack `MEM*E`, MTP block `*E` applied at 2 depths).
Megatron-Core parses the same syntax; this module validates it first so a bad
pattern fails with the key, the offending character and the fix.
"""

from collections import Counter
from dataclasses import dataclass

from nemotron_train.errors import ConfigError

LAYER_SYMBOLS = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}
PIPELINE_SEPARATOR = "|"
MTP_SEPARATOR = "/"


@dataclass(frozen=True)
class HybridPattern:
    """A validated pattern: the main stack, its pipeline stages, and the MTP block."""

    text: str
    main: str
    """Main-stack layer symbols, pipeline separators removed."""
    stages: tuple[str, ...]
    """The main stack split at `|` (one entry when the pattern names no stages)."""
    mtp_block: str | None
    """Layer symbols of one MTP depth, or None without MTP."""
    mtp_depths: int

    @property
    def num_layers(self) -> int:
        return len(self.main)

    def count(self, layer_type: str) -> int:
        """Main-stack layers of one type ("mamba", "moe", "attention", "mlp")."""
        return Counter(LAYER_SYMBOLS[s] for s in self.main)[layer_type]

    def layer_types(self) -> list[str]:
        return [LAYER_SYMBOLS[s] for s in self.main]


def parse_pattern(text: str, key: str = "model.pattern") -> HybridPattern:
    """Validate and split a hybrid pattern; raise ConfigError naming the bad character."""
    if not text:
        raise ConfigError(key, text, "give at least one layer symbol (M, E, *, -)")
    main_text, *mtp_parts = text.split(MTP_SEPARATOR)
    for position, symbol in enumerate(text):
        if symbol not in LAYER_SYMBOLS and symbol not in (PIPELINE_SEPARATOR, MTP_SEPARATOR):
            raise ConfigError(
                key,
                text,
                f"character {symbol!r} at position {position} is not a layer symbol; use "
                "M (Mamba-2), E (MoE), * (attention), - (dense MLP), | (pipeline stage "
                "boundary), / (MTP block)",
            )
    stages = tuple(main_text.split(PIPELINE_SEPARATOR))
    if any(not stage for stage in stages):
        raise ConfigError(key, text, "every pipeline stage between '|' needs at least one layer")
    mtp_block = None
    if mtp_parts:
        if any(PIPELINE_SEPARATOR in part for part in mtp_parts):
            raise ConfigError(key, text, "'|' may only appear in the main pattern, before '/'")
        if len(set(mtp_parts)) != 1 or not mtp_parts[0]:
            raise ConfigError(
                key, text, "every MTP depth after '/' must repeat the same non-empty block"
            )
        mtp_block = mtp_parts[0]
    return HybridPattern(
        text=text,
        main="".join(stages),
        stages=stages,
        mtp_block=mtp_block,
        mtp_depths=len(mtp_parts),
    )
