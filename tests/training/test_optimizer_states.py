"""Resume touches torch Adam's per-parameter `step` only when torch's Adam is the optimizer.

With TransformerEngine (or Apex) installed, Megatron-Core's optimizer is their FusedAdam,
which keeps the step in its param groups and whose `state_dict` looks every per-parameter
state name up in a dtype map, so a `step` entry there breaks the Slurm requeue path.
"""

import torch
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer.optimizer import FP32Optimizer

from nemotron_train.runtime.setup import prepare_runtime
from nemotron_train.training.checkpoint import _initialise_empty_optimizer_states, _restore_adam_steps


class FusedAdamLike(torch.optim.Optimizer):
    """The parts of TE's FusedAdam that resume meets: states named in a dtype map, the step
    in the param groups, and a `state_dict` that fails on a state name it does not know."""

    name_to_dtype_map = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32,
                         "master_param": torch.float32}

    def __init__(self, params, lr=1e-3):
        super().__init__(params, dict(lr=lr, step=3))

    def state_dict(self):
        state_dict = super().state_dict()
        for state in state_dict["state"].values():
            for name in state:
                self.name_to_dtype_map[name]  # TE: get_unscaled_state -> KeyError on 'step'
        return state_dict


def _init_adam_states(optimizer, config=None):
    # Megatron-Core's init_state_fn for Adam (optimizer/__init__.py), as both paths get it.
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not optimizer.state[param]:
                optimizer.state[param]["exp_avg"] = torch.zeros_like(param)
                optimizer.state[param]["exp_avg_sq"] = torch.zeros_like(param)


def _megatron_optimizer(inner):
    prepare_runtime()  # Megatron-Core's optimizer wrappers allocate on the "CUDA" device
    return FP32Optimizer(inner, OptimizerConfig(optimizer="adam", lr=1e-3), _init_adam_states)


def _params():
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


def test_fused_adam_state_dict_survives_the_load_preparation():
    optimizer = _megatron_optimizer(FusedAdamLike(_params()))
    _initialise_empty_optimizer_states(optimizer)
    state_dict = optimizer.optimizer.state_dict()  # raised KeyError('step') before the fix
    assert all("step" not in state for state in state_dict["state"].values())
    _restore_adam_steps(optimizer, {"optimizer": {"param_groups": [{"step": 7}]}})
    assert all("step" not in state for state in optimizer.optimizer.state.values())
    assert optimizer.optimizer.param_groups[0]["step"] == 3  # FusedAdam's own step, untouched


def test_torch_adam_gets_the_step_the_distributed_optimizer_reads():
    optimizer = _megatron_optimizer(torch.optim.AdamW(_params(), lr=1e-3))
    _initialise_empty_optimizer_states(optimizer)
    states = list(optimizer.optimizer.state.values())
    assert len(states) == 2 and all(float(state["step"]) == 0.0 for state in states)
    _restore_adam_steps(optimizer, {"optimizer": {"param_groups": [{"step": 7}]}})
    steps = [state["step"] for state in optimizer.optimizer.state.values()]
    assert [float(step) for step in steps] == [7.0, 7.0]
    assert steps[0] is not steps[1]  # one tensor per parameter: torch's Adam increments each
