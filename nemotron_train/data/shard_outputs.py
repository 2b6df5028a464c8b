"""What to do with finished shards: merge them into one dataset, or blend them for training.

`merge_shards` concatenates the shards in order with Megatron-Core's
IndexedDatasetBuilder.add_index into PREFIX.{bin,idx}: byte for byte what one unsharded run
writes. Its memory grows with the document count (Megatron-Core keeps every sequence length
in a Python list), so for corpora of billions of documents `write_blend` is the way: a
data-config YAML (the `data` group of the recipes) weighting each shard by its share of the
tokens, so that training draws from the shards in the merged dataset's proportions without
a merge.
"""

import logging
import os
import time
from dataclasses import dataclass

from megatron.core.datasets.indexed_dataset import get_bin_path, get_idx_path
from omegaconf import OmegaConf

from nemotron_train.data.cache import write_bytes_atomically
from nemotron_train.data.indexed_files import atomic_indexed_dataset_builder, check_indexed_dataset
from nemotron_train.data.shard_plan import load_shard_plan
from nemotron_train.data.shards import finished_shard_manifests, shard_prefix

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MergeSummary:
    """What a merge wrote."""

    output_prefix: str
    shards: int
    documents: int
    tokens: int
    bytes_written: int
    """Size of the merged .bin and .idx together."""
    seconds: float

    def describe(self) -> str:
        """A one-line human summary."""
        rate = self.bytes_written / self.seconds / 1e6 if self.seconds > 0 else float("inf")
        return (
            f"merged {self.shards} shards: {self.documents:,} documents, {self.tokens:,} tokens "
            f"into {self.output_prefix}.{{bin,idx}} in {self.seconds:.1f} s ({rate:,.0f} MB/s)"
        )


def merge_shards(output_prefix: str) -> MergeSummary:
    """Merge every finished shard of the preparation into `output_prefix`.bin/.idx.

    Raises ValueError naming the shards that are not finished (nothing is written then).
    """
    start = time.perf_counter()
    output_prefix = os.path.abspath(output_prefix)
    plan = load_shard_plan(output_prefix)
    manifests = finished_shard_manifests(plan, output_prefix)
    prefixes = [shard_prefix(output_prefix, index, plan.num_shards) for index in range(plan.num_shards)]
    dtype = check_indexed_dataset(prefixes[0]).dtype
    with atomic_indexed_dataset_builder(output_prefix, dtype) as builder:
        for index, prefix in enumerate(prefixes):
            builder.add_index(prefix)
            logger.info("merged shard %d/%d", index + 1, plan.num_shards)
    written = os.path.getsize(get_bin_path(output_prefix)) + os.path.getsize(
        get_idx_path(output_prefix)
    )
    return MergeSummary(
        output_prefix=output_prefix,
        shards=plan.num_shards,
        documents=sum(manifest["documents"] for manifest in manifests),
        tokens=sum(manifest["tokens"] for manifest in manifests),
        bytes_written=written,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True, kw_only=True)
class BlendSummary:
    """What a blend file holds."""

    path: str
    shards: int
    """Shards in the blend (shards without a document are left out)."""
    tokens: int

    def describe(self) -> str:
        """A one-line human summary."""
        return f"wrote {self.path}: {self.shards} shards, {self.tokens:,} tokens, weighted by tokens"


def write_blend(output_prefix: str, blend_path: str) -> BlendSummary:
    """Write a data-config YAML that blends the finished shards, weighted by their tokens.

    Train on it with `train.py --config-dir DIR data=NAME` when it is DIR/data/NAME.yaml.
    Raises ValueError naming the shards that are not finished.
    """
    output_prefix = os.path.abspath(output_prefix)
    plan = load_shard_plan(output_prefix)
    manifests = finished_shard_manifests(plan, output_prefix)
    tokens = sum(manifest["tokens"] for manifest in manifests)
    # An empty shard would make GPTDataset search forever for samples.
    blend = [
        [manifest["tokens"] / tokens, shard_prefix(output_prefix, index, plan.num_shards)]
        for index, manifest in enumerate(manifests)
        if manifest["documents"] > 0
    ]
    if not blend:
        raise ValueError(f"the shards of {output_prefix} hold no document: nothing to blend")
    tokenizer = {
        key: value
        for key, value in manifests[0]["tokenizer"]["config"].items()
        if value is not None
    }
    header = (
        f"# The {len(blend)} shards of {output_prefix} ({tokens:,} tokens), each weighted by\n"
        "# its share of the tokens: training samples them in the proportions of the merged\n"
        "# dataset. Written by `python -m data_prep blend`; a `data` group config\n"
        "# (train.py --config-dir DIR data=NAME for DIR/data/NAME.yaml).\n"
    )
    body = OmegaConf.to_yaml({"corpus": "prefixes", "blend": blend, "tokenizer": tokenizer})
    write_bytes_atomically(os.path.abspath(blend_path), (header + body).encode())
    return BlendSummary(path=os.path.abspath(blend_path), shards=len(blend), tokens=tokens)
