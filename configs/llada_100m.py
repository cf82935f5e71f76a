r"""A ~110M-parameter LLaDA-architecture diffusion LM at 1024 tokens in bfloat16: the
accelerator-sized config, used for the MFU figure in BENCHMARKS.md.

  python -m dllm_jax.main --config=configs/llada_100m.py --workdir=/tmp/llada_100m

On NVIDIA GPUs add --config.model.attention_impl=cudnn for cuDNN flash attention. The
throughput benchmark on the same config:

  python -m dllm_jax.benchmarks.train_speed --config=configs/llada_100m.py --steps=20

Parameters are kept in float32 (AdamW states too); matmuls run in bfloat16 with float32
accumulation for the logits and the loss. The corpus is the default (Python standard library
bytes); point config.data at any text for real runs. Variants: 'bytes' (the default) and
'fsdp', which shards parameters over all devices instead of replicating them.
"""

from dllm_jax.config import base_config


def get_config(variant: str = 'bytes'):
  c = base_config()
  c.model.update(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, mlp_dim=3072,
                 param_dtype='float32', dtype='bfloat16', remat_policy='none')
  c.data.seq_len = 1024
  c.train.update(batch_size=32, num_steps=20_000, learning_rate=6e-4, warmup_steps=1000,
                 min_lr_ratio=0.1, weight_decay=0.1, log_every=50, eval_every=1000,
                 eval_batches=16, checkpoint_every=1000)
  if variant == 'fsdp':
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  elif variant != 'bytes':
    raise ValueError(f"unknown variant {variant!r} of llada_100m.py: use 'bytes' or 'fsdp'.")
  return c
