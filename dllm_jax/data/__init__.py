"""Data: text sources (TFDS, array_record), tokenizers and the grain pipeline."""

from dllm_jax.data.pipeline import eval_batches, train_iterator
from dllm_jax.data.sources import DataError, open_sources
from dllm_jax.data.tokenizers import ByteTokenizer, HFTokenizer, make_tokenizer
