"""Task `frontier`: speed against quality for parallel decoding, and the AR twin beside it.

Both models continue the same prompts, windows of validation text, for `gen_length` tokens.
Every setting is timed end to end through `generate.generate_ids` (after a compiling
warm-up call, batches of `batch` rows) and its samples are scored the way the literature
scores them, so that speed is never bought silently:

- `gen_ppl`: the generative perplexity of the continuations under the AR twin, given their
  prompts (MDLM / ReMDM score samples with a larger AR model; here the twin is the best AR
  model there is), with `entropy`, the mean unigram entropy of a continuation in nats, which
  falls when a sampler repeats itself;
- `agreement`: the fraction of generated tokens equal to the exact greedy sampler's
  (`low_confidence`, one token per step, no cache);
- `reference_match` and `exact_continuations`: the fraction of generated tokens, and of
  whole continuations, equal to the validation text that followed the prompt.

`nfe_per_token` is the model calls per generated token (the AR model: 1), averaged over
rows; `batch_nfe_per_token` the calls the batches made (each as many as its slowest row)
per token of a row: what the wall clock pays; `ms_per_call` the time of one batch call.
`project` turns measured NFE per token into tokens/s on an accelerator from a roofline
model of each call.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import data as data_lib
from dllm_jax import diffusion
from dllm_jax import generate

GREEDY = dict(sampler='low_confidence', temperature=0.0)
COLUMNS = ['model', 'setting', 'cache', 'batch', 'tokens_per_sec', 'nfe_per_token',
           'batch_nfe_per_token', 'ms_per_call', 'gen_ppl', 'entropy', 'agreement',
           'reference_match', 'exact_continuations']


def dllm_settings(gen_length: int, block_length: int,
                  exact_cache: bool = False) -> list[tuple[str, dict]]:
  """The dLLM grid: fixed steps {L, L/2, L/4}, thresholds, factors, entropy bounds (greedy,
  one step budget of L), L steps and thresholds 0.9 and 0.7 at temperature 1, each also
  with the block cache (unless `exact_cache`: a block diffusion model, whose blocks always
  run on their exact cache); and threshold 1, which commits one token a step exactly as the
  fixed sampler does, to price the adaptive rule."""
  fixed = [(f'{gen_length // d} steps', dict(GREEDY, steps=gen_length // d)) for d in (1, 2, 4)]
  budget = dict(temperature=0.0, steps=gen_length)
  adaptive = ([(f'threshold {t}', dict(budget, sampler='threshold', threshold=t))
               for t in (0.95, 0.9, 0.8, 0.7)]
              + [(f'factor {f}', dict(budget, sampler='factor', factor=f)) for f in (1.0, 2.0)]
              + [(f'entropy_bound {g}', dict(budget, sampler='entropy_bound', entropy_bound=g))
                 for g in (0.1, 0.5)])
  # At temperature 1 too, beside the AR twin's: greedy decoding of a weak model repeats.
  sampled = [(f'{label}, T=1', dict(s, temperature=1.0))
             for label, s in fixed[:1] + adaptive[1:4:2]]
  grid = [(label, dict(s, block_length=block_length)) for label, s in fixed + adaptive + sampled]
  if not exact_cache:
    grid += [(f'{label} + cache', dict(s, block_cache=True)) for label, s in grid]
  grid.append(('threshold 1.0 (= 1 token/step)',
               dict(budget, sampler='threshold', threshold=1.0, block_length=block_length)))
  return grid


AR_SETTINGS = [('greedy', dict(temperature=0.0)), ('temperature 1', dict(temperature=1.0)),
               ('top-p 0.9', dict(temperature=1.0, top_p=0.9))]


def prompts_from_text(tokenizer, text: str, count: int, prompt_len: int,
                      gen_length: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` evenly spaced windows of the text: prompts [N, prompt_len] and the reference
  continuations [N, gen_length]."""
  ids = np.asarray(tokenizer.encode(text), np.int32)
  window = prompt_len + gen_length
  if len(ids) < window * count:
    raise data_lib.DataError(f'the validation text has {len(ids)} tokens; {count} prompts of '
                     f'{prompt_len} + {gen_length} need {window * count}.')
  starts = np.linspace(0, len(ids) - window, count).astype(int)
  rows = np.stack([ids[s:s + window] for s in starts])
  return rows[:, :prompt_len], rows[:, prompt_len:]


