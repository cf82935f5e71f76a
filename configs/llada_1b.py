r"""A ~1B-parameter LLaDA-architecture diffusion LM (1.03B without embeddings) in bfloat16:
the size at which sampling on an accelerator is measured against its compute roofline.

  python -m dllm_jax.benchmarks.sample_speed --config=configs/llada_1b.py

Same shape family as LLaDA-8B (multi-head attention, SwiGLU with mlp_dim = 2.75 d_model)
at d_model 2048 and 20 layers, on the default byte corpus; point config.data and
config.model.vocab_size at a real tokenizer for a real run. Training it needs an
accelerator: parameters and AdamW states in float32 are 12 GB before activations, hence
per-layer rematerialisation and parameters sharded over all devices (FSDP).

  python -m dllm_jax.main --config=configs/llada_1b.py --workdir=/tmp/llada_1b
"""

from dllm_jax.config import base_config


def get_config():
  c = base_config()
  c.model.update(d_model=2048, n_layers=20, n_heads=16, n_kv_heads=16, mlp_dim=5632,
                 max_seq_len=2048, param_dtype='float32', dtype='bfloat16', remat_policy='full')
  c.data.seq_len = 1024
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.update(batch_size=32, num_steps=20_000, learning_rate=3e-4, warmup_steps=1000,
                 min_lr_ratio=0.1, weight_decay=0.1, log_every=50, eval_every=1000,
                 eval_batches=16, checkpoint_every=1000)
  return c
