"""Exporting the generation model (SmolLM2-135M-Instruct): a decoder graph built from the GGUF, parity, configs."""
