"""Converters from other checkpoint formats (Hugging Face LLaDA) to dllm_jax checkpoints."""
