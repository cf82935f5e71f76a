"""Tasks `reverse_translation` and `reverse_completion`: is a diffusion LM better than an AR
LM at answering in the direction its training text never went?

reverse_translation: a random bijection between two invented vocabularies (lowercase
consonant-vowel words -> capitalised words from other letters). The training text writes
every pair as `src = tgt` and never `tgt ... src`. Both models, trained alike, are asked
forward (given src, produce tgt: recall of what they read) and reverse (given tgt, produce
src: never written). The dLLM answers by filling masks in the training format
(`src = ____`, `____ = tgt`); the AR model continues a prompt (`src = `, `tgt = `). The dLLM
is also asked with the AR's reverse prompt (`tgt = ____`), so that the comparison of
formats is on the table too.

reverse_completion: consecutive lines (n, n+1) of real text: given line n produce line n+1,
and given line n+1 produce line n; scored by exact match and character similarity. The
dLLM is told the answer's length by its mask count; the AR model stops at the newline.

Every query is preceded by a few other lines of the same text as context, as in training.
"""

import difflib
import os
import random

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import generate
from dllm_jax import sampling

CONTEXT_LINES = 3
SOURCE_LETTERS = ('bdfgklmnprstvz', 'aeiou')
TARGET_LETTERS = ('BCDGHJKLMNPQRSTWXZ', 'AEIOUY')


def _word(rng: random.Random, letters: tuple[str, str], length: int) -> str:
  consonants, vowels = letters
  return ''.join(rng.choice(vowels if i % 2 else consonants) for i in range(length))


def make_dictionary(size: int, seed: int = 0, word_length: int = 5) -> list[tuple[str, str]]:
  """`size` (source, target) pairs: distinct words on each side, so a bijection."""
  rng = random.Random(seed)
  sources, targets = set(), set()
  while len(sources) < size:
    sources.add(_word(rng, SOURCE_LETTERS, word_length))
  while len(targets) < size:
    targets.add(_word(rng, TARGET_LETTERS, word_length).capitalize())
  return list(zip(sorted(sources), rng.sample(sorted(targets), size)))


def training_text(pairs: list[tuple[str, str]], repeats: int, seed: int = 0) -> str:
  """Every pair once in order, then `repeats` shuffled passes; always `src = tgt`."""
  rng = random.Random(seed)
  lines = [f'{s} = {t}' for s, t in pairs]
  for _ in range(repeats):
    lines += rng.sample(lines[:len(pairs)], len(pairs))
  return '\n'.join(lines) + '\n'


def reverse_prompts(pairs) -> list[str]:
  """What the reverse queries put in front of the answer; never in the training text."""
  return [f'{t} = ' for _, t in pairs]


def dllm_fill(model: generate.Model, before: list[str], lengths: list[int],
              after: list[str]) -> list[str]:
  """Fills `length` masked tokens between each `before` and `after` (greedy, one token per
  step, lowest confidence last); rows are left-padded to a common width."""
  tok = model.tokenizer
  rows = [np.concatenate([tok.encode(b), np.full(n, tok.mask_id), tok.encode(a)]).astype(np.int32)
          for b, n, a in zip(before, lengths, after)]
  width = max(len(r) for r in rows)
  canvas = np.full((len(rows), width), tok.pad_id, np.int32)
  valid = np.zeros_like(canvas, bool)
  for i, r in enumerate(rows):
    canvas[i, width - len(r):], valid[i, width - len(r):] = r, True
  cfg = sampling.SamplerConfig(mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                               eos_id=tok.eos_id, steps=max(lengths), block_length=0)
  out = sampling.sample(model.logits_fn, model.params, jnp.asarray(canvas), jax.random.key(0),
                        cfg, 0, jnp.asarray(valid))
  filled = np.asarray(out.tokens)
  answers = []
  for i, (b, n) in enumerate(zip(before, lengths)):
    start = width - len(rows[i]) + len(tok.encode(b))
    answers.append(tok.decode(filled[i, start:start + n]))
  return answers


def ar_continue(model: generate.Model, prompts: list[str], max_length: int) -> list[str]:
  """Greedy continuations, cut at the first newline."""
  out = generate.generate(model, prompts, gen_length=max_length + 1)
  return [c.text.split('\n')[0] for c in out]


def _context(lines: list[str], rng: random.Random, exclude: str) -> str:
  others = [line for line in rng.sample(lines, CONTEXT_LINES + 1) if line != exclude]
  return ''.join(f'{line}\n' for line in others[:CONTEXT_LINES])


