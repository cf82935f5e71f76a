r"""LLaDA-8B (Base and Instruct) in dllm_jax: its architecture, LLaDA's inference defaults,
FSDP + tensor parallelism over 8 devices, and supervised fine-tuning.

Convert the published weights once (tensor by tensor; peak host memory about twice the
largest tensor, the 1 GB embedding, far below one 16 GB model):

  python -m dllm_jax.convert.llada --hf_dir=/models/LLaDA-8B-Instruct --out=/ckpt/llada_8b_instruct

Chat or generate with LLaDA's defaults (gen_length 128, steps 128, block_length 32):

  python -m dllm_jax.chat --checkpoint=/ckpt/llada_8b_instruct
  python -m dllm_jax.generate --checkpoint=/ckpt/llada_8b_base --prompt="..." \
      --gen_length=128 --steps=128 --block_length=32

Fine-tune (':instruct', SFT on JSONL conversations: the prompt is never masked, the loss is on
the answer and its EOS padding, normalised by answer length) or continue pre-training
(':base', the masked-diffusion ELBO on text files):

  python -m dllm_jax.main --config=configs/llada_8b.py:instruct --workdir=/runs/sft \
      --config.train.init_from=/ckpt/llada_8b_instruct \
      --config.data.tokenizer=/ckpt/llada_8b_instruct/tokenizer/tokenizer.json \
      --config.data.files='/data/sft/*.jsonl'

Sharding: 8 devices form fsdp=4 x tensor=2 (embed over fsdp; heads, MLP and vocab over
tensor); other counts take fsdp=-1. bfloat16 compute, float32 master weights and AdamW
state, full rematerialisation per layer, 4 microbatches.
"""

from dllm_jax.config import base_config


def get_config(variant: str = 'base'):
  c = base_config()
  c.model.update(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                 mlp_dim=12288, max_seq_len=4096, rope_theta=500000.0, norm_eps=1e-5,
                 param_dtype='float32', dtype='bfloat16', remat_policy='full')
  # Tokens are masked with probability 1 - alpha(t) = (1 - 2 eps) t + eps, in [eps, 1 - eps];
  # LLaDA's p_mask = (1 - eps) t + eps reaches 1 at t = 1. With eps = 1e-3 both start at 1e-3
  # and differ by at most 1e-3.
  c.diffusion.update(schedule='linear', eps=1e-3)
  c.data.update(seq_len=4096, tokenizer='', files='')
  c.mesh.update(data=1, fsdp=-1, tensor=2)
  c.train.update(batch_size=32, microbatches=4, num_steps=10_000, learning_rate=4e-4,
                 warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1, log_every=10,
                 eval_every=500, eval_batches=4, checkpoint_every=500, keep_checkpoints=2)
  c.sampling.update(num_samples=2, sampler='low_confidence', steps=128, gen_length=128,
                    block_length=32, temperature=0.0)
  c.eval.update(discrete_steps=0)
  if variant == 'instruct':
    c.train.update(objective='sft', learning_rate=2.5e-5, warmup_steps=50, num_steps=3000)
    c.data.update(source='chat_jsonl', validation_fraction=0.01)
  elif variant != 'base':
    raise ValueError(f"unknown variant {variant!r} of llada_8b.py: use 'base' or 'instruct'.")
  return c
