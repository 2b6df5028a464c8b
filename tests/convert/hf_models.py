"""Tiny random NemotronH checkpoints written by transformers itself, the parity oracle.

`save_hf_checkpoint` builds transformers' `NemotronHForCausalLM`, gives every weight a
random value of a healthy scale (transformers' init leaves norms at 1, the expert bias at 0
and the projections tiny, which would hide layout mistakes), and saves it with
`save_pretrained`, which writes the released layout (`backbone.*`, per-expert tensors).
transformers' model has no MTP module, so MTP weights are generated from a second
transformers model whose layers are the MTP block and added under `mtp.layers.N.*` the way
the released checkpoints (and vLLM's loader) name them.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

TINY_HF_CONFIG = dict(
    vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16,
    conv_kernel=4, chunk_size=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
    moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5, n_group=1, topk_group=1,
    norm_topk_prob=True, layer_norm_epsilon=1e-5, num_nextn_predict_layers=0, tie_word_embeddings=False,
    layers_block_type=["linear_attention", "full_attention", "moe", "mlp", "linear_attention", "moe"],
)
# Every layer type, standard MoE; and LatentMoE with group-limited routing and an MTP block.
PARITY_CONFIGS = {
    "every_layer_type": {},
    "latent_grouped_mtp": dict(moe_latent_size=32, n_routed_experts=16, n_group=4, topk_group=2,
                               num_experts_per_tok=4, num_nextn_predict_layers=1,
                               mtp_layers_block_type=["full_attention", "moe"]),
}
TIME_STEP_MIN = 1e-3  # transformers >= 5.15 clamps dt from below here; Megatron-Core never does


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = param.shape
            if name.endswith(("norm.weight", "norm_f.weight", "enorm.weight", "hnorm.weight")):
                value = 1 + normal(shape, 0.2)
            elif name.endswith("A_log"):
                value = torch.log(1 + 15 * torch.rand(shape, generator=generator))
            elif name.endswith(".D"):
                value = 0.5 + torch.rand(shape, generator=generator)
            elif name.endswith("dt_bias"):  # softplus(dt_bias) in [0.02, 0.2], well above TIME_STEP_MIN
                dt = 0.02 + 0.18 * torch.rand(shape, generator=generator)
                value = dt + torch.log(-torch.expm1(-dt))
            elif name.endswith("conv1d.bias"):
                value = normal(shape, 0.1)
            elif name.endswith("conv1d.weight"):
                value = normal(shape, 1 / math.sqrt(shape[-1]))
            else:
                value = normal(shape, 1 / math.sqrt(shape[-1]))
            param.copy_(value)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(normal(buffer.shape, 0.05))
        # Keep the dt projection small, so softplus(dt + dt_bias) stays far from the clamp.
        for module in model.modules():
            if hasattr(module, "dt_bias") and hasattr(module, "in_proj"):
                module.in_proj.weight[-module.num_heads:] *= 0.05


def hf_config(overrides: dict) -> dict:
    return {**TINY_HF_CONFIG, "time_step_min": TIME_STEP_MIN, **overrides}


def _mtp_tensors(config: dict, generator: torch.Generator) -> dict:
    """The MTP block's weights in the released layout: `mtp.layers.{k*L+j}.*`."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    block = config["mtp_layers_block_type"]
    d = config["hidden_size"]
    tensors = {}
    for depth in range(config["num_nextn_predict_layers"]):
        block_config = {k: v for k, v in config.items() if k not in ("num_nextn_predict_layers",
                                                                        "mtp_layers_block_type")}
        block_model = NemotronHForCausalLM(NemotronHConfig(**{**block_config, "layers_block_type": block}))
        _randomize(block_model, generator)
        first = depth * len(block)
        for name, value in block_model.state_dict().items():
            if not name.startswith("model.layers."):
                continue
            index, rest = name[len("model.layers."):].split(".", 1)
            prefix = f"mtp.layers.{first + int(index)}."
            if rest in ("mixer.experts.up_proj", "mixer.experts.down_proj"):
                # transformers stacks experts in memory; the released files store one per expert.
                projection = rest.rsplit(".", 1)[1]
                for expert, weight in enumerate(value):
                    tensors[f"{prefix}mixer.experts.{expert}.{projection}.weight"] = weight
            else:
                tensors[prefix + rest] = value
        for norm in ("enorm", "hnorm"):
            tensors[f"mtp.layers.{first}.{norm}.weight"] = 1 + 0.2 * torch.randn(d, generator=generator)
        tensors[f"mtp.layers.{first}.eh_proj.weight"] = torch.randn(d, 2 * d, generator=generator) / math.sqrt(2 * d)
        tensors[f"mtp.layers.{first + len(block) - 1}.final_layernorm.weight"] = (
            1 + 0.2 * torch.randn(d, generator=generator))
    return tensors


def save_hf_checkpoint(directory: Path, overrides: dict | None = None, *, seed: int = 0,
                       dtype: torch.dtype = torch.float32):
    """Write a random NemotronH checkpoint to `directory`; return transformers' model (fp32, eval)."""
    from safetensors.torch import load_file, save_file
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = hf_config(overrides or {})
    generator = torch.Generator().manual_seed(seed)
    model = NemotronHForCausalLM(NemotronHConfig(**config))
    _randomize(model, generator)
    model.to(dtype).save_pretrained(str(directory))
    if config.get("num_nextn_predict_layers"):
        weights = Path(directory) / "model.safetensors"
        tensors = load_file(str(weights))
        tensors.update({k: v.to(dtype).contiguous() for k, v in _mtp_tensors(config, generator).items()})
        for name in tensors:
            if name.endswith("e_score_correction_bias"):
                tensors[name] = tensors[name].float()
        save_file(tensors, str(weights), metadata={"format": "pt"})
    model.float().eval()
    return model


def hf_logits_and_dt_min(model, token_rows) -> tuple[torch.Tensor, float]:
    """transformers' logits, and the smallest softplus(dt + dt_bias) any Mamba layer saw (to
    show the dt clamp of transformers >= 5.15 never fired)."""
    dt_min = [math.inf]
    hooks = []
    for module in model.modules():
        if hasattr(module, "dt_bias") and hasattr(module, "in_proj"):
            def record(_in_proj, _inputs, output, mixer_module=module):
                dt = F.softplus(output[..., -mixer_module.num_heads:] + mixer_module.dt_bias)
                dt_min[0] = min(dt_min[0], dt.min().item())
            hooks.append(module.in_proj.register_forward_hook(record))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(token_rows)).logits.float()
    finally:
        for hook in hooks:
            hook.remove()
    return logits, dt_min[0]


def read_config(directory: Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())
