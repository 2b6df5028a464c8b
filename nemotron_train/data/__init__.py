"""Data: tokenizers, corpus preparation into Megatron-Core indexed datasets, and the
Megatron-Core datasets and sampler that feed the trainer.

- config.py: DataConfig (one blend, or curriculum phases of DataPhaseConfig), TokenizerConfig
- tokenizer.py: build_tokenizer (builtin BPE, tokenizer.json, tiktoken, sentencepiece)
- stdlib_corpus.py: the embedded corpus, the interpreter's standard-library sources
- inputs.py: command-line inputs (paths, directories, globs, @lists) -> sources, a key each
- compressed_streams.py: gzip/zstd files read as streams, corrupt data named by offset
- sources.py: input readers (JSONL and byte ranges of it, Parquet, text, datasets directories)
- preparation.py: documents -> .bin/.idx with Megatron-Core's IndexedDatasetBuilder
- indexed_files.py: writing, checking and atomically publishing .bin/.idx pairs
- shard_plan.py: which files and byte ranges each shard of a sharded preparation reads
- shards.py: preparing one shard resumably (manifests), progress and status of all shards
- shard_outputs.py: merging finished shards (add_index) or blending them by token count
- datasets.py: build_datasets (Megatron-Core's builder) and build_data_iterator
- curriculum.py: build_train_data, the trainer's entry: phases of blends, resumable
- sampler.py: the pretraining sample order across data-parallel ranks
- cache.py: the cache directory, file locks, atomic writes
- optional_packages.py: import checks for pyarrow, datasets, tiktoken, sentencepiece
"""
