"""Hugging Face NemotronH <-> Megatron-Core checkpoints, and logits to compare them.

One job per module: `hf_config` (config.json <-> our model section), `tensor_mapping`
(tensor names and layouts), `safetensors_io` (memory-mapped reader, bounded-shard writer),
`checkpoint_tensors` (dist_checkpointing in and out, streamed), `checkpoint_source` (a
checkpoint path -> its iteration and run config), `import_hf`, `export_hf`, `logits`,
`compare`, and `cli` (`python -m nemotron_train.convert ...`). This package sits above
training/: training never imports it; the entry layer resolves `checkpoint.load=hf:DIR`.
"""
