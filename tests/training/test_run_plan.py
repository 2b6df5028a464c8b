"""The run plan for machines this CPU is not: every choice that depends on TransformerEngine,
the GPU generation, Apex or DeepEP is made, and every impossible combination refused, before
the model is built. Machines are described, not probed."""

import pytest
import torch

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.precision.execution import EMULATED_DESCRIPTION, NATIVE_DESCRIPTION
from nemotron_train.precision.presets import PrecisionConfig
from nemotron_train.runtime.backends import Machine
from nemotron_train.runtime.distributed import ParallelConfig
from nemotron_train.training.config import TrainConfig
from nemotron_train.training.run_plan import plan_run
from nemotron_train.training.throughput import ThroughputConfig
from tests.precision.test_parallel_linear import TINY, VOCAB

CPU = Machine()
HOPPER_TE = Machine(cuda=True, transformer_engine=True)
HOPPER_PIP = Machine(cuda=True)  # torch with CUDA, no TE, no Apex (the project's GPU test image)
BLACKWELL_TE = Machine(cuda=True, transformer_engine=True, blackwell=True)
NGC_HOPPER = Machine(cuda=True, transformer_engine=True, apex_gradient_accumulation_fusion=True,
                     fused_moe_permute=True, flex_dispatcher_backends=("deepep",))


def run_config(spec="auto", recipe="nvfp4", execution="auto", throughput=None, parallel=None, **model):
    return RunConfig(model=HybridModelConfig(**{**TINY, "spec": spec, **model}),
                     precision=PrecisionConfig(recipe=recipe, execution=execution),
                     parallel=parallel or ParallelConfig(),
                     throughput=throughput or ThroughputConfig(),
                     train=TrainConfig(global_batch_size=2, micro_batch_size=1))


def test_nvfp4_on_hopper_with_te_builds_the_local_spec():
    plan = plan_run(run_config(), HOPPER_TE).precision
    assert (plan.path, plan.spec, plan.description) == ("emulated", "local", EMULATED_DESCRIPTION)
    assert "although TransformerEngine imports" in plan.describe()
    with pytest.raises(ConfigError, match="model.spec='te'.*emulated NVFP4.*local spec"):
        plan_run(run_config(spec="te"), HOPPER_TE)


def test_nvfp4_with_the_local_spec_on_blackwell_emulates_instead_of_claiming_native():
    assert plan_run(run_config(), BLACKWELL_TE).precision.path == "native"  # TE's layers, TE's kernels
    plan = plan_run(run_config(spec="local"), BLACKWELL_TE).precision
    assert (plan.path, plan.spec, plan.description) == ("emulated", "local", EMULATED_DESCRIPTION)
    assert "fp4" not in plan.transformer_fields
    with pytest.raises(ConfigError, match="model.spec='local'.*native NVFP4"):
        plan_run(run_config(spec="local", execution="native"), BLACKWELL_TE)


def test_high_precision_takes_te_where_it_imports():
    assert plan_run(run_config(recipe="bf16"), HOPPER_TE).precision.spec == "te"
    assert plan_run(run_config(recipe="bf16"), HOPPER_PIP).precision.spec == "local"
    native = plan_run(run_config(), BLACKWELL_TE).precision
    assert native.spec == "te" and native.description == NATIVE_DESCRIPTION
    with pytest.raises(ConfigError, match="model.spec='te'.*cannot be imported"):
        plan_run(run_config(recipe="bf16", spec="te"), HOPPER_PIP)


def test_throughput_is_off_on_cpu_and_on_where_megatron_core_runs_it():
    distributed = ParallelConfig(distributed_optimizer=True)
    cpu = plan_run(run_config(recipe="bf16", parallel=distributed), CPU).throughput
    assert not any(cpu.settings.values())
    assert cpu.ddp == dict(overlap_grad_reduce=False, overlap_param_gather=False)
    ngc = plan_run(run_config(recipe="bf16", parallel=distributed), NGC_HOPPER).throughput
    assert ngc.ddp == dict(overlap_grad_reduce=True, overlap_param_gather=True)
    assert ngc.optimizer == dict(overlap_param_gather=True)
    assert ngc.transformer == dict(gradient_accumulation_fusion=True, moe_permute_fusion=True,
                                   tp_comm_overlap=False)
    pip = plan_run(run_config(recipe="bf16"), HOPPER_PIP).throughput.settings
    assert pip == dict(overlap_grad_reduce=True, overlap_param_gather=False,  # no distributed optimizer
                       gradient_accumulation_fusion=False, moe_permute_fusion=False, tp_comm_overlap=False)
    off = ThroughputConfig(overlap_grad_reduce=False)
    assert not plan_run(run_config(recipe="bf16", throughput=off), NGC_HOPPER).throughput.ddp["overlap_grad_reduce"]


@pytest.mark.parametrize("key, machine", [
    ("overlap_grad_reduce", CPU),
    ("overlap_param_gather", NGC_HOPPER),  # without the distributed optimizer
    ("gradient_accumulation_fusion", HOPPER_TE),  # no Apex
    ("moe_permute_fusion", HOPPER_PIP),
    ("tp_comm_overlap", NGC_HOPPER),  # TP 1
])
def test_a_switch_set_on_where_it_cannot_run_names_its_key(key, machine):
    with pytest.raises(ConfigError, match=f"throughput.{key}=True.*needs"):
        plan_run(run_config(recipe="bf16", throughput=ThroughputConfig(**{key: True})), machine)


def test_flex_dispatcher_needs_its_backend_and_an_expert_parallel_group():
    expert_parallel = ParallelConfig(expert=2)
    flex = dict(recipe="bf16", moe_token_dispatcher_type="flex")
    plan_run(run_config(**flex, parallel=expert_parallel), NGC_HOPPER)
    with pytest.raises(ConfigError, match="model.moe_token_dispatcher_type='flex'.*'deepep'.*does not import"):
        plan_run(run_config(**flex, parallel=expert_parallel), HOPPER_TE)
    with pytest.raises(ConfigError, match="'hybridep'"):
        plan_run(run_config(**flex, moe_flex_dispatcher_backend="hybridep", parallel=expert_parallel), NGC_HOPPER)
    with pytest.raises(ConfigError, match="TP x EP"):
        plan_run(run_config(**flex), NGC_HOPPER)


def test_the_plan_is_printed_before_the_model_is_built(single_process, monkeypatch, capsys):
    """The emulated NVFP4 plan for a Hopper node with TE, carried out on this CPU: the local spec
    with its quantized linears, decided and printed before any weight exists."""
    from nemotron_train.training.model_setup import build_model

    printed_before_build = []
    build = HybridModelConfig.build

    def recording_build(self, *args, **kwargs):
        printed_before_build.append(capsys.readouterr().out)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(HybridModelConfig, "build", recording_build)
    config = run_config()
    setup = build_model(config, VOCAB, torch.device("cpu"), plan=plan_run(config, HOPPER_TE))
    assert "precision path: emulated" in printed_before_build[0]
    assert "layer spec: local" in printed_before_build[0]
    layers = setup.chunks[0].module.module.decoder.layers
    assert layers[0].mixer.in_proj.quantization_format == "nvfp4"
    assert setup.chunks[0].ddp_config.overlap_grad_reduce  # the Hopper plan's DDP settings
