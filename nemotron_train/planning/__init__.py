"""The dry run: parameters, training FLOPs, memory and communication of a recipe under its
parallel layout, the layout checks, and the report (`train.py ... dry_run=true`)."""
