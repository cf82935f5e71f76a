"""The HTTP server: `python -m dllm_jax.serve` (see dllm_jax/serve.py)."""
