"""Tokenizers, the text_files TFDS builder, and the grain pipeline."""

import glob
import json
import os

import ml_collections
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from dllm_jax import data
from dllm_jax.config import base_config
from dllm_jax.data import sources


def data_config(corpus_dir, tfds_dir, **overrides) -> ml_collections.ConfigDict:
  config = base_config().data
  config.update(files=corpus_dir, data_dir=tfds_dir, **overrides)
  return config


@pytest.fixture(scope='module')
def splits(corpus_dir, tfds_dir):
  return data.open_sources(data_config(corpus_dir, tfds_dir))


def test_byte_tokenizer_round_trip_and_specials():
  tok = data.ByteTokenizer()
  text = 'def f(x):\n    return "héllo ✓"\n'
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 256
  assert tok.decode(ids) == text
  specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id}
  assert len(specials) == 4 and min(specials) >= 256 and max(specials) < tok.vocab_size
  assert tok.decode(np.append(ids, [tok.eos_id, tok.mask_id])) == text


def _write_tokenizer(path, specials):
  vocab = {name: i for i, name in enumerate(specials + ['[UNK]', 'def', 'return', 'x', '(', ')'])}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  tok.save(str(path))
  return vocab


def test_hf_tokenizer_reads_special_ids_by_name(tmp_path):
  names = ['<|startoftext|>', '<|endoftext|>', '<|mdm_mask|>']
  vocab = _write_tokenizer(tmp_path / 'tokenizer.json', names)
  tok = data.HFTokenizer(str(tmp_path / 'tokenizer.json'))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (
      vocab['<|startoftext|>'], vocab['<|endoftext|>'], vocab['<|endoftext|>'],
      vocab['<|mdm_mask|>'])
  assert tok.vocab_size == len(vocab)
  ids = tok.encode('def x ( ) <|mdm_mask|> return')
  assert tok.mask_id not in ids.tolist()  # text cannot smuggle in a mask
  assert tok.decode(ids) == 'def x ( ) return'


def test_hf_tokenizer_without_a_mask_token_gets_a_fresh_id(tmp_path):
  vocab = _write_tokenizer(tmp_path / 'tokenizer.json', ['<|endoftext|>'])
  tok = data.make_tokenizer(str(tmp_path / 'tokenizer.json'))
  assert tok.eos_id == tok.pad_id == vocab['<|endoftext|>']
  assert {tok.mask_id, tok.bos_id} == {len(vocab), len(vocab) + 1}
  assert tok.vocab_size == len(vocab) + 2


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.data.tokenizer'):
    data.make_tokenizer(str(tmp_path / 'nope.json'))


def test_text_files_splits_every_file_into_train_head_and_validation_tail(splits, corpus_dir):
  files = sorted(glob.glob(os.path.join(corpus_dir, '*')))
  train = {r['path'].decode(): r['text'].decode() for r in splits['train'].records}
  valid = {r['path'].decode(): r['text'].decode() for r in splits['eval'].records}
  assert set(train) == set(files) == set(valid)
  for path in files:
    with open(path, encoding='utf-8') as f:
      assert train[path] + valid[path] == f.read()
    assert 0 < len(valid[path]) < len(train[path])


def test_default_corpus_is_the_standard_library_without_site_packages():
  files = sources.resolve_files('')
  assert len(files) > 100 and any(f.endswith(os.path.join('json', 'decoder.py')) for f in files)
  assert not any('site-packages' in f for f in files)


def test_no_matching_files_is_a_clear_error(tmp_path, tfds_dir):
  with pytest.raises(data.DataError, match='config.data.files'):
    data.open_sources(data_config(str(tmp_path / '*.nothing'), tfds_dir))


def test_named_tfds_dataset_offline_says_so(monkeypatch, tfds_dir):
  monkeypatch.setattr(sources, '_online', lambda *a, **k: False)
  config = data_config('', tfds_dir, source='tfds', tfds_name='tiny_shakespeare')
  with pytest.raises(data.DataError, match='offline.*text_files'):
    data.open_sources(config)
  with pytest.raises(data.DataError, match='no dataset'):
    data.open_sources(data_config('', tfds_dir, source='tfds', tfds_name='not_a_dataset_xyz'))


