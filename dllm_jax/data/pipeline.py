"""The grain input pipeline: documents -> tokens -> packed fixed-length rows -> batches.

Each process reads its own slice of the documents (`process_index::process_count`). The
training stream shuffles documents with a seed (anew each epoch), appends EOS to each, packs
them end to end into rows of `seq_len` tokens, shuffles rows within a window and batches.
Batches are {'tokens': int32 [b, L], 'valid': bool [b, L]}; `valid` is False only on padding,
which takes the pad id and must never count. The iterator's state is checkpointable
(`get_state` / `set_state`, or orbax via grain.checkpoint), so a resumed run sees the same
batches it would have seen.
"""

import grain
import numpy as np

from dllm_jax.data.sources import DataError

ROW_SHUFFLE_WINDOW = 512


def _documents(source, tokenizer, text_key, process_index, process_count, shuffle_seed=None):
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:
    raise DataError(f'process {process_index} of {process_count} got no documents; the split '
                    f'has {len(source)} records.')
  if shuffle_seed is not None:
    ds = ds.shuffle(seed=shuffle_seed).repeat(None)

  def tokenize(record):
    ids = tokenizer.encode(record[text_key])
    return {'tokens': np.append(ids, np.int32(tokenizer.eos_id)).astype(np.int32)}

  return ds.map(tokenize).to_iter_dataset()


def _pack(docs, seq_len, pad_id):
  packed = grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={'tokens': seq_len})

  def finish(row):
    valid = row['tokens_segment_ids'] > 0
    return {'tokens': np.where(valid, row['tokens'], pad_id).astype(np.int32), 'valid': valid}

  return packed.map(finish)


class _JsonRestorable(grain.DatasetIterator):
  """Accepts iterator states that went through JSON, as orbax stores them.

  grain's concat-then-split packer compares its saved remainder slices with a tuple; JSON
  hands back lists, and the restored stream would silently skip rows. Turn them back.
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(_tuple_slices(state))


def _tuple_slices(state):
  if not isinstance(state, dict):
    return state
  return {k: ({f: tuple(v) for f, v in value.items()} if k == 'remainder_slices'
              else _tuple_slices(value)) for k, value in state.items()}


def train_iterator(source, tokenizer, *, seq_len: int, batch_size: int, seed: int,
                   text_key: str = 'text', process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
  """An endless, shuffled stream of this process's batches (`batch_size` rows each)."""
  docs = _documents(source, tokenizer, text_key, process_index, process_count, seed)
  rows = _pack(docs, seq_len, tokenizer.pad_id)
  rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=ROW_SHUFFLE_WINDOW,
                                                     seed=seed + 1)
  return _JsonRestorable(iter(rows.batch(batch_size, drop_remainder=True)))


def eval_batches(source, tokenizer, *, seq_len: int, batch_size: int, num_batches: int,
                 text_key: str = 'text', process_index: int = 0,
                 process_count: int = 1) -> list[dict]:
  """The first `num_batches` batches of the split, in order: the same every time, so
  evaluations compare across steps and runs. Always exactly `num_batches` (a short split is
  padded with rows that count for nothing), so every process runs the same eval steps."""
  docs = _documents(source, tokenizer, text_key, process_index, process_count)
  rows = _pack(docs, seq_len, tokenizer.pad_id).batch(batch_size, drop_remainder=False)
  batches = []
  for batch in rows:
    short = batch_size - batch['tokens'].shape[0]
    if short:  # the last batch: pad with rows that count for nothing
      batch = {'tokens': np.pad(batch['tokens'], ((0, short), (0, 0)),
                                constant_values=tokenizer.pad_id),
               'valid': np.pad(batch['valid'], ((0, short), (0, 0)))}
    batches.append(batch)
    if len(batches) == num_batches:
      break
  empty = {'tokens': np.full((batch_size, seq_len), tokenizer.pad_id, np.int32),
           'valid': np.zeros((batch_size, seq_len), bool)}
  return batches + [empty] * (num_batches - len(batches))
