"""Which path runs the precision policy, and how each path is set up.

- native: TransformerEngine imports and the GPU is a Blackwell (compute capability
  10 or higher). The policy becomes Megatron-Core's fp4 settings (``fp4='e2m1'``,
  ``fp4_recipe='nvfp4'``), its last-layers-in-BF16 fields, and a per-module
  quantization recipe (``quant_recipe``, the YAML format of
  ``megatron.core.quantization.quant_config``) for the module exceptions, so TE's
  kernels run.
- emulated: everywhere else (CPU, Hopper). The local spec's
  ``QuantizedColumnParallelLinear`` / ``QuantizedRowParallelLinear`` get their format
  from the policy, module by module (:func:`apply_precision_policy`).

The path also fixes the layer spec, before anything is allocated: the emulation lives in
the local spec's linears, so an emulated run builds the local spec even where TransformerEngine
imports (``model.spec=auto``; ``model.spec=te`` is refused), and the native path needs TE's
layers (``model.spec=local`` emulates instead; with ``precision.execution=native`` it is
refused). Why not TE's fused layers with Megatron-Core's custom fp4 recipe instead:
docs/gpu.md.

:func:`plan_precision` makes the decision (one place) and :func:`apply_precision_plan`
applies it to a built model.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nemotron_train.errors import ConfigError
from nemotron_train.precision.parallel_linear import QuantizedGemmMixin
from nemotron_train.precision.policy import (
    QUANTIZED_FORMATS,
    PrecisionPolicy,
    global_module_name,
    nvfp4_policy,
    stage_first_layer_index,
    uniform_policy,
)
from nemotron_train.precision.presets import PrecisionConfig, precision_settings
from nemotron_train.precision.quantized_linear import NVFP4Techniques
from nemotron_train.runtime.backends import cuda_available

NATIVE_DESCRIPTION = "native (TE NVFP4)"
EMULATED_DESCRIPTION = "emulated (nemotron_train.precision)"

# TransformerEngine's NVFP4BlockScaling reads its switches from these variables when
# TE is imported, and Megatron-Core builds the recipe without arguments.
TE_ABLATION_VARIABLES = {
    "rht": "NVTE_NVFP4_DISABLE_RHT",
    "stochastic_rounding": "NVTE_NVFP4_DISABLE_STOCHASTIC_ROUNDING",
    "weight_2d": "NVTE_NVFP4_DISABLE_2D_QUANTIZATION",
}

_TE_CONFIG_TYPE = {"transformer_engine_config_type": "TEQuantizationParams"}
_TE_TRAINING_RECIPES = {
    "bf16": {},
    "fp32": {},
    "mxfp8": {"fp8_quantization_recipe": "mxfp8", "fp8_format": "e4m3"},
    "nvfp4": {"fp4_quantization_recipe": "nvfp4"},
}


@dataclass(frozen=True)
class PrecisionPlan:
    """How this run computes: the path, the policy, and the TransformerConfig fields."""

    path: str
    """'native', 'emulated', or 'high_precision' (fp32/bf16 presets: no quantized GEMMs)."""
    description: str
    """What the run prints: ``precision path: <description>``."""
    policy: PrecisionPolicy
    nvfp4_techniques: NVFP4Techniques
    transformer_fields: dict
    """The preset's dtype fields, plus the fp4 fields on the native path."""
    spec: str = "local"
    """The layer spec the model is built with: 'te' or 'local' (``model.spec`` resolved)."""
    spec_reason: str = ""
    """Why that spec, for the printed plan."""

    def describe(self) -> str:
        """The plan as the run prints it, before the model is built."""
        return f"precision path: {self.description}; layer spec: {self.spec} ({self.spec_reason})"


def native_nvfp4_available() -> bool:
    """TransformerEngine imports and the current GPU is a Blackwell (capability >= 10)."""
    from nemotron_train.runtime.backends import transformer_engine_available

    return (cuda_available() and torch.cuda.get_device_capability()[0] >= 10
            and transformer_engine_available())


def select_precision_path(precision: PrecisionConfig, native_available: bool, spec: str = "auto") -> str:
    """'high_precision' for fp32/bf16; for nvfp4 'native' or 'emulated' as
    ``precision.execution``, ``model.spec`` and the machine (``native_available``) allow.

    The local spec's linears are not TE's, so ``model.spec=local`` never takes the native path.
    """
    if precision.recipe != "nvfp4":
        return "high_precision"
    if precision.execution == "native" and not native_available:
        raise ConfigError("precision.execution", "native",
                          "native NVFP4 needs TransformerEngine and a Blackwell GPU (compute "
                          "capability 10+); use precision.execution=auto or emulated")
    if precision.execution == "native" and spec == "local":
        raise ConfigError("model.spec", "local",
                          "native NVFP4 runs TransformerEngine's kernels, which only the TE spec's "
                          "layers call; use model.spec=te (or auto), or precision.execution=emulated")
    if precision.execution == "emulated" or not native_available or spec == "local":
        return "emulated"
    return "native"


