"""The per-module precision policy: which numeric format every weight-matrix module computes in.

A policy is an ordered list of rules, each a glob on the module's name in the bare
``HybridModel`` (``decoder.layers.3.mixer.out_proj``, with global layer indices) and a
format; the first rule that matches wins and modules no rule matches take the policy's
default. Globs are fnmatch patterns, the language of Megatron-Core's quantization recipe
file, so the native path renders the same rules into that file (``precision/execution.py``).

The NVFP4 policy of Nemotron 3 (nemotron3_reference.md, "High-precision exceptions"):
NVFP4 everywhere except BF16 for the attention QKV and output projections, LatentMoE's
latent projections, the MTP layers, the embedding and output layer and the last ~15% of
the main-stack layers, and MXFP8 for Mamba's ``out_proj``. The MoE router keeps
Megatron-Core's float32 (``moe_router_dtype='fp32'``): it is not a quantized GEMM.
"""

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

QUANTIZED_FORMATS = ("nvfp4", "mxfp8")
"""Formats whose GEMMs run on block-scaled operands."""
FORMATS = (*QUANTIZED_FORMATS, "bf16", "fp32")

_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class PrecisionRule:
    """Modules whose name matches ``pattern`` compute in ``format``."""

    pattern: str
    """fnmatch glob on the module name, e.g. ``*.mixer.out_proj``."""
    format: str
    """One of FORMATS."""
    reason: str
    """Why, in a few words (printed beside the map)."""
    layer: int | None = None
    """Set on the rules that keep a whole main-stack layer in BF16 (its global index);
    the native path expresses those through Megatron-Core's layer fields instead."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"PrecisionRule.format={self.format!r}: choose one of {FORMATS}")


@dataclass(frozen=True)
class PrecisionPolicy:
    """Ordered rules (first match wins) and the format of everything else."""

    rules: tuple[PrecisionRule, ...]
    default: str

    def format_of(self, module_name: str) -> str:
        """The format of the module called ``module_name`` (global layer indices)."""
        return self.rule_for(module_name).format

    def rule_for(self, module_name: str) -> PrecisionRule:
        """The first rule matching ``module_name``, or a rule naming the default."""
        for rule in self.rules:
            if fnmatch.fnmatchcase(module_name, rule.pattern):
                return rule
        return PrecisionRule("*", self.default, "default")

    def map(self, module_names: Iterable[str]) -> dict[str, str]:
        """``{module name: format}`` for ``module_names``, in their order."""
        return {name: self.format_of(name) for name in module_names}

    @property
    def layers_in_bf16(self) -> tuple[int, ...]:
        """Global indices of the main-stack layers kept entirely in BF16."""
        return tuple(rule.layer for rule in self.rules if rule.layer is not None)


HIGH_PRECISION_MODULES = (
    PrecisionRule("embedding.*", "bf16", "embedding"),
    PrecisionRule("output_layer", "bf16", "output layer"),
    PrecisionRule("mtp.*", "bf16", "MTP layers"),
    PrecisionRule("*.self_attention.linear_qkv", "bf16", "attention QKV"),
    PrecisionRule("*.self_attention.linear_proj", "bf16", "attention output projection"),
    PrecisionRule("*.mlp.fc1_latent_proj", "bf16", "LatentMoE latent projection"),
    PrecisionRule("*.mlp.fc2_latent_proj", "bf16", "LatentMoE latent projection"),
    PrecisionRule("*.mlp.router", "fp32", "MoE router (Megatron-Core computes it in fp32)"),
)
"""The module-type exceptions of the NVFP4 policy, checked before anything else."""

MAMBA_OUT_PROJ_MXFP8 = PrecisionRule(
    "*.mixer.out_proj", "mxfp8", "Mamba out_proj (NVFP4 flushes too many of its values)")


def layers_in_bf16_at_end(num_layers: int, fraction: float) -> int:
    """The fewest last layers covering ``fraction`` of ``num_layers`` (ceil; 0 for 0)."""
    # The epsilon keeps 0.15 * 20 = 3.0000000000000004 at 3 layers.
    return min(num_layers, math.ceil(fraction * num_layers - 1e-9))


def nvfp4_policy(num_layers: int, last_layers_bf16_fraction: float = 0.15) -> PrecisionPolicy:
    """Nemotron 3's NVFP4 policy for a main stack of ``num_layers`` layers."""
    count = layers_in_bf16_at_end(num_layers, last_layers_bf16_fraction)
    last_layers = tuple(
        PrecisionRule(f"decoder.layers.{index}.*", "bf16", "last layers in BF16", layer=index)
        for index in range(num_layers - count, num_layers)
    )
    return PrecisionPolicy(
        rules=(*HIGH_PRECISION_MODULES, *last_layers, MAMBA_OUT_PROJ_MXFP8), default="nvfp4")


