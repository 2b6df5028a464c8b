"""`python -m data_prep`: raw text to a Megatron-Core indexed dataset (.bin/.idx)."""