def select_layer_spec(spec: str, path: str, te_available: bool) -> tuple[str, str]:
    """``(spec, reason)``: the layer spec ('te' or 'local') that ``model.spec`` resolves to on
    precision path ``path``, where TransformerEngine imports or not (``te_available``).

    Raises ConfigError for a combination that could only fail once the model is built.
    """
    if path == "emulated":
        if spec == "te":
            raise ConfigError("model.spec", "te",
                              "emulated NVFP4 runs in the local spec's quantizable linears, not in "
                              "TE's fused layers; use model.spec=auto or local (or native NVFP4 "
                              "on a Blackwell GPU)")
        return "local", ("emulated NVFP4 runs in the local spec's quantizable linears"
                         + (", although TransformerEngine imports" if te_available else ""))
    if path == "native":
        return "te", "native NVFP4 runs in TransformerEngine's layers"
    if spec == "te" and not te_available:
        raise ConfigError("model.spec", "te",
                          "TransformerEngine cannot be imported here; install the `gpu` extra or "
                          "use model.spec=local (or auto)")
    if spec == "local":
        return "local", "model.spec=local"
    if te_available:
        return "te", f"model.spec={spec}, TransformerEngine imports"
    return "local", "model.spec=auto, TransformerEngine does not import"


def precision_policy(precision: PrecisionConfig, num_layers: int) -> PrecisionPolicy:
    """The recipe's one policy: Nemotron 3's NVFP4 policy, or every module in the preset dtype."""
    if precision.recipe == "nvfp4":
        return nvfp4_policy(num_layers, precision.last_layers_bf16_fraction)
    return uniform_policy(precision.recipe)


def plan_precision(precision: PrecisionConfig, num_layers: int,
                   native_available: bool | None = None, *, spec: str = "auto",
                   te_available: bool | None = None) -> PrecisionPlan:
    """Decide the path and the layer spec for ``model.spec=spec`` (probing the machine unless
    ``native_available`` / ``te_available`` are given) and resolve the policy and the
    TransformerConfig fields for a ``num_layers`` main stack. Raises ConfigError, before
    anything is built, for a spec the path cannot run in."""
    if native_available is None:
        native_available = precision.recipe == "nvfp4" and native_nvfp4_available()
    if te_available is None:
        from nemotron_train.runtime.backends import transformer_engine_available

        te_available = native_available or transformer_engine_available()
    path = select_precision_path(precision, native_available, spec)
    layer_spec, spec_reason = select_layer_spec(spec, path, te_available)
    policy = precision_policy(precision, num_layers)
    techniques = NVFP4Techniques(rht=precision.rht, stochastic_rounding=precision.stochastic_rounding,
                         weight_2d=precision.weight_2d)
    fields = precision_settings(precision).transformer
    if path == "native":
        require_native_ablation_environment(techniques, os.environ)
        fields.update(native_transformer_fields(policy, num_layers))
    description = {"native": NATIVE_DESCRIPTION, "emulated": EMULATED_DESCRIPTION,
                   "high_precision": f"{precision.recipe} (no quantized GEMMs)"}[path]
    return PrecisionPlan(path=path, description=description, policy=policy,
                         nvfp4_techniques=techniques, transformer_fields=fields, spec=layer_spec,
                         spec_reason=spec_reason)


def apply_precision_plan(model, plan: PrecisionPlan) -> dict[str, str]:
    """Give the bare model's quantized linears their formats (emulated and high-precision
    paths; on the native path TE reads the policy from the TransformerConfig). Returns the
    ``{module name: format}`` map of the modules holding a weight matrix."""
    if plan.path == "native":
        return plan.policy.map(_weight_matrix_module_names(model))
    return apply_precision_policy(model, plan.policy, plan.nvfp4_techniques)