def translation_queries(pairs, seed: int = 1) -> dict[str, list]:
  rng = random.Random(seed)
  lines = [f'{s} = {t}' for s, t in pairs]
  contexts = [_context(lines, rng, line) for line in lines]
  return {'pairs': pairs, 'contexts': contexts}


def evaluate_translation(models: dict[str, generate.Model], pairs) -> list[dict]:
  q = translation_queries(pairs)
  ctx, src = q['contexts'], [s for s, _ in pairs]
  tgt = [t for _, t in pairs]
  rows = []
  if 'dllm' in models:
    m = models['dllm']
    asks = {
        'forward (src = ____)': (dllm_fill(m, [c + f'{s} = ' for c, s in zip(ctx, src)],
                                           [len(t) for t in tgt], ['\n'] * len(pairs)), tgt),
        'reverse (____ = tgt)': (dllm_fill(m, ctx, [len(s) for s in src],
                                           [f' = {t}\n' for t in tgt]), src),
        'reverse, AR prompt (tgt = ____)': (dllm_fill(
            m, [c + f'{t} = ' for c, t in zip(ctx, tgt)], [len(s) for s in src],
            ['\n'] * len(pairs)), src),
    }
    rows += [_score('dllm', how, got, want) for how, (got, want) in asks.items()]
  if 'ar' in models:
    m = models['ar']
    longest = max(len(w) for w in src + tgt)
    rows.append(_score('ar', 'forward (src = )', ar_continue(
        m, [c + f'{s} = ' for c, s in zip(ctx, src)], longest), tgt))
    rows.append(_score('ar', 'reverse (tgt = )', ar_continue(
        m, [c + f'{t} = ' for c, t in zip(ctx, tgt)], longest), src))
  return rows


def line_pairs(text: str, count: int, seed: int = 0, min_len: int = 8,
               max_len: int = 48) -> list[tuple[str, str, str]]:
  """(context, line n, line n+1) for `count` consecutive pairs of mid-length lines."""
  lines = text.splitlines()
  ok = lambda line: min_len <= len(line.strip()) and len(line) <= max_len
  candidates = [i for i in range(CONTEXT_LINES, len(lines) - 1)
                if ok(lines[i]) and ok(lines[i + 1])]
  rng = random.Random(seed)
  picked = rng.sample(candidates, min(count, len(candidates)))
  return [(''.join(f'{line}\n' for line in lines[i - CONTEXT_LINES:i])[-200:], lines[i],
           lines[i + 1]) for i in sorted(picked)]


def evaluate_completion(models: dict[str, generate.Model], triples) -> list[dict]:
  ctx = [c for c, _, _ in triples]
  first, second = [a for _, a, _ in triples], [b for _, _, b in triples]
  rows = []
  if 'dllm' in models:
    m = models['dllm']
    rows.append(_score('dllm', 'forward (line n -> n+1)', dllm_fill(
        m, [c + f'{a}\n' for c, a in zip(ctx, first)], [len(b.encode()) for b in second],
        ['\n'] * len(triples)), second))
    rows.append(_score('dllm', 'reverse (line n+1 -> n)', dllm_fill(
        m, ctx, [len(a.encode()) for a in first], [f'\n{b}\n' for b in second]), first))
  if 'ar' in models:
    m = models['ar']
    longest = max(len(x.encode()) for x in first + second)
    rows.append(_score('ar', 'forward (line n -> n+1)', ar_continue(
        m, [c + f'{a}\n' for c, a in zip(ctx, first)], longest), second))
    rows.append(_score('ar', 'reverse (line n+1 -> n)', ar_continue(
        m, [c + f'{b}\n' for c, b in zip(ctx, second)], longest), first))
  return rows


def _score(kind: str, how: str, got: list[str], want: list[str]) -> dict:
  exact = float(np.mean([g == w for g, w in zip(got, want)]))
  similarity = float(np.mean([difflib.SequenceMatcher(None, g, w).ratio()
                              for g, w in zip(got, want)]))
  return {'model': kind, 'query': how, 'n': len(want), 'exact_match': exact,
          'char_similarity': similarity, 'examples': [[w, g] for w, g in zip(want[:3], got[:3])]}


def write_corpus(directory: str, text: str) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, 'train.txt')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path


def plot_accuracy(rows: list[dict]):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, ax = plt.subplots(figsize=(7, 3.5))
  labels = [f'{r["model"]}: {r["query"]}' for r in rows]
  ax.barh(labels, [r['exact_match'] for r in rows], color=[
      'tab:blue' if r['model'] == 'dllm' else 'tab:orange' for r in rows])
  ax.set(xlim=(0, 1), xlabel='exact match')
  ax.invert_yaxis()
  ax.grid(True, axis='x', alpha=0.3)
  return figure
