"""How this run will execute on this machine, decided before anything is allocated.

One place resolves what depends on the machine: the precision path and the layer spec it
needs (precision/execution.py), and the throughput switches (training/throughput.py). A
combination that could only fail once the model is built raises a ConfigError here, and the
plan is printed before the model is built.
"""

from dataclasses import dataclass
from typing import Optional

from nemotron_train.precision.execution import PrecisionPlan, plan_precision
from nemotron_train.runtime.backends import Machine, probe_machine
from nemotron_train.training.throughput import ThroughputPlan, plan_throughput


@dataclass(frozen=True)
class RunPlan:
    """The decisions of `plan_run`."""

    precision: PrecisionPlan
    throughput: ThroughputPlan
    machine: Machine

    def describe(self) -> list[str]:
        """The lines the run prints before it builds the model."""
        return [self.precision.describe(), self.throughput.describe()]


def plan_run(config, machine: Optional[Machine] = None) -> RunPlan:
    """Plan `config` (a RunConfig) for `machine` (default: this one, probed)."""
    machine = machine or probe_machine()
    precision = plan_precision(
        config.precision, config.model.num_layers,
        native_available=machine.transformer_engine and machine.blackwell,
        spec=config.model.spec, te_available=machine.transformer_engine)
    throughput = plan_throughput(config.throughput, machine=machine, parallel=config.parallel,
                                 model=config.model, layer_spec=precision.spec)
    return RunPlan(precision=precision, throughput=throughput, machine=machine)
