"""Ending every process of a multi-host job when one of them fails.

Collectives know nothing of a failed peer: when one process stops with an error, the others
wait in their next collective until a timeout, seconds to minutes later, with a message
that does not say what went wrong. So a failing process writes its one-line error into the
job's key-value store (jax.distributed's coordination service), and every process runs a
watchdog thread that, on seeing it, prints the error and exits at once, even while its
main thread is blocked in a collective.
"""

import atexit
import os
import sys
import threading
import time

from absl import logging
from jax._src import distributed  # the coordination client, which no public API exposes

_ERROR_KEY = 'dllm_jax/error'
_SEEN_KEY = 'dllm_jax/error_seen/'  # + process index: that process has read the error
_POLL_MS = 1000
_SEEN_TIMEOUT_S = 30  # how long a failing process waits for the others to read its error
_failing = threading.Event()  # this process's main thread is ending with its own error


def _client():
  return distributed.global_state.client


def running() -> bool:
  """Whether this is one process of several, connected by jax.distributed."""
  # From the client's state, not jax.process_count(): it may be asked after the backend
  # itself failed to start.
  return _client() is not None and (distributed.global_state.num_processes or 1) > 1


def _exit(message: str):
  """Prints `error: message` as main.py does and ends the process now: no atexit handler
  may wait on the others, who are gone or going."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _watch(client, stop: threading.Event):
  while not stop.is_set():
    try:
      message = client.blocking_key_value_get(_ERROR_KEY, _POLL_MS)
    except Exception:  # pylint: disable=broad-except  # not there yet, or shutting down
      stop.wait(0.05)  # never spin on a client that fails at once
      continue
    client.key_value_set(f'{_SEEN_KEY}{distributed.global_state.process_id}', '1',
                         allow_overwrite=True)
    if not _failing.is_set():  # else this process's own error path ends it
      _exit(message)
    return


def start_watchdog() -> None:
  """On a multi-process job, a daemon thread that ends this process as soon as another
  one reports an error (see `fail`). It is stopped at a normal exit, before JAX shuts the
  client down."""
  if not running():
    return
  stop = threading.Event()
  thread = threading.Thread(target=_watch, args=(_client(), stop), daemon=True,
                            name='dllm_jax_error_watchdog')
  thread.start()

  def stop_watching():
    stop.set()
    thread.join(timeout=2 * _POLL_MS / 1000)
  atexit.register(stop_watching)  # runs before JAX's own atexit shutdown, registered earlier


def fail(message: str):
  """Ends this process with `error: message`; on a multi-process job, every other process
  too, each printing `error: process N: message`."""
  if not running():
    sys.exit(f'error: {message}')
  _failing.set()
  client, me = _client(), distributed.global_state.process_id
  try:
    client.key_value_set(_ERROR_KEY, f'process {me}: {message}')
  except Exception:  # pylint: disable=broad-except  # another process failed first
    pass
  # Wait (boundedly) until the others have read it: were this the coordinator, exiting at
  # once would take the key-value store down before they could.
  deadline = time.time() + _SEEN_TIMEOUT_S
  for p in range(distributed.global_state.num_processes):
    if p != me:
      try:
        client.blocking_key_value_get(f'{_SEEN_KEY}{p}',
                                      max(1, int(1000 * (deadline - time.time()))))
      except Exception:  # pylint: disable=broad-except  # gone already, or too slow
        continue
  _exit(message)
