"""nemotron-train: pretraining of Nemotron-3-style hybrid models on Megatron-Core."""

import logging
import warnings

# Megatron-Core warns at import time about every optional GPU package it lacks;
# the run prints the runtime it chose instead (see runtime.setup.RuntimeInfo).
for _message in (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
):
    warnings.filterwarnings("ignore", message=_message)
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
