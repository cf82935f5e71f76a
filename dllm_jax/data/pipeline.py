"""The grain input pipeline: documents -> tokens -> packed fixed-length rows -> batches.

A split's documents are tokenized once, in order, with EOS after each, and the token stream
is cached on disk next to the prepared dataset; it is the same whatever the number of
processes. The stream is cut into rows of `seq_len` tokens; training shuffles the rows
globally with a seed (anew each epoch) and batches them. A file yields many consecutive
rows, so shuffling rows rather than files keeps each batch a mix of many files.

Batches are global: batch b holds the same rows on 1 or N processes, and each process reads
only its `rows` of it (the rows its devices hold, see sharding.process_rows), so a run's
training order and validation set do not depend on how many hosts it runs on.

Batches are {'tokens': int32 [b, L], 'valid': bool [b, L]}; `valid` is False only on
padding (the pad id, in the last evaluation row), which must never count. The training
iterator's state is a batch index, so a restored run sees exactly the batches it would have.
"""

import itertools
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


def token_stream(records, tokenizer, cache_dir: str, *, text_key: str = 'text') -> np.ndarray:
  """Every document of the split in order, tokenized and joined with EOS after each; cached
  on disk, so later calls (and other processes sharing the disk) only memory-map it."""
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
  path = os.path.join(cache_dir, f'{tokenizer.fingerprint}-{text_key}.{np.dtype(dtype).name}')
  if not os.path.exists(path):
    if not len(records):
      raise DataError(f'the split cached in {cache_dir} has no documents; add text or lower '
                      'data.validation_fraction.')
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
      for i in range(len(records)):
        ids = tokenizer.encode(records[i][text_key])
        np.append(ids, tokenizer.eos_id).astype(dtype).tofile(f)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated cache behind
  return np.memmap(path, dtype=dtype, mode='r')


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _global_batches(num_records: int, batch_size: int, seed: int, rows,
                    read) -> grain.MapDataset:
  """Endless batches of `batch_size` records, shuffled anew each epoch; of each, `read`
  renders only the records at positions `rows` (default: all).

  Record numbers, which cost nothing, are shuffled and batched globally before any record
  is read, so batch b is the same for every process count and each process reads only its
  share of it.
  """
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  order = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat(None)
  return order.batch(batch_size, drop_remainder=True).map(
      lambda i_B: _stack([read(int(i)) for i in i_B[rows]]))


def train_iterator(stream: np.ndarray, tokenizer, *, seq_len: int, batch_size: int,
                   seed: int, rows=None) -> grain.DatasetIterator:
  """Endless global batches of `batch_size` rows, shuffled anew each epoch; this process
  gets its `rows` of each (default: all)."""
  packed = TokenRows(stream, seq_len, tokenizer.pad_id, drop_remainder=True)
  if len(packed) < batch_size:
    raise DataError(f'the training split has {len(packed)} rows of {seq_len} tokens, fewer '
                    f'than one batch of {batch_size}; add text or lower data.seq_len.')
  return iter(_global_batches(len(packed), batch_size, seed, rows,
                              packed.__getitem__).to_iter_dataset())


def eval_batches(stream: np.ndarray, tokenizer, *, seq_len: int, batch_size: int,
                 num_batches: int, rows=None) -> list[dict]:
  """This process's `rows` (default: all) of the first `num_batches` global batches of the
  split, in order: the same every time and for any process count, so evaluations compare
  across steps and runs. Always exactly `num_batches` (a short split is padded with rows
  that count for nothing), so every process runs the same eval steps."""
  packed = TokenRows(stream, seq_len, tokenizer.pad_id, drop_remainder=False)
  empty = {'tokens': np.full(seq_len, tokenizer.pad_id, np.int32),
           'valid': np.zeros(seq_len, bool)}
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  row = lambda i: packed[i] if i < len(packed) else empty
  return [_stack([row(b * batch_size + int(r)) for r in rows]) for b in range(num_batches)]


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


def _sft_filler(tokenizer, seq_len: int, padding: bool) -> dict:
  """A row that counts for nothing: padding (no valid token) where rows may be padded, as in
  evaluation, else all prompt (no answer to learn), since training rows are never padded."""
  return {'tokens': np.full(seq_len, tokenizer.eos_id, np.int32),
          'valid': np.full(seq_len, not padding), 'prompt': np.ones(seq_len, bool)}


def sft_iterator(conversations, tokenizer, template, *, seq_len: int, batch_size: int,
                 seed: int, rows=None) -> grain.DatasetIterator:
  """Endless global batches of SFT rows, shuffled anew each epoch; this process gets its
  `rows` of each (default: all).

  Rows are rendered lazily, each process only its own; a conversation whose prompt alone
  fills `seq_len` becomes a row that counts for nothing (skipping it would make batches
  depend on what other processes render).
  """
  sample = conversations[:256]
  if not any(sft_row(m, tokenizer, template, seq_len) for m in sample):
    raise DataError(f'no conversation among the first {len(sample)} leaves room for an answer '
                    f'within data.seq_len={seq_len}.')
  empty = _sft_filler(tokenizer, seq_len, padding=False)
  read = lambda i: sft_row(conversations[i], tokenizer, template, seq_len) or empty
  return iter(_global_batches(len(conversations), batch_size, seed, rows,
                              read).to_iter_dataset())


def sft_eval_batches(conversations, tokenizer, template, *, seq_len: int, batch_size: int,
                     num_batches: int, rows=None) -> list[dict]:
  """This process's `rows` (default: all) of fixed global validation batches of SFT rows,
  skipping conversations with no room for an answer; short splits are padded with rows that
  count for nothing, so every process runs `num_batches` steps."""
  wanted = num_batches * batch_size
  fitting = (r for r in (sft_row(m, tokenizer, template, seq_len) for m in conversations)
             if r is not None)
  picked = list(itertools.islice(fitting, wanted))
  picked += [_sft_filler(tokenizer, seq_len, padding=True)] * (wanted - len(picked))
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  return [_stack([picked[b * batch_size + int(r)] for r in rows]) for b in range(num_batches)]