def uniform_policy(format: str) -> PrecisionPolicy:
    """Every module in ``format`` (the fp32 and bf16 presets), the router in fp32."""
    router = PrecisionRule("*.mlp.router", "fp32", "MoE router (Megatron-Core computes it in fp32)")
    return PrecisionPolicy(rules=(router,), default=format)


def global_module_name(local_name: str, first_layer_index: int) -> str:
    """``decoder.layers.<i>.`` of a pipeline stage whose first layer is global index
    ``first_layer_index``, renumbered to the global index (other names unchanged)."""
    return _LAYER_INDEX.sub(
        lambda match: f"decoder.layers.{int(match.group(1)) + first_layer_index}.", local_name)


def stage_first_layer_index(model) -> int:
    """Global index of a pipeline stage's first main-stack layer (0 without layers)."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    return layers[0].layer_number - 1 if layers else 0


def linear_flops_by_format(policy: PrecisionPolicy, flops_by_module: Mapping[str, float]) -> dict:
    """Fraction of the linear-layer FLOPs computed in each format.

    ``flops_by_module`` maps module names (as the policy sees them) to that module's
    FLOPs per token (or per step: only ratios matter). Formats with no FLOPs are omitted.
    """
    totals: dict[str, float] = {}
    for name, flops in flops_by_module.items():
        fmt = policy.format_of(name)
        totals[fmt] = totals.get(fmt, 0.0) + flops
    grand_total = sum(totals.values()) or 1.0
    return {fmt: flops / grand_total for fmt, flops in sorted(totals.items())}


# Which layer symbol of the hybrid pattern owns a module, from its name inside the layer
# (Megatron-Core's module names; see model/pattern.py for the symbols).
_LAYER_SYMBOL_BY_PREFIX = (
    ("mixer.", "M"),
    ("self_attention.", "*"),
    ("mlp.linear_fc", "-"),
    ("mlp.", "E"),
)
_ANY_LAYER = "decoder.layers.*."


def expand_layer_pattern(module_pattern: str, main_pattern: str) -> list[tuple[int | None, str]]:
    """The concrete names behind a name pattern with ``decoder.layers.*`` (and
    ``local_experts.*``), as ``(layer index, name)`` for each layer of ``main_pattern``
    (the main stack's layer symbols, e.g. ``'MEM*ME'``) that holds the module; one
    ``(None, module_pattern)`` for names outside the main stack."""
    if not module_pattern.startswith(_ANY_LAYER):
        return [(None, module_pattern)]
    suffix = module_pattern[len(_ANY_LAYER):].replace("local_experts.*", "local_experts.0")
    symbol = next(symbol for prefix, symbol in _LAYER_SYMBOL_BY_PREFIX if suffix.startswith(prefix))
    return [(index, f"decoder.layers.{index}.{suffix}")
            for index, layer in enumerate(main_pattern) if layer == symbol]


def pattern_formats(policy: PrecisionPolicy, main_pattern: str, module_patterns: Iterable[str]) -> dict:
    """``{module pattern: format}`` for name patterns such as the dry run's
    ``decoder.layers.*.mixer.in_proj``.

    A pattern whose layers do not all share one format is split by format, its ``*``
    replaced by the layer indices: ``decoder.layers.{0,2,...,42}.mixer.in_proj: nvfp4``
    and ``decoder.layers.{44,46,...}.mixer.in_proj: bf16``.
    """
    result = {}
    for module_pattern in module_patterns:
        by_format: dict[str, list[int | None]] = {}
        for index, name in expand_layer_pattern(module_pattern, main_pattern):
            by_format.setdefault(policy.format_of(name), []).append(index)
        if len(by_format) == 1:
            result[module_pattern] = next(iter(by_format))
            continue
        for fmt, indices in by_format.items():
            listed = ",".join(str(index) for index in indices)
            result[module_pattern.replace("layers.*", f"layers.{{{listed}}}", 1)] = fmt
    return result


def linear_flops_fractions(policy: PrecisionPolicy, main_pattern: str,
                           flops_by_pattern: Mapping[str, float]) -> dict:
    """Fraction of the linear-layer FLOPs in each format.

    ``flops_by_pattern`` maps the dry run's module name patterns to FLOPs per token: for
    a ``decoder.layers.*`` pattern, those of all its modules in one layer (for
    ``local_experts.*``, every expert's share: top-k experts' worth); for other names,
    the module's total.
    """
    flops_by_module = {}
    for module_pattern, flops in flops_by_pattern.items():
        for _, name in expand_layer_pattern(module_pattern, main_pattern):
            flops_by_module[name] = flops_by_module.get(name, 0.0) + flops
    return linear_flops_by_format(policy, flops_by_module)
