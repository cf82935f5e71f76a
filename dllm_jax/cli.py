"""What every command-line entry point shares."""

import logging as pylogging
import os

import jax
from absl import flags, logging

DEFAULT_COMPILATION_CACHE = os.path.join('~', '.cache', 'dllm_jax', 'jax_compilation_cache')


def quiet_library_logs() -> None:
  """Orbax, TFDS and grain log every save, load and read at INFO; keep only their warnings."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/grain/')
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or not any(n in r.pathname for n in noisy))


def define_compilation_cache_flag() -> None:
  flags.DEFINE_string('compilation_cache', DEFAULT_COMPILATION_CACHE,
                      'Where compiled programs are kept between runs (JAX\'s persistent '
                      'compilation cache), so that starting again compiles nothing; '
                      "'' turns it off.")


def use_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory` ('' leaves it off). Every
  program is kept, however quick to compile: a tool started again then compiles nothing."""
  if not directory:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
