"""The hybrid model's configuration, which is also its factory (one place validates it)."""

import copy
from dataclasses import dataclass, field
from typing import Optional

from megatron.core.activations import squared_relu
from megatron.core.transformer import TransformerConfig

from nemotron_train.errors import ConfigError
from nemotron_train.model import te_standins
from nemotron_train.model.pattern import HybridPattern, parse_pattern
from nemotron_train.model.specs import hybrid_stack_spec
from nemotron_train.precision.execution import select_layer_spec
from nemotron_train.runtime.backends import transformer_engine_available


@dataclass(kw_only=True)
class HybridModelConfig:
    """A Nemotron-3-style hybrid: Mamba-2, MoE and GQA attention layers laid out by `pattern`."""

    pattern: str = "M*EM-E"
    """Layer symbols: M Mamba-2, E MoE, * attention, - dense MLP; | stage boundary; / MTP block."""
    num_layers: int = 6
    """Main-stack layers; must equal the number of layer symbols before the first '/'."""
    hidden_size: int = 256
    """Model width d."""
    seq_length: int = 256
    """Training sequence length in tokens."""
    vocab_size: Optional[int] = None
    """Vocabulary size; None takes the tokenizer's, padded to a multiple of 128 x TP."""
    init_method_std: float = 0.02
    """Std of the normal init of every weight matrix."""
    layernorm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    spec: str = "auto"
    """Layer spec: 'te' (Megatron-Core's TransformerEngine spec), 'local', or 'auto'."""

    # Attention (GQA, no positional embedding: the Mamba layers carry position).
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups)."""
    head_dim: int = 64
    """Channels per attention head."""

    # Mamba-2.
    mamba_num_heads: int = 8
    """SSM heads; d_inner = mamba_num_heads x mamba_head_dim."""
    mamba_head_dim: int = 32
    """Channels per SSM head."""
    mamba_state_dim: int = 32
    """SSM state size N."""
    mamba_num_groups: int = 2
    """B/C groups (heads share B and C within a group)."""
    mamba_chunk_size: int = 64
    """Chunk length of the SSD chunked scan."""
    mamba_conv_kernel: int = 4
    """Width of the causal depthwise convolution before the scan."""

    # Dense MLP ('-' layers).
    ffn_hidden_size: int = 512
    """Hidden width of the dense squared-ReLU MLP."""

    # MoE ('E' layers).
    num_experts: int = 8
    """Routed experts per MoE layer."""
    moe_router_topk: int = 2
    """Routed experts per token."""
    moe_ffn_hidden_size: int = 256
    """Hidden width of one routed expert (squared-ReLU, no gate)."""
    moe_shared_expert_intermediate_size: Optional[int] = 256
    """Hidden width of the shared expert; None for no shared expert."""
    moe_router_topk_scaling_factor: float = 2.5
    """Multiplier on the routed gate values (applies to the sigmoid score too)."""
    moe_router_bias_update_rate: float = 1e-3
    """Expert-bias step of aux-loss-free balancing, applied once per global batch."""
    moe_aux_loss_coeff: float = 1e-4
    """Coefficient of the sequence-level balancing loss."""
    moe_token_dispatcher_type: str = "alltoall"
    """Megatron-Core token dispatcher: 'alltoall', 'allgather', or 'flex' (DeepEP / HybridEP
    kernels for large expert parallelism; GPU nodes with DeepEP installed)."""
    moe_flex_dispatcher_backend: str = "deepep"
    """The flex dispatcher's backend: 'deepep' or 'hybridep' (multi-node NVLink)."""
    moe_latent_size: Optional[int] = None
    """LatentMoE width l (experts and dispatch run at l < d); None for standard MoE."""
    moe_router_num_groups: Optional[int] = None
    """Group-limited routing: experts form this many equal groups and each token picks its
    experts from `moe_router_group_topk` of them; None routes over all experts."""
    moe_router_group_topk: Optional[int] = None
    """Group-limited routing: groups chosen per token, ranked by the sum of their top
    moe_router_topk / moe_router_group_topk expert scores (Megatron-Core's rule)."""

    # Multi-token prediction (the pattern's '/' blocks).
    mtp_loss_scaling_factor: float = 0.1
    """Weight of the MTP losses (Megatron-Core divides it by the number of depths)."""
    mtp_shared_weights: bool = True
    """Apply one shared MTP block at every depth (as Nemotron 3 Super does)."""

    recompute: list = field(default_factory=list)
    """Megatron-Core recompute modules for selective recompute (e.g. ['moe_act', 'mlp'])."""

    def __post_init__(self):
        parsed = self.parsed_pattern
        if parsed.num_layers != self.num_layers:
            raise ConfigError(
                "model.num_layers",
                self.num_layers,
                f"model.pattern {self.pattern!r} has {parsed.num_layers} main-stack layers; "
                f"set model.num_layers={parsed.num_layers} or change the pattern",
            )
        _require_divides("model.num_query_groups", self.num_query_groups,
                         "model.num_attention_heads", self.num_attention_heads)
        _require_divides("model.mamba_num_groups", self.mamba_num_groups,
                         "model.mamba_num_heads", self.mamba_num_heads)
        if self.moe_router_topk > self.num_experts:
            raise ConfigError("model.moe_router_topk", self.moe_router_topk,
                              f"choose at most model.num_experts={self.num_experts}")
        if self.moe_token_dispatcher_type not in ("alltoall", "allgather", "flex"):
            raise ConfigError("model.moe_token_dispatcher_type", self.moe_token_dispatcher_type,
                              "choose 'alltoall', 'allgather' or 'flex'")
        if self.moe_flex_dispatcher_backend not in ("deepep", "hybridep"):
            raise ConfigError("model.moe_flex_dispatcher_backend", self.moe_flex_dispatcher_backend,
                              "choose 'deepep' or 'hybridep'")
        if self.spec not in ("auto", "te", "local"):
            raise ConfigError("model.spec", self.spec, "choose 'auto', 'te' or 'local'")
        self._check_group_limited_routing()
        if self.mamba_conv_kernel < 1:
            raise ConfigError("model.mamba_conv_kernel", self.mamba_conv_kernel, "must be at least 1")
        if self.moe_latent_size is not None and not 0 < self.moe_latent_size < self.hidden_size:
            raise ConfigError("model.moe_latent_size", self.moe_latent_size,
                              f"choose 0 < l < model.hidden_size={self.hidden_size}, or null")

    def _check_group_limited_routing(self):
        groups, group_topk = self.moe_router_num_groups, self.moe_router_group_topk
        if (groups is None) != (group_topk is None):
            raise ConfigError("model.moe_router_group_topk", group_topk,
                              "set model.moe_router_num_groups and model.moe_router_group_topk "
                              f"together (num_groups={groups}), or neither")
        if groups is None:
            return
        _require_divides("model.moe_router_num_groups", groups, "model.num_experts", self.num_experts)
        if not 1 <= group_topk <= min(groups, self.moe_router_topk):
            raise ConfigError("model.moe_router_group_topk", group_topk,
                              f"choose 1..min(model.moe_router_num_groups={groups}, "
                              f"model.moe_router_topk={self.moe_router_topk}) groups")
        if self.moe_router_topk > group_topk * (self.num_experts // groups):
            raise ConfigError("model.moe_router_topk", self.moe_router_topk,
                              f"more than the {group_topk} chosen groups of "
                              f"{self.num_experts // groups} experts hold")

    @property
    def parsed_pattern(self) -> HybridPattern:
        return parse_pattern(self.pattern)

    def transformer_config(self, **runtime_fields) -> TransformerConfig:
        """Megatron-Core's TransformerConfig for this model.

        `runtime_fields` carries what the model does not own: parallel sizes
        (`runtime.parallel.megatron_parallel_fields`) and dtypes (the precision preset).
        """
        parsed = self.parsed_pattern
        has_moe = "E" in parsed.main + (parsed.mtp_block or "")
        moe_fields = {}
        if has_moe:
            moe_fields = dict(
                num_moe_experts=self.num_experts,
                moe_router_topk=self.moe_router_topk,
                moe_ffn_hidden_size=self.moe_ffn_hidden_size,
                moe_shared_expert_intermediate_size=self.moe_shared_expert_intermediate_size,
                moe_router_score_function="sigmoid",
                moe_router_dtype="fp32",
                moe_router_enable_expert_bias=True,
                moe_router_bias_update_rate=self.moe_router_bias_update_rate,
                moe_router_topk_scaling_factor=self.moe_router_topk_scaling_factor,
                moe_router_load_balancing_type="seq_aux_loss",
                moe_aux_loss_coeff=self.moe_aux_loss_coeff,
                moe_token_dispatcher_type=self.moe_token_dispatcher_type,
                moe_flex_dispatcher_backend=self.moe_flex_dispatcher_backend,
                moe_grouped_gemm=False,
                moe_latent_size=self.moe_latent_size,
                moe_router_num_groups=self.moe_router_num_groups,
                moe_router_group_topk=self.moe_router_group_topk,
            )
        mtp_fields = {}
        if parsed.mtp_block is not None:
            mtp_fields = dict(
                mtp_num_layers=parsed.mtp_depths,
                mtp_loss_scaling_factor=self.mtp_loss_scaling_factor,
                mtp_use_repeated_layer=self.mtp_shared_weights,
            )
        recompute_fields = {}
        if self.recompute:
            recompute_fields = dict(recompute_granularity="selective",
                                    recompute_modules=list(self.recompute))
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.head_dim,
            mamba_num_heads=self.mamba_num_heads,
            mamba_head_dim=self.mamba_head_dim,
            mamba_state_dim=self.mamba_state_dim,
            mamba_num_groups=self.mamba_num_groups,
            normalization="RMSNorm",
            layernorm_epsilon=self.layernorm_epsilon,
            add_bias_linear=False,
            gated_linear_unit=False,
            activation_func=squared_relu,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            **moe_fields,
            **mtp_fields,
            **recompute_fields,
            **runtime_fields,
        )

    def build(self, transformer_config: TransformerConfig, vocab_size: int, *,
              pre_process: bool = True, post_process: bool = True, pg_collection=None,
              spec: Optional[str] = None):
        """Build a bare Megatron-Core HybridModel for one pipeline stage (no DDP wrapping).

        `spec` is the layer spec the run plan resolved ('te' or 'local'); None resolves
        `model.spec` here (precision/execution.py resolves it together with the precision path).
        """
        from megatron.core.models.hybrid.hybrid_model import HybridModel

        te_standins.install()  # HybridStack and LatentMoE build TE modules whatever the spec says
        if spec is None:
            spec, _ = select_layer_spec(self.spec, "high_precision", transformer_engine_available())
        spec = hybrid_stack_spec(spec, context_parallel=transformer_config.context_parallel_size > 1)
        # MambaMixer takes its chunk size and conv width as constructor arguments, not from
        # the config.
        spec = copy.deepcopy(spec)
        mixer = spec.submodules.mamba_layer.submodules.mixer
        mixer.params = {**mixer.params, "chunk_size": self.mamba_chunk_size,
                        "d_conv": self.mamba_conv_kernel}
        return HybridModel(
            config=transformer_config,
            hybrid_stack_spec=spec,
            vocab_size=vocab_size,
            max_sequence_length=self.seq_length,
            hybrid_layer_pattern=self.pattern,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=False,
            position_embedding_type="none",
            pg_collection=pg_collection,
        )


def _require_divides(divisor_key: str, divisor: int, dividend_key: str, dividend: int):
    if divisor <= 0 or dividend % divisor:
        raise ConfigError(divisor_key, divisor, f"must be positive and divide {dividend_key}={dividend}")


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    """Round the vocabulary up so every tensor-parallel shard of the embedding is equal."""
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step