def stream(split, tok=data.ByteTokenizer(), **kw):
  return data.token_stream(split.records, tok, split.cache_dir, **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_token_stream_joins_documents_with_eos_and_is_cached(splits):
  tok = data.ByteTokenizer()
  tokens = stream(splits['eval'])
  expected = np.concatenate([np.append(tok.encode(r['text']), tok.eos_id)
                             for r in splits['eval'].records])
  np.testing.assert_array_equal(tokens, expected)
  cached = [f for f in os.listdir(splits['eval'].cache_dir) if f.startswith('bytes-text.')]
  assert len(cached) == 1 and tokens.dtype == np.uint16
  np.testing.assert_array_equal(stream(splits['eval']), expected)  # read back from the cache


def test_training_stream_is_deterministic_given_the_seed(splits):
  tok = data.ByteTokenizer()
  make = lambda seed: data.train_iterator(stream(splits['train']), tok, seq_len=64,
                                          batch_size=4, seed=seed)
  a, b, c = _take(make(0), 5), _take(make(0), 5), _take(make(1), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['tokens'], y['tokens'])
  assert any(not np.array_equal(x['tokens'], z['tokens']) for x, z in zip(a, c))
  assert a[0]['tokens'].shape == (4, 64) and a[0]['tokens'].dtype == np.int32
  assert all(x['valid'].all() for x in a)  # packed rows carry no padding


def test_rows_are_shuffled_across_the_whole_split(splits):
  """One batch mixes rows from all over the stream, not from a few neighbouring files."""
  tokens = np.asarray(stream(splits['train']))
  rows = tokens[:len(tokens) // 64 * 64].reshape(-1, 64)
  batch = next(data.train_iterator(stream(splits['train']), data.ByteTokenizer(), seq_len=64,
                                   batch_size=16, seed=0))['tokens']
  where = sorted(int(np.flatnonzero((rows == r).all(axis=1))[0]) for r in batch)
  assert where[-1] - where[0] > len(rows) // 2


def test_iterator_state_resumes_the_stream_after_a_json_round_trip(splits):
  tok = data.ByteTokenizer()
  make = lambda: data.train_iterator(stream(splits['train']), tok, seq_len=64, batch_size=4,
                                     seed=0)
  it = make()
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # as orbax stores it
  expected = _take(it, 3)
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['tokens'], want['tokens'])


def test_eval_batches_count_every_token_once_and_no_padding(splits):
  tok = data.ByteTokenizer()
  expected = sum(len(tok.encode(r['text'])) + 1 for r in splits['eval'].records)  # + EOS each
  batches = data.eval_batches(stream(splits['eval']), tok, seq_len=64, batch_size=4,
                              num_batches=1000)
  assert len(batches) == 1000
  assert sum(int(b['valid'].sum()) for b in batches) == expected
  for b in batches:
    assert np.all(b['tokens'][~b['valid']] == tok.pad_id)


def test_processes_read_their_rows_of_the_same_global_batches(splits):
  """Two processes holding rows [0, 4) and [4, 8) together see the one-process batches, in
  training and evaluation, and resume each from its own state."""
  tok = data.ByteTokenizer()
  halves = [np.arange(4), np.arange(4, 8)]
  settings = dict(seq_len=64, batch_size=8)
  whole = _take(data.train_iterator(stream(splits['train']), tok, seed=0, **settings), 6)
  parts = [data.train_iterator(stream(splits['train']), tok, seed=0, rows=r, **settings)
           for r in halves]
  for want in whole[:3]:
    got = [next(it) for it in parts]
    np.testing.assert_array_equal(np.concatenate([g['tokens'] for g in got]), want['tokens'])
  resumed = data.train_iterator(stream(splits['train']), tok, seed=0, rows=halves[1],
                                **settings)
  resumed.set_state(json.loads(json.dumps(parts[1].get_state())))
  for want in whole[3:]:
    np.testing.assert_array_equal(next(resumed)['tokens'], want['tokens'][4:])

  evals = [data.eval_batches(stream(splits['eval']), tok, num_batches=3, rows=r, **settings)
           for r in [None, *halves]]
  for want, first, second in zip(*evals):
    for k in ('tokens', 'valid'):
      np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), want[k])


def test_a_split_smaller_than_one_batch_is_a_clear_error(splits):
  with pytest.raises(data.DataError, match='fewer than one batch'):
    data.train_iterator(stream(splits['eval'])[:100], data.ByteTokenizer(), seq_len=64,
                        batch_size=4, seed=0)


class _LinesTemplate:
  """A chat template of 'role: content' lines: SFT rows without a tokenizer directory."""

  def encode(self, tokenizer, messages, add_generation_prompt=True):
    text = ''.join(f"{m['role']}: {m['content']}\n" for m in messages)
    return tokenizer.encode(text + ('assistant: ' if add_generation_prompt else ''))


def test_sft_batches_are_global_and_split_over_processes_by_rows():
  tok, template = data.ByteTokenizer(), _LinesTemplate()
  # Every fifth prompt alone fills the 24-token row.
  conversations = [[{'role': 'user', 'content': 'q' * (40 if i % 5 == 0 else 4)},
                    {'role': 'assistant', 'content': str(i)}] for i in range(30)]
  settings = dict(seq_len=24, batch_size=4)
  halves = [np.arange(2), np.arange(2, 4)]
  whole = _take(data.sft_iterator(conversations, tok, template, seed=0, **settings), 10)
  parts = [data.sft_iterator(conversations, tok, template, seed=0, rows=r, **settings)
           for r in halves]
  for want in whole:
    got = [next(it) for it in parts]
    for k in ('tokens', 'valid', 'prompt'):
      np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k])
  # A prompt with no room for an answer is a row that counts for nothing (all prompt, no
  # padding: training rows are never padded), not a skipped one.
  answers = np.concatenate([(b['valid'] & ~b['prompt']).any(axis=1) for b in whole])
  assert 0 < (~answers).sum() < len(answers) // 2
  assert all(b['valid'].all() for b in whole)

  evals = [data.sft_eval_batches(conversations, tok, template, num_batches=3, rows=r,
                                 **settings) for r in [None, *halves]]
  for want, first, second in zip(*evals):
    assert want['valid'].all()  # the 24 conversations that fit fill all 12 rows
    for k in ('tokens', 'valid', 'prompt'):
      np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), want[k])
