"""Data: tokenizers, corpus preparation into Megatron-Core indexed datasets, and the
Megatron-Core datasets and sampler that feed the trainer.

- config.py: DataConfig (one blend, or curriculum phases of DataPhaseConfig), TokenizerConfig
- tokenizer.py: build_tokenizer (builtin BPE, tokenizer.json, tiktoken, sentencepiece)
- stdlib_corpus.py: the embedded corpus, the interpreter's standard-library sources
- sources.py: input readers (JSONL, Parquet, text, Hugging Face datasets directories)
- preparation.py: documents -> .bin/.idx with Megatron-Core's IndexedDatasetBuilder
- indexed_files.py: checking and atomically publishing .bin/.idx pairs
- datasets.py: build_datasets (Megatron-Core's builder) and build_data_iterator
- curriculum.py: build_train_data, the trainer's entry: phases of blends, resumable
- sampler.py: the pretraining sample order across data-parallel ranks
- cache.py: the cache directory, file locks, atomic writes
- optional_packages.py: import checks for pyarrow, datasets, tiktoken, sentencepiece
"""
