r"""BD3-LM's variance reduction measured: the spread of the training loss under clipped
masking-rate ranges [beta, omega], on a trained block diffusion checkpoint.

  python experiments/block_diffusion/loss_variance.py --workdir=RUN --out=DIR

For each range, the loss of one batch of validation rows is drawn with `--draws` keys (the
time, and so the masks, of every block differ between draws; the rows do not), giving its
mean and standard deviation in bits per token. (0, 1) is the NELBO itself; a clipped range
estimates another objective (its mean differs), which BD3-LM trains on because its
gradient is less noisy. Writes DIR/loss_variance.{json,md}.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dllm_jax import data as data_lib
from dllm_jax import diffusion
from dllm_jax import generate
from dllm_jax.config import base_config

flags.DEFINE_string('workdir', None, 'A block diffusion training run.')
flags.DEFINE_string('out', 'experiments/block_diffusion/results', 'Output directory.')
flags.DEFINE_integer('rows', 32, 'Validation rows in the batch.')
flags.DEFINE_integer('draws', 128, 'Loss draws per range.')
flags.DEFINE_list('ranges', ['0:1', '0.1:0.9', '0.2:0.8', '0.3:0.8', '0.5:1', '0.3:0.5'],
                  'beta:omega ranges of t.')


def validation_rows(workdir: str, rows: int) -> np.ndarray:
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    saved = json.load(f)
  data = base_config().data
  data.update({k: v for k, v in saved['data'].items() if k in data})
  records = data_lib.open_sources(data)['eval'].records
  text = ''.join(records[i]['text'].decode('utf-8') for i in range(len(records)))
  ids = np.asarray(data_lib.make_tokenizer(data.tokenizer).encode(text), np.int32)
  length = data.seq_len
  starts = np.linspace(0, len(ids) - length, rows).astype(int)
  return np.stack([ids[s:s + length] for s in starts])


def main(argv):
  del argv
  f = flags.FLAGS
  model = generate.load(workdir=f.workdir)
  if not model.block_size:
    raise SystemExit('error: --workdir is not a block diffusion run (diffusion.block_size).')
  tokens = jnp.asarray(validation_rows(f.workdir, f.rows))
  batch = {'tokens': tokens, 'valid': jnp.ones_like(tokens, bool)}
  results = []
  for spec in f.ranges:
    t_range = tuple(float(x) for x in spec.split(':'))
    loss_fn = diffusion.make_loss_fn(model.logits_fn, model.diffusion_schedule,
                                     model.tokenizer.mask_id, model.tokenizer.vocab_size,
                                     block_size=model.block_size, t_range=t_range)
    draw = jax.jit(lambda key, loss_fn=loss_fn: loss_fn(model.params, batch, key)[0])
    bits = np.array([float(draw(jax.random.key(i))) for i in range(f.draws)]) / np.log(2)
    results.append({'t_range': list(t_range), 'mean_bits': float(bits.mean()),
                    'std_bits': float(bits.std(ddof=1)), 'draws': f.draws})
    print(results[-1], flush=True)
  os.makedirs(f.out, exist_ok=True)
  summary = {'workdir': f.workdir, 'block_size': model.block_size, 'step': model.step,
             'rows': f.rows, 'seq_len': int(tokens.shape[1]), 'ranges': results}
  with open(os.path.join(f.out, 'loss_variance.json'), 'w', encoding='utf-8') as fh:
    json.dump(summary, fh, indent=2)
  full = results[0]['std_bits']
  lines = ['| t range | mean (bits/token) | std (bits/token) | variance vs (0, 1) |',
           '|---|---|---|---|']
  lines += [f"| [{r['t_range'][0]}, {r['t_range'][1]}] | {r['mean_bits']:.3f} | "
            f"{r['std_bits']:.4f} | {(r['std_bits'] / full) ** 2:.2f}x |" for r in results]
  with open(os.path.join(f.out, 'loss_variance.md'), 'w', encoding='utf-8') as fh:
    fh.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
