"""What every command-line entry point shares."""

import logging as pylogging

from absl import logging


def quiet_library_logs() -> None:
  """Orbax, TFDS and grain log every save, load and read at INFO; keep only their warnings."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/grain/')
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= pylogging.WARNING or not any(n in r.pathname for n in noisy))
