"""Data: text sources (TFDS, array_record), tokenizers and the grain pipeline."""

from dllm_jax.data.pipeline import eval_batches, token_stream, train_iterator
from dllm_jax.data.sources import DataError, Split, open_sources
from dllm_jax.data.tokenizers import ByteTokenizer, HFTokenizer, make_tokenizer

__all__ = ['ByteTokenizer', 'DataError', 'HFTokenizer', 'Split', 'eval_batches',
           'make_tokenizer', 'open_sources', 'token_stream', 'train_iterator']
