"""Layer specs for the hybrid stack: Megatron-Core's TE spec, or our local spec.

Megatron-Core ships only a TransformerEngine hybrid spec
(`megatron.core.models.hybrid.hybrid_layer_specs.hybrid_stack_spec`). The local
spec below builds the same layer types from Megatron-Core's own non-TE modules
(tensor-parallel linears, `DotProductAttention`, `SequentialMLP` experts) so the
model runs where TransformerEngine cannot be imported, CPU included.

Both specs save the same checkpoint keys. The TE spec fuses three pre-norms into the
following linear (`TELayerNormColumnParallelLinear`); the local spec keeps them as
separate modules and renames their keys with Megatron-Core's `sharded_state_dict_keys_map`
(as its GPT local spec and its ModelOpt hybrid spec do). The norms TE builds as separate
`TENorm`s, and LatentMoE's `TELinear`s, carry `_extra_state`, so their local stand-ins do too.
"""

from functools import partial

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec_for_backend
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.multi_token_prediction import (
    MultiTokenPredictionBlock,
    MultiTokenPredictionBlockSubmodules,
    MultiTokenPredictionLayer,
    MultiTokenPredictionLayerSubmodules,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)

from nemotron_train.model.context_parallel_attention import ContextParallelAttention
from nemotron_train.model.norms import RMSNorm, RMSNormWithExtraState
from nemotron_train.model.sdpa_attention import ScaledDotProductAttention
from nemotron_train.precision.parallel_linear import (
    QuantizedColumnParallelLinear,
    QuantizedRowParallelLinear,
)
from nemotron_train.runtime.backends import cuda_available


# Checkpoint keys of the TE spec's fused norms: TELayerNormColumnParallelLinear saves its norm
# weight as `layer_norm_weight` beside the linear's own `weight`.
MAMBA_NORM_KEYS = {"norm.": "mixer.in_proj.layer_norm_"}
ATTENTION_NORM_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
MLP_NORM_KEYS = {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


class _LocalQuantizableSpecProvider(LocalSpecProvider):
    """Megatron-Core's local MoE modules with the quantizable parallel linears."""

    def column_parallel_linear(self) -> type:
        return QuantizedColumnParallelLinear

    def row_parallel_linear(self) -> type:
        return QuantizedRowParallelLinear

    def grouped_mlp_modules(self, moe_use_grouped_gemm: bool):
        return partial(SequentialMLP, submodules=MLPSubmodules(
            linear_fc1=QuantizedColumnParallelLinear, linear_fc2=QuantizedRowParallelLinear,
            activation_func=self.activation_func()))


def local_hybrid_stack_spec(context_parallel: bool = False, fused_attention: bool | None = None) -> ModuleSpec:
    """The hybrid stack from Megatron-Core's non-TE modules (norms are separate modules).

    With `context_parallel`, attention is our `ContextParallelAttention`, since
    Megatron-Core's local `DotProductAttention` requires a context-parallel size of 1.
    Otherwise, with `fused_attention` (default: where CUDA is), `DotProductAttention`'s core
    runs through torch's fused attention kernels (`ScaledDotProductAttention`, same keys).

    Its column- and row-parallel linears are Megatron-Core's, subclassed so that the
    precision policy can switch each one to an emulated NVFP4 or MXFP8 GEMM
    (`precision/parallel_linear.py`); left alone they run Megatron-Core's own code.
    """
    if fused_attention is None:
        fused_attention = cuda_available()
    core_attention = ContextParallelAttention if context_parallel else (
        ScaledDotProductAttention if fused_attention else DotProductAttention)
    dense_linears = MLPSubmodules(linear_fc1=QuantizedColumnParallelLinear,
                                  linear_fc2=QuantizedRowParallelLinear)
    return ModuleSpec(
        module=HybridStack,
        submodules=HybridStackSubmodules(
            mamba_layer=ModuleSpec(
                module=MambaLayer,
                submodules=MambaLayerSubmodules(
                    norm=RMSNorm,
                    mixer=ModuleSpec(
                        module=MambaMixer,
                        submodules=MambaMixerSubmodules(
                            in_proj=QuantizedColumnParallelLinear,
                            out_proj=QuantizedRowParallelLinear,
                        ),
                    ),
                    mamba_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map=MAMBA_NORM_KEYS,
                ),
            ),
            attention_layer=ModuleSpec(
                module=TransformerLayer,
                submodules=TransformerLayerSubmodules(
                    input_layernorm=RMSNorm,
                    self_attention=ModuleSpec(
                        module=SelfAttention,
                        params={"attn_mask_type": AttnMaskType.causal},
                        submodules=SelfAttentionSubmodules(
                            linear_qkv=QuantizedColumnParallelLinear,
                            core_attention=core_attention,
                            linear_proj=QuantizedRowParallelLinear,
                        ),
                    ),
                    self_attn_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map=ATTENTION_NORM_KEYS,
                ),
            ),
            mlp_layer=ModuleSpec(
                module=MLPLayer,
                submodules=TransformerLayerSubmodules(
                    pre_mlp_layernorm=RMSNorm,
                    mlp=partial(MLP.as_mlp_submodule, submodules=dense_linears),
                    mlp_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map=MLP_NORM_KEYS,
                ),
            ),
            moe_layer=ModuleSpec(
                module=MoETransformerLayer,
                submodules=TransformerLayerSubmodules(
                    # TE's spec builds this one as a separate TENorm too (the router reads it).
                    pre_mlp_layernorm=RMSNormWithExtraState,
                    # num_experts only has to be non-None here; the count comes from the config.
                    mlp=get_moe_module_spec_for_backend(
                        _LocalQuantizableSpecProvider(), num_experts=1, moe_grouped_gemm=False),
                    mlp_bda=get_bias_dropout_add,
                ),
            ),
            mtp_block_spec=ModuleSpec(
                module=MultiTokenPredictionBlock,
                submodules=MultiTokenPredictionBlockSubmodules(
                    layer_specs=[
                        ModuleSpec(
                            module=MultiTokenPredictionLayer,
                            submodules=MultiTokenPredictionLayerSubmodules(
                                enorm=RMSNormWithExtraState,
                                hnorm=RMSNormWithExtraState,
                                eh_proj=QuantizedColumnParallelLinear,
                                mtp_model_layer=None,
                                layer_norm=RMSNormWithExtraState,
                            ),
                        )
                    ]
                ),
            ),
        ),
    )


def hybrid_stack_spec(layer_spec: str, context_parallel: bool = False) -> ModuleSpec:
    """The module spec of a resolved layer spec, 'te' or 'local' (precision/execution.py's
    `select_layer_spec` resolves `model.spec` and refuses what cannot run)."""
    if layer_spec == "te":
        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec as te_spec

        return te_spec
    return local_hybrid_stack_spec(context_parallel)
