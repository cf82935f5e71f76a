"""dllm_jax: masked diffusion language models in JAX and Flax NNX."""
