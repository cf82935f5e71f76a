"""Data: text sources (TFDS, array_record), tokenizers and the grain pipeline."""

from dllm_jax.data.chat import ChatTemplate, ChatTemplateError
from dllm_jax.data.pipeline import (eval_batches, sft_eval_batches, sft_iterator, sft_row,
                                    token_stream, train_iterator)
from dllm_jax.data.sources import DataError, Split, open_chat_records, open_sources
from dllm_jax.data.tokenizers import ByteTokenizer, HFTokenizer, make_tokenizer

__all__ = ['ByteTokenizer', 'ChatTemplate', 'ChatTemplateError', 'DataError', 'HFTokenizer',
           'Split', 'eval_batches', 'make_tokenizer', 'open_chat_records', 'open_sources',
           'sft_eval_batches', 'sft_iterator', 'sft_row', 'token_stream', 'train_iterator']