def apply_precision_policy(model, policy: PrecisionPolicy,
                           techniques: NVFP4Techniques = NVFP4Techniques()) -> dict[str, str]:
    """Set ``quantization_format`` (and the NVFP4 techniques) on every quantized linear of
    the bare ``model`` (a HybridModel of one pipeline stage, before DDP wrapping).

    Module names are matched with global layer indices. Raises ``RuntimeError`` when the
    policy asks a module that cannot quantize (a TE linear, say) for NVFP4 or MXFP8.
    Returns ``{module name: format}`` for every module holding a weight matrix.
    """
    first_layer = stage_first_layer_index(model)
    formats = {}
    for local_name, module in model.named_modules():
        if not _holds_weight_matrix(module):
            continue
        name = global_module_name(local_name, first_layer)
        fmt = policy.format_of(name)
        if isinstance(module, QuantizedGemmMixin):
            module.quantization_format = fmt
            module.nvfp4_techniques = techniques
        elif fmt in QUANTIZED_FORMATS:
            raise RuntimeError(
                f"the precision policy puts {name} ({type(module).__name__}) in {fmt}, but only "
                "the local spec's quantized linears emulate it; set model.spec=local")
        formats[name] = fmt
    return formats


def native_transformer_fields(policy: PrecisionPolicy, num_layers: int) -> dict:
    """Megatron-Core's TransformerConfig fields expressing ``policy`` for TE's NVFP4 kernels.

    The whole-layer BF16 rules must be the last layers of the stack (Megatron-Core's
    ``num_layers_at_end_in_bf16``); the module rules become ``quant_recipe``.
    """
    from megatron.core.quantization.quant_config import RecipeConfig

    layers = policy.layers_in_bf16
    if layers != tuple(range(num_layers - len(layers), num_layers)):
        raise ValueError(f"native NVFP4 keeps only the last layers in BF16; the policy has {layers}")
    return dict(
        fp4="e2m1",
        fp4_recipe="nvfp4",
        first_last_layers_bf16=bool(layers),
        num_layers_at_start_in_bf16=0,
        num_layers_at_end_in_bf16=len(layers),
        quant_recipe=RecipeConfig.from_config_dict(te_quantization_recipe(policy)),
    )


def te_quantization_recipe(policy: PrecisionPolicy) -> dict:
    """``policy``'s module rules as Megatron-Core's per-module quantization recipe (the
    dict its ``RecipeConfig.from_config_dict`` / the YAML file hold).

    One TE config per format (BF16 = no TE quantization recipe, which Megatron-Core turns
    into ``fp8_autocast(enabled=False)``), one glob matcher per rule in the policy's
    order, and a final ``*`` matcher for the default. The whole-layer rules are left to
    ``num_layers_at_end_in_bf16``: inside those layers no quantized autocast is active,
    which Megatron-Core's per-module recipes do not override.
    """
    rules = [rule for rule in policy.rules if rule.layer is None]
    formats = dict.fromkeys([*(rule.format for rule in rules), policy.default])
    matchers = {}
    for index, rule in enumerate(rules):
        matchers[f"rule_{index:02d}"] = dict(config=rule.format, type="glob",
                                             pattern=rule.pattern, enabled=True)
    matchers["default"] = dict(config=policy.default, type="glob", pattern="*", enabled=True)
    configs = {fmt: dict(_TE_CONFIG_TYPE, training_recipe=dict(_TE_TRAINING_RECIPES[fmt]))
               for fmt in formats}
    return dict(configs=configs, matchers=matchers)


def write_te_quantization_recipe(policy: PrecisionPolicy, path: Path) -> Path:
    """Write :func:`te_quantization_recipe` as the YAML file Megatron-Core's
    ``load_quantization_recipe`` reads; returns ``path``."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(te_quantization_recipe(policy), sort_keys=False))
    return path


def require_native_ablation_environment(techniques: NVFP4Techniques, environ) -> None:
    """Raise ConfigError unless TE's environment switches say what ``techniques`` says.

    TE reads them at import, so they must be set before the run starts.
    """
    for feature, variable in TE_ABLATION_VARIABLES.items():
        enabled = getattr(techniques, feature)
        disabled_in_te = environ.get(variable, "0") == "1"
        if enabled == disabled_in_te:
            value = "1" if not enabled else "0 (or unset)"
            raise ConfigError(f"precision.{feature}", enabled,
                              f"on the native path TE reads this switch from {variable} at "
                              f"import: launch with {variable}={value}")


def _holds_weight_matrix(module) -> bool:
    return any(p.dim() == 2 for p in module.parameters(recurse=False))


def _weight_matrix_module_names(model) -> list[str]:
    first_layer = stage_first_layer_index(model)
    return [global_module_name(name, first_layer) for name, module in model.named_modules()
            if _holds_weight_matrix(module)]
