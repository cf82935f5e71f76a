r"""A small LLaDA-architecture diffusion LM on bytes of the Python standard library.

The default run needs no download: its corpus is the source tree of the Python running it.

  python -m dllm_jax.main --config=configs/llada_small.py --workdir=/tmp/llada_small

Expected (2-core CPU at 0.5 TFLOP/s, see BENCHMARKS.md): about 11 minutes; validation NELBO
about 3.2-3.3 bits per byte at step 900, against 8 for a uniform model.

Variants, chosen after the colon:
  small  the default above.
  tiny   a seconds-long run for tests and smoke checks:
         python -m dllm_jax.main --config=configs/llada_small.py:tiny --workdir=/tmp/tiny
"""

from dllm_jax.config import base_config


def get_config(variant: str = 'small'):
  c = base_config()
  # Trained on 128-byte rows; RoPE lets it denoise longer canvases (a prompt + 128 bytes).
  c.model.update(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, mlp_dim=768, max_seq_len=512)
  c.data.seq_len = 128
  c.train.update(batch_size=32, num_steps=900, learning_rate=2e-3, warmup_steps=100,
                 log_every=25, eval_every=300, eval_batches=16, checkpoint_every=300)
  if variant == 'tiny':
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128,
                   vocab_multiple=8)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=20, learning_rate=3e-3, warmup_steps=2,
                   log_every=5, eval_every=10, eval_batches=2, checkpoint_every=10)
    c.sampling.update(num_samples=2, steps=8)
    c.eval.update(t_samples=2, discrete_steps=16)
  elif variant != 'small':
    raise ValueError(f"unknown variant {variant!r} of llada_small.py: use 'small' or 'tiny'.")
  return c
