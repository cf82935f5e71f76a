"""Tokenizers: raw bytes by default, or a Hugging Face `tokenizer.json` by path.

Every tokenizer exposes the same small surface: `encode`, `decode`, `vocab_size` (all ids,
special ones included), the special ids `pad_id`, `bos_id`, `eos_id`, `mask_id`, and a
`fingerprint` that names its token ids in caches, and `stop_ids`, the ids that end a
generation. The mask id never occurs in encoded text, so the model can be forbidden to
predict it.
"""

import hashlib
import os

import numpy as np

# LLaDA's special-token names; a tokenizer.json without one of them gets a fresh id for it.
HF_SPECIAL_TOKENS = {
    'pad': '<|endoftext|>',
    'bos': '<|startoftext|>',
    'eos': '<|endoftext|>',
    'mask': '<|mdm_mask|>',
}
END_OF_TURN = '<|eot_id|>'  # also ends a generation, where the tokenizer has it


class ByteTokenizer:
  """UTF-8 bytes 0..255, then pad, bos, eos and mask."""

  pad_id, bos_id, eos_id, mask_id = 256, 257, 258, 259
  vocab_size = 260
  fingerprint = 'bytes'
  stop_ids = (eos_id,)

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    return bytes(int(i) for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')


class HFTokenizer:
  """A `tokenizers` tokenizer.json; special tokens are looked up by name, never hardcoded."""

  def __init__(self, path: str, special_tokens: dict[str, str] = HF_SPECIAL_TOKENS):
    import tokenizers  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise FileNotFoundError(f'config.data.tokenizer: no tokenizer file at {path!r}; give a '
                              "path to a Hugging Face tokenizer.json or 'bytes'.")
    self._tok = tokenizers.Tokenizer.from_file(path)
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read() + repr(sorted(special_tokens.items())).encode())
    self.fingerprint = f'hf-{digest.hexdigest()[:16]}'
    base = self._tok.get_vocab_size(with_added_tokens=True)
    extra = {}
    for role, name in special_tokens.items():
      token_id = self._tok.token_to_id(name)
      if token_id is None:  # not in this tokenizer: give it an id past the vocabulary
        token_id = extra.setdefault(name, base + len(extra))
      setattr(self, f'{role}_id', token_id)
    self.vocab_size = base + len(extra)
    self._special_ids = {self.pad_id, self.bos_id, self.eos_id, self.mask_id}
    end_of_turn = self._tok.token_to_id(END_OF_TURN)
    self.stop_ids = (self.eos_id,) + (() if end_of_turn is None else (end_of_turn,))

  def token_id(self, name: str) -> int | None:
    return self._tok.token_to_id(name)

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):
      text = text.decode('utf-8', errors='replace')
    ids = np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)
    # Text that spells out the mask token must not smuggle a mask into the data.
    if np.any(ids == self.mask_id):
      ids = ids[ids != self.mask_id]
    return ids

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)
           if int(i) not in self._special_ids and i < self._tok.get_vocab_size(True)]
    return self._tok.decode(ids)


def make_tokenizer(spec: str):
  """'bytes' or a path to a tokenizer.json."""
  return ByteTokenizer() if spec == 'bytes' else HFTokenizer(spec)
