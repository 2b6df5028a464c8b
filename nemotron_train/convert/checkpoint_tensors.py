"""Our model's tensors into and out of Megatron-Core dist_checkpointing checkpoints, streamed.

The model is built once on the meta device (no memory) in a one-process Megatron-Core
session, only to get its `sharded_state_dict`: the exact checkpoint keys, shapes, expert
offsets and the z/x/B/C/dt split Megatron-Core applies to Mamba's in_proj. Writing fills
those entries with tensors that view the source files and lets dist_checkpointing write
them; reading loads the entries of one conversion unit at a time. Neither direction holds
the model in memory.
"""

import dataclasses
from contextlib import contextmanager

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

from nemotron_train.errors import ConfigError
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.runtime.device_redirect import allocate_on
from nemotron_train.runtime.distributed import ParallelConfig, megatron_parallel_fields
from nemotron_train.runtime.megatron_session import megatron_session

MODEL_KEY = "model"  # the trainer's checkpoints hold the model under this key
EMBEDDING = "embedding.word_embeddings.weight"


@contextmanager
def conversion_session():
    """A one-process Megatron-Core session on gloo, whatever launched this process."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    with megatron_session(ParallelConfig(backend="gloo")):
        model_parallel_cuda_manual_seed(0)  # the modules fork its RNG even when not initialising
        yield


def build_meta_model(model: HybridModelConfig, vocab_size: int):
    """The unsharded HybridModel of `model` on the meta device, from the local spec.

    Both specs save the same keys (model/specs.py), so the local one serves any checkpoint.
    """
    config = dataclasses.replace(model, spec="local", vocab_size=vocab_size)
    transformer_config = config.transformer_config(
        **megatron_parallel_fields(ParallelConfig()), perform_initialization=False)
    with allocate_on(torch.device("meta")):
        return config.build(transformer_config, vocab_size=vocab_size)


def parameter_shapes(meta_model) -> dict[str, tuple]:
    """State-dict name -> shape for every parameter and persistent buffer."""
    return {name: tuple(value.shape) for name, value in meta_model.state_dict(keep_vars=True).items()
            if isinstance(value, torch.Tensor)}


def save_model_checkpoint(meta_model, tensor_for, directory) -> None:
    """Write a weights-only checkpoint of `meta_model`'s layout; `tensor_for(name)` gives the
    tensor of each state-dict name (shape checked by the caller)."""
    sharded = meta_model.sharded_state_dict()
    for name, entry in sharded.items():
        if isinstance(entry, ShardedObject):
            continue  # TE's `_extra_state`, None here as in every checkpoint the trainer writes
        tensor = tensor_for(name)
        if isinstance(entry, ShardedTensorFactory):
            entry.data = tensor
        else:
            sharded[name] = dataclasses.replace(entry, data=tensor, dtype=tensor.dtype)
    dist_checkpointing.save({MODEL_KEY: sharded}, str(directory))


class CheckpointTensorReader:
    """Full, unsharded tensors of one checkpoint, read by state-dict name, unit by unit.

    dist_checkpointing reshards on load, so a checkpoint saved under any TP/PP/EP/CP layout
    reads the same. Each tensor comes in the dtype it was saved in.
    """

    def __init__(self, directory, meta_model):
        self.directory = str(directory)
        self._entries = meta_model.sharded_state_dict()
        self._stored = dist_checkpointing.load_tensors_metadata(self.directory)
        missing = [entry.key for name, entry in self._entries.items()
                   if not isinstance(entry, ShardedObject) and self._stored_entry(entry) is None]
        if missing:
            raise ConfigError("--checkpoint", self.directory,
                              f"lacks {len(missing)} tensors this model config has (first: "
                              f"{missing[0]!r}); is config.yaml the one it was trained with?")
        for entry in self._entries.values():
            if isinstance(entry, ShardedTensor):
                stored = self._stored[entry.key]
                if tuple(stored.global_shape) != tuple(entry.global_shape):
                    raise ConfigError("--checkpoint", self.directory,
                                      f"{entry.key!r} has shape {list(stored.global_shape)} there, "
                                      f"config.yaml implies {list(entry.global_shape)}")

    def _stored_entry(self, entry):
        if entry.key in self._stored:
            return self._stored[entry.key]
        # A factory (Mamba in_proj / conv) is stored as its split parts, `<key>.<part>`.
        return next((v for k, v in self._stored.items() if k.startswith(entry.key + ".")), None)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors of `names`, loaded in one dist_checkpointing call."""
        request = {}
        for name in names:
            entry = self._entries[name]
            dtype = self._stored_entry(entry).dtype
            shape = entry.local_shape if isinstance(entry, ShardedTensor) else entry.data.shape
            data = torch.empty(shape, dtype=dtype)
            if isinstance(entry, ShardedTensorFactory):
                request[name] = dataclasses.replace(entry, data=data)
            else:
                request[name] = dataclasses.replace(entry, data=data, dtype=dtype)
        # Whole tensors only: at world size 1 Megatron-Core's loader cannot read part of one
        # stored in several shards (an expert subset of a MoE layer), so a unit is one layer.
        return dist_checkpointing.load({MODEL_KEY: request}, self.directory)[MODEL_KEY]
