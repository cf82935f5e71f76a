"""Random-access text sources, prepared as TFDS array_record datasets (no TensorFlow needed).

`text_files` is a TFDS builder over local text files: a glob, a directory, or by default the
Python standard library's own source tree, which exists on every machine, so the default run
needs no download. Each file becomes one training record (its first 1 - f of lines) and one
validation record (the rest), so any corpus, one file or thousands, has both splits.

Named TFDS datasets (`tiny_shakespeare`, `lm1b`, ...) are prepared when the machine is
online; offline, `open_sources` says so in one line and how to use `text_files` instead.

`chat_jsonl` (for supervised fine-tuning) reads conversations from local JSONL files, one per
line: {"messages": [{"role": ..., "content": ...}, ...]} ending with the assistant's answer,
or {"prompt": ..., "response": ...}.
"""

import glob
import hashlib
import json
import os
import socket
import sysconfig
from typing import Any, NamedTuple

import tensorflow_datasets as tfds

DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'dllm_jax', 'tensorflow_datasets')


class DataError(ValueError):
  """A data source that cannot be opened; the message says what to do."""


class Split(NamedTuple):
  records: Any  # random-access records with a text field
  cache_dir: str  # where token streams of this split are cached


def stdlib_files() -> list[str]:
  """The .py files of the running Python's standard library (site-packages excluded)."""
  root = sysconfig.get_paths()['stdlib']
  return sorted(f for f in glob.glob(os.path.join(root, '**', '*.py'), recursive=True)
                if 'site-packages' not in os.path.relpath(f, root).split(os.sep))


def resolve_files(spec: str) -> list[str]:
  """'' -> the standard library; a directory -> every file under it; else a glob."""
  if not spec:
    files = stdlib_files()
  elif os.path.isdir(spec):
    files = sorted(f for f in glob.glob(os.path.join(spec, '**', '*'), recursive=True)
                   if os.path.isfile(f))
  else:
    files = sorted(f for f in glob.glob(os.path.expanduser(spec), recursive=True)
                   if os.path.isfile(f))
  if not files:
    raise DataError(f'config.data.files: {spec!r} matches no files; give a glob, a directory '
                    "or '' for the Python standard library.")
  return files


def split_text(text: str, validation_fraction: float) -> tuple[str, str]:
  """(train, validation): the file cut at the line boundary nearest 1 - fraction."""
  lines = text.splitlines(keepends=True)
  cut = len(lines) - round(len(lines) * validation_fraction)
  if len(lines) > 1:
    cut = min(max(cut, 1), len(lines) - 1)
  return ''.join(lines[:cut]), ''.join(lines[cut:])


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Local text files as TFDS 'train' / 'validation' splits of {'text', 'path'} records."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, files: list[str], validation_fraction: float, **kwargs):
    self._files = files
    self._validation_fraction = validation_fraction
    # The config name fingerprints the corpus, so a changed corpus is prepared anew.
    digest = hashlib.sha256(repr(validation_fraction).encode())
    for f in files:
      stat = os.stat(f)
      digest.update(f'{os.path.abspath(f)}\0{stat.st_size}\0{stat.st_mtime_ns}\0'.encode())
    config = tfds.core.BuilderConfig(name=f'files_{digest.hexdigest()[:16]}',
                                     description=f'{len(files)} local text files')
    super().__init__(config=config, **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='Local text files, each split into a train head and a validation tail.',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text(),
                                             'path': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {'train': self._generate_examples(0), 'validation': self._generate_examples(1)}

  def _generate_examples(self, part):
    for path in self._files:
      with open(path, encoding='utf-8', errors='replace') as f:
        text = split_text(f.read(), self._validation_fraction)[part]
      if text:
        yield path, {'text': text, 'path': path}


def _online(hosts=('storage.googleapis.com', 'www.tensorflow.org'), timeout=3.0) -> bool:
  for host in hosts:
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
      return True
    except OSError:
      pass
  return False


def _prepare(make_builder, is_coordinator: bool, barrier):
  """Prepares on process 0 first, then elsewhere (a no-op on a shared filesystem)."""
  if is_coordinator:
    builder = make_builder()
    if not builder.is_prepared():
      builder.download_and_prepare()
  barrier()
  builder = make_builder()  # anew: a builder made before preparation does not see it
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder


def open_sources(data_config, is_coordinator: bool = True, barrier=lambda: None) -> dict:
  """{'train': Split, 'eval': Split}, preparing the dataset first if needed."""
  data_dir = os.path.expanduser(data_config.data_dir or DEFAULT_DATA_DIR)
  if data_config.source == 'text_files':
    files = resolve_files(data_config.files)
    make_builder = lambda: TextFiles(files=files,
                                     validation_fraction=data_config.validation_fraction,
                                     data_dir=data_dir, file_format='array_record')
    splits = {'train': 'train', 'eval': 'validation'}
  else:
    name = data_config.tfds_name
    make_builder = lambda: tfds.builder(name, data_dir=data_dir, file_format='array_record')
    try:
      prepared = make_builder().is_prepared()
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataError(f'config.data.tfds_name: TFDS has no dataset {name!r}.') from e
    if not prepared and not _online():
      raise DataError(
          f'TFDS dataset {name!r} is not prepared in {data_dir} and this machine is offline; '
          "prepare it on a machine with internet, or set config.data.source='text_files' and "
          'config.data.files to a glob of local text files.')
    splits = {'train': data_config.train_split, 'eval': data_config.eval_split}
  builder = _prepare(make_builder, is_coordinator, barrier)
  sources = {}
  for role, split in splits.items():
    if split not in builder.info.splits:
      raise DataError(f'config.data.{role}_split: {builder.name} has no split {split!r}; it '
                      f'has {sorted(builder.info.splits)}.')
    sources[role] = Split(builder.as_data_source(split=split),
                          os.path.join(builder.data_dir, 'token_cache', split))
  return sources


def _conversation(record, where: str) -> list[dict]:
  if isinstance(record, dict) and 'messages' in record:
    messages = record['messages']
  elif isinstance(record, dict) and 'prompt' in record and 'response' in record:
    messages = [{'role': 'user', 'content': record['prompt']},
                {'role': 'assistant', 'content': record['response']}]
  else:
    raise DataError(f'{where}: expected {{"messages": [...]}} or {{"prompt", "response"}}.')
  if (not isinstance(messages, list) or len(messages) < 2
      or not all(isinstance(m, dict) and {'role', 'content'} <= set(m) for m in messages)
      or messages[-1]['role'] != 'assistant'):
    raise DataError(f'{where}: a conversation needs role/content messages ending with the '
                    'assistant\'s answer.')
  return messages


def open_chat_records(data_config) -> dict[str, list[list[dict]]]:
  """{'train': conversations, 'eval': conversations} from `data.files` (JSONL)."""
  conversations = []
  for path in resolve_files(data_config.files):
    with open(path, encoding='utf-8') as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        where = f'{path}:{number}'
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f'{where}: not JSON ({e.msg}).') from e
        conversations.append(_conversation(record, where))
  every = max(2, round(1 / data_config.validation_fraction))
  splits = {'train': [c for i, c in enumerate(conversations) if i % every],
            'eval': [c for i, c in enumerate(conversations) if not i % every]}
  if not splits['train'] or not splits['eval']:
    raise DataError(f'config.data.files: {len(conversations)} conversations are too few for a '
                    'train and a validation split.')
  return splits
