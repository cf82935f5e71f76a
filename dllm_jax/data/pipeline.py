"""The grain input pipeline: documents -> tokens -> packed fixed-length rows -> batches.

Each process tokenizes its own slice of the documents (`process_index::process_count`) once,
appending EOS to each, and caches the concatenated token stream on disk next to the prepared
dataset. The stream is cut into rows of `seq_len` tokens; training shuffles the rows
globally with a seed (anew each epoch) and batches them. A file yields many consecutive
rows, so shuffling rows rather than files keeps each batch a mix of many files.

Batches are {'tokens': int32 [b, L], 'valid': bool [b, L]}; `valid` is False only on
padding (the pad id, in the last evaluation row), which must never count. The training
iterator's state is a row index, so a restored run sees exactly the batches it would have.
"""

import os

import grain
import numpy as np

from dllm_jax.data.sources import DataError


class TokenRows:
  """Random access to rows of `seq_len` tokens of a token stream; the last row is padded."""

  def __init__(self, stream: np.ndarray, seq_len: int, pad_id: int, drop_remainder: bool):
    self._stream, self._seq_len, self._pad_id = stream, seq_len, pad_id
    full, rest = divmod(len(stream), seq_len)
    self._len = full + (bool(rest) and not drop_remainder)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict:
    tokens = np.asarray(self._stream[i * self._seq_len:(i + 1) * self._seq_len], np.int32)
    valid = np.ones(self._seq_len, bool)
    if len(tokens) < self._seq_len:
      valid[len(tokens):] = False
      tokens = np.pad(tokens, (0, self._seq_len - len(tokens)), constant_values=self._pad_id)
    return {'tokens': tokens, 'valid': valid}


def token_stream(records, tokenizer, cache_dir: str, *, text_key: str = 'text',
                 process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's documents, tokenized and joined with EOS after each; cached on disk."""
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
  path = os.path.join(cache_dir, f'{tokenizer.fingerprint}-{text_key}-{process_index}of'
                      f'{process_count}.{np.dtype(dtype).name}')
  if not os.path.exists(path):
    indices = range(process_index, len(records), process_count)
    if not indices:
      raise DataError(f'process {process_index} of {process_count} got no documents; the '
                      f'split has {len(records)}.')
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
      for i in indices:
        ids = tokenizer.encode(records[i][text_key])
        np.append(ids, tokenizer.eos_id).astype(dtype).tofile(f)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated cache behind
  return np.memmap(path, dtype=dtype, mode='r')


def train_iterator(stream: np.ndarray, tokenizer, *, seq_len: int, batch_size: int,
                   seed: int) -> grain.DatasetIterator:
  """An endless stream of batches of `batch_size` rows, shuffled anew each epoch."""
  rows = TokenRows(stream, seq_len, tokenizer.pad_id, drop_remainder=True)
  if len(rows) < batch_size:
    raise DataError(f'the training split has {len(rows)} rows of {seq_len} tokens, fewer than '
                    f'one batch of {batch_size}; add text or lower data.seq_len.')
  ds = grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
  return iter(ds.batch(batch_size, drop_remainder=True).to_iter_dataset())


def eval_batches(stream: np.ndarray, tokenizer, *, seq_len: int, batch_size: int,
                 num_batches: int) -> list[dict]:
  """The first `num_batches` batches of the split, in order: the same every time, so
  evaluations compare across steps and runs. Always exactly `num_batches` (a short split is
  padded with rows that count for nothing), so every process runs the same eval steps."""
  rows = TokenRows(stream, seq_len, tokenizer.pad_id, drop_remainder=False)
  empty = {'tokens': np.full(seq_len, tokenizer.pad_id, np.int32),
           'valid': np.zeros(seq_len, bool)}
  picked = [rows[i] if i < len(rows) else empty for i in range(num_batches * batch_size)]
  return [{k: np.stack([r[k] for r in picked[b * batch_size:(b + 1) * batch_size]])
           for k in ('tokens', 'valid')} for b in range(num_batches)]



def sft_row(messages: list[dict], tokenizer, template, seq_len: int) -> dict | None:
  """The prompt (all turns but the last, with the assistant header) then the answer and
  end-of-turn, padded with EOS to `seq_len`; None when the prompt leaves no room."""
  prompt = template.encode(tokenizer, messages[:-1], add_generation_prompt=True)
  answer = tokenizer.encode(messages[-1]['content'].strip())
  end_of_turn = tokenizer.stop_ids[1:]  # <|eot_id|> where the tokenizer has it
  answer = np.concatenate([answer, np.asarray(end_of_turn, np.int32)])
  if len(prompt) >= seq_len:
    return None
  tokens = np.full(seq_len, tokenizer.eos_id, np.int32)
  row = np.concatenate([prompt, answer])[:seq_len]
  tokens[:len(row)] = row
  return {'tokens': tokens, 'valid': np.ones(seq_len, bool),
          'prompt': np.arange(seq_len) < len(prompt)}


def sft_iterator(conversations, tokenizer, template, *, seq_len: int, batch_size: int,
                 seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.DatasetIterator:
  """Endless shuffled batches of SFT rows from this process's share of the conversations.

  Rows are rendered lazily; conversations whose prompt alone fills `seq_len` are skipped.
  """
  mine = grain.MapDataset.source(conversations)[process_index::process_count]
  sample = [mine[i] for i in range(min(len(mine), 256))]
  if not any(sft_row(m, tokenizer, template, seq_len) for m in sample):
    raise DataError(f'no conversation among the first {len(sample)} leaves room for an answer '
                    f'within data.seq_len={seq_len}.')
  render = lambda m: sft_row(m, tokenizer, template, seq_len)
  ds = mine.shuffle(seed=seed).repeat(None).map(render).to_iter_dataset()
  ds = ds.filter(lambda row: row is not None).batch(batch_size, drop_remainder=True)
  return iter(ds)


def sft_eval_batches(conversations, tokenizer, template, *, seq_len: int, batch_size: int,
                     num_batches: int, process_index: int = 0,
                     process_count: int = 1) -> list[dict]:
  """Fixed validation batches of SFT rows; short splits are padded with rows that count for
  nothing, so every process runs `num_batches` steps."""
  rows = [r for r in (sft_row(m, tokenizer, template, seq_len)
                      for m in conversations[process_index::process_count]) if r is not None]
  empty = {'tokens': np.full(seq_len, tokenizer.eos_id, np.int32),
           'valid': np.zeros(seq_len, bool), 'prompt': np.zeros(seq_len, bool)}
  rows = (rows + [empty] * (num_batches * batch_size))[:num_batches * batch_size]
  return [{k: np.stack([r[k] for r in rows[b * batch_size:(b + 1) * batch_size]])
           for k in empty} for b in range(num_batches)]