def _ar_nll_fn(ar: generate.Model):
  def nlls(params, prompts_NxP, generated_NxG):
    """[N] summed -log p(continuation | BOS, prompt) under the AR model, in nats."""
    sequence = jnp.concatenate([prompts_NxP, generated_NxG], axis=1)
    bos = jnp.full((sequence.shape[0], 1), ar.tokenizer.bos_id, sequence.dtype)
    logits = ar.logits_fn(params, jnp.concatenate([bos, sequence[:, :-1]], axis=1))
    ce = diffusion.cross_entropy(logits, sequence, ar.tokenizer.mask_id, ar.tokenizer.vocab_size)
    return jnp.sum(ce[:, prompts_NxP.shape[1]:], axis=1)
  return jax.jit(nlls)


def unigram_entropy(tokens_G: np.ndarray) -> float:
  """The entropy, in nats, of the tokens' empirical distribution."""
  _, counts = np.unique(tokens_G, return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def run_setting(model: generate.Model, prompts: np.ndarray, gen_length: int, batch: int,
                settings: dict, repeats: int = 1) -> tuple[np.ndarray, np.ndarray, float, int]:
  """(generated [N, G], NFE [N], seconds for all N, batch calls' summed max NFE), the
  prompts in batches of `batch` rows; the first batch runs once before the clock starts
  (compilation), and the time is the median of `repeats` passes."""
  batches = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
  run = lambda rows: generate.generate_ids(model, list(rows), gen_length=gen_length, **settings)
  run(batches[0])
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    outs = [run(rows) for rows in batches]
    times.append(time.perf_counter() - start)
  generated = np.stack([c.tokens for out in outs for c in out])
  nfe = np.asarray([c.nfe for out in outs for c in out])
  calls = sum(max(c.nfe for c in out) for out in outs)
  return generated, nfe, statistics.median(times), calls


def run(models: dict[str, generate.Model], text: str, *, prompts: int, prompt_len: int,
        gen_length: int, block_length: int, batch_sizes, repeats: int = 1,
        settings: list[tuple[str, dict]] | None = None) -> tuple[dict, list[dict]]:
  dllm, ar = models['dllm'], models['ar']
  prompt_ids, reference = prompts_from_text(dllm.tokenizer, text, prompts, prompt_len,
                                            gen_length)
  nll_fn = _ar_nll_fn(ar)
  block_length = dllm.block_size or block_length  # a block diffusion model's own blocks
  exact, *_ = run_setting(dllm, prompt_ids, gen_length, max(batch_sizes),
                          dict(GREEDY, steps=gen_length, block_length=block_length))
  grid = [('ar', label, s) for label, s in AR_SETTINGS]
  grid += [('dllm', label, s) for label, s in (settings or dllm_settings(
      gen_length, block_length, exact_cache=bool(dllm.block_size)))]
  rows = []
  for batch in batch_sizes:
    for kind, label, setting in grid:
      generated, nfe, seconds, calls = run_setting(models[kind], prompt_ids, gen_length, batch,
                                                   setting, repeats)
      with ar.placed():
        nll = np.asarray(nll_fn(ar.params, jnp.asarray(prompt_ids), jnp.asarray(generated)))
      tokens = generated.size
      cache = ('exact' if kind == 'dllm' and dllm.block_size else
               'dual' if setting.get('block_cache') else 'none')
      rows.append({
          'model': kind, 'setting': label, 'batch': batch, 'cache': cache, **setting,
          'tokens_per_sec': tokens / seconds,
          'nfe_per_token': float(nfe.sum() / tokens),
          'batch_nfe_per_token': calls * batch / tokens,
          'ms_per_call': 1e3 * seconds / calls,
          'gen_ppl': float(np.exp(nll.sum() / tokens)),
          'entropy': float(np.mean([unigram_entropy(g) for g in generated])),
          'agreement': float(np.mean(generated == exact)),
          'reference_match': float(np.mean(generated == reference)),
          'exact_continuations': float(np.mean(np.all(generated == reference, axis=1))),
      })
  result = {'task': 'frontier', 'prompts': prompts, 'prompt_len': prompt_len,
            'gen_length': gen_length, 'block_length': block_length,
            'block_diffusion': bool(dllm.block_size),
            'batch_sizes': list(batch_sizes), 'repeats': repeats,
            'params_millions': {k: m.config.num_params() / 1e6 for k, m in models.items()},
            'reference_gen_ppl': _reference_ppl(nll_fn, ar, prompt_ids, reference)}
  result['projection'] = projections(result, rows)
  return result, rows


def _reference_ppl(nll_fn, ar, prompt_ids, reference) -> float:
  """The AR twin's perplexity on the real continuations: what good text scores."""
  with ar.placed():
    nll = np.asarray(nll_fn(ar.params, jnp.asarray(prompt_ids), jnp.asarray(reference)))
  return float(np.exp(nll.sum() / reference.size))


def plot(rows: list[dict]):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  batches = sorted({r['batch'] for r in rows})
  figure, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
  styles = {('ar', 'none'): ('tab:red', 's'), ('dllm', 'none'): ('tab:blue', 'o'),
            ('dllm', 'dual'): ('tab:green', '^'), ('dllm', 'exact'): ('tab:purple', 'D')}
  names = {'none': '', 'dual': ' + block cache', 'exact': ' (block diffusion, exact cache)'}
  for ax, batch in zip(axes[0], batches):
    for r in (r for r in rows if r['batch'] == batch):
      color, marker = styles[(r['model'], r['cache'])]
      ax.scatter(r['tokens_per_sec'], r['gen_ppl'], color=color, marker=marker)
      ax.annotate(f"{r['setting']} ({r['nfe_per_token']:.2f})", (r['tokens_per_sec'],
                                                                   r['gen_ppl']),
                  fontsize=6, xytext=(3, 3), textcoords='offset points')
    for (kind, cache), (color, marker) in styles.items():
      if any(r['model'] == kind and r['cache'] == cache for r in rows):
        ax.scatter([], [], color=color, marker=marker, label=kind + names[cache])
    ax.set(xscale='log', yscale='log', xlabel='tokens / s',
           ylabel='generative perplexity (AR twin)',
           title=f'batch {batch} (NFE per token in brackets)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  return figure


# ---- on paper: the accelerator side

# name: (HBM bytes/s, dense bf16 FLOP/s), from the vendors' data sheets (SXM parts).
ACCELERATORS = {'H100': (3.35e12, 989e12), 'H200': (4.8e12, 989e12)}
LLADA_8B_PARAMS = 8.0e9  # weights read per call (bf16), embedding table included


def call_seconds(params: float, tokens: int, device: str, bytes_per_param: int = 2) -> float:
  """Roofline time of one model call over `tokens` positions in all: the larger of reading
  every weight once (memory-bound) and 2 FLOPs per weight per position (compute-bound).
  Attention, cache reads and kernel efficiency are left out, for both models alike: a
  bound on speed, not a forecast."""
  bandwidth, flops = ACCELERATORS[device]
  return max(params * bytes_per_param / bandwidth, 2 * params * tokens / flops)


def project(nfe_per_token: float, *, batch: int, block: int, prompt_len: int, gen_length: int,
            device: str, params: float = LLADA_8B_PARAMS, exact_cache: bool = False) -> dict:
  """Projected tokens/s of AR decoding (a prefill, then one position per row a call) and of
  the dLLM's block-cached decoding (each block's first call runs the whole canvas, its
  others the block's positions; with `exact_cache`, block diffusion: the first call runs
  the previous block and this one, the others this one), from a measured NFE per token."""
  ar = (call_seconds(params, batch * prompt_len, device)
        + (gen_length - 1) * call_seconds(params, batch, device))
  blocks = gen_length // block
  cached_calls = max(nfe_per_token * gen_length - blocks, 0.0)
  first = 2 * block if exact_cache else prompt_len + gen_length
  dllm = (blocks * call_seconds(params, batch * first, device)
          + cached_calls * call_seconds(params, batch * block, device))
  return {'device': device, 'batch': batch, 'gen_length': gen_length,
          'ar_tokens_per_sec': batch * gen_length / ar,
          'dllm_tokens_per_sec': batch * gen_length / dllm}


def crossover_batch(nfe_per_token: float, *, block: int, prompt_len: int, gen_length: int,
                    device: str, params: float = LLADA_8B_PARAMS, exact_cache: bool = False,
                    batches=tuple(2**i for i in range(11))) -> int | None:
  """The largest of `batches` at which the dLLM projects at least as fast as AR (None: at
  none); past it, its block of positions per row turns its calls compute-bound first."""
  faster = [b for b in batches if (lambda p: p['dllm_tokens_per_sec'] >= p['ar_tokens_per_sec'])(
      project(nfe_per_token, batch=b, block=block, prompt_len=prompt_len,
              gen_length=gen_length, device=device, params=params, exact_cache=exact_cache))]
  return max(faster, default=None)


def projections(result: dict, rows: list[dict]) -> list[dict]:
  """For LLaDA-8B on each accelerator, at batch 1 and 16 and lengths 128..1024: projected
  tokens/s from the fewest NFE per token of a block-cached setting measured within 5% of
  the exact sampler's perplexity at batch 1 (or 1, one token per call, if none is)."""
  exact = next(r for r in rows if r['batch'] == min(result['batch_sizes'])
               and r['setting'] == f"{result['gen_length']} steps")
  close = [r['nfe_per_token'] for r in rows if r['batch'] == exact['batch']
           and r['cache'] != 'none' and r['gen_ppl'] <= 1.05 * exact['gen_ppl']]
  nfe = min(close, default=1.0)
  out = []
  for device in ACCELERATORS:
    for length in (128, 256, 512, 1024):
      geometry = dict(block=result['block_length'], prompt_len=result['prompt_len'],
                      gen_length=length, device=device,
                      exact_cache=result.get('block_diffusion', False))
      for batch in (1, 16):
        out.append({**project(nfe, batch=batch, **geometry), 'nfe_per_token': nfe,
                    'crossover_batch': crossover_batch(nfe, **geometry)})
  return out


def notes(result: dict, rows: list[dict]) -> str:
  """What the table says, for each batch size: the exact sampler, the cheapest setting
  within 5% of its generative perplexity, whether the dLLM reaches the AR twin's greedy
  speed at no worse perplexity, and what the adaptive rule costs per call."""
  lines = [f"AR twin's perplexity on the reference continuations: "
           f"{result['reference_gen_ppl']:.3f}."]
  exact_label = f"{result['gen_length']} steps"
  for batch in result['batch_sizes']:
    at = {(r['model'], r['setting']): r for r in rows if r['batch'] == batch}
    exact, ar = at[('dllm', exact_label)], at[('ar', 'greedy')]
    close = [r for (kind, _), r in at.items()
             if kind == 'dllm' and r['gen_ppl'] <= 1.05 * exact['gen_ppl']]
    cheapest = min(close, key=lambda r: r['nfe_per_token'])
    reach = [r for (kind, _), r in at.items() if kind == 'dllm' and r['cache'] != 'none'
             and r['gen_ppl'] <= ar['gen_ppl']]
    fastest = max(reach, key=lambda r: r['tokens_per_sec'], default=None)
    one_per_step = at[('dllm', 'threshold 1.0 (= 1 token/step)')]
    lines.append(
        f"Batch {batch}: exact sampler ({exact_label}) {exact['tokens_per_sec']:.0f} tokens/s, "
        f"gen. perplexity {exact['gen_ppl']:.3f}; fewest calls within 5% of it: "
        f"{cheapest['setting']} at {cheapest['nfe_per_token']:.3f} NFE/token "
        f"({cheapest['nfe_per_token']:.0%} of the exact sampler's calls), "
        f"{cheapest['tokens_per_sec']:.0f} tokens/s, perplexity {cheapest['gen_ppl']:.3f}. "
        f"AR greedy: {ar['tokens_per_sec']:.0f} tokens/s, perplexity {ar['gen_ppl']:.3f}, "
        f"entropy {ar['entropy']:.2f}; "
        + (f"fastest cached dLLM at no worse perplexity: {fastest['setting']}, "
           f"{fastest['tokens_per_sec'] / ar['tokens_per_sec']:.2f}x the AR speed "
           f"(entropy {fastest['entropy']:.2f})"
           if fastest else 'no cached dLLM setting reaches its perplexity')
        + f". Adaptive rule per call (threshold 1 vs {exact_label}, same calls and tokens): "
        f"{one_per_step['ms_per_call'] / exact['ms_per_call']:.3f}x.")
  lines.append('Projected for LLaDA-8B (bf16 roofline, `frontier.project`; NFE per token as '
               'measured here): ' + '; '.join(
                   f"{p['device']} batch {p['batch']} length {p['gen_length']}: AR "
                   f"{p['ar_tokens_per_sec']:.0f}, dLLM {p['dllm_tokens_per_sec']:.0f} tokens/s "
                   f"(dLLM ahead up to batch {p['crossover_batch']})"
                   for p in result['projection'] if p['gen_length'] in (128, 1024)) + '.')
  return '\n\n'.join(lines)
