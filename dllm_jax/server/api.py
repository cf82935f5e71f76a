"""The OpenAI-compatible HTTP API over an `engine.Engine` (FastAPI).

POST /v1/completions and /v1/chat/completions take the OpenAI request fields (model,
prompt / messages, max_tokens, temperature, top_p, n, stop, stream, stream_options, seed,
user; completions also suffix, for infilling: the max_tokens generated tokens fill the gap
between prompt and suffix) and the diffusion ones (steps, block_length, sampler, cfg_scale,
top_k). With
`stream: true` the answer comes as server-sent events: one chunk per denoising step whose
choices carry an empty text (or delta) and a `denoise` object {step, steps, canvas,
masked}, the canvas being the generated region with each still-masked token drawn as
`generate.MASK_GLYPH`; then a final chunk with the whole text and its finish_reason, a
usage chunk when stream_options.include_usage is set, and `data: [DONE]`. Clients that only
concatenate text deltas therefore see exactly the non-streamed answer.

Errors are OpenAI error bodies {"error": {message, type, param, code}} with a 4xx status;
a full queue is 429 with Retry-After.
"""

import asyncio
import contextlib
import hmac
import html
import importlib.resources
import json
import os
import secrets
import threading
import time
from typing import Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from dllm_jax import sampling
from dllm_jax.config import SAMPLERS
from dllm_jax.data.chat import ChatTemplate, ChatTemplateError
from dllm_jax.server import engine as engine_lib

MAX_STOP = 4
INT64 = 2**63


class ApiError(HTTPException):
  """An error answered as an OpenAI error body."""

  def __init__(self, status: int, message: str, *, param: str | None = None,
               kind: str = 'invalid_request_error', code: str | None = None,
               headers: dict | None = None):
    super().__init__(status, message, headers)
    self.param, self.kind, self.code = param, kind, code


def _error_body(message: str, kind: str, param=None, code=None) -> dict:
  return {'error': {'message': message, 'type': kind, 'param': param, 'code': code}}


class _Request(BaseModel):
  """Fields common to both endpoints (strict: "5" is not an integer)."""
  model_config = ConfigDict(extra='forbid', strict=True)
  model: str
  max_tokens: int | None = Field(None, ge=1, lt=INT64)
  temperature: float = Field(1.0, ge=0, le=2)
  top_p: float = Field(1.0, gt=0, le=1)
  top_k: int = Field(0, ge=0, lt=INT64)
  n: int = Field(1, ge=1, lt=INT64)
  stop: str | list[str] | None = None
  stream: bool = False
  stream_options: dict[str, bool] | None = None
  seed: int | None = Field(None, ge=-INT64, lt=INT64)
  user: str | None = None
  steps: int | None = Field(None, ge=1, lt=INT64, description='Denoising steps (model calls); '
                            'default: max_tokens.')
  block_length: int | None = Field(None, ge=1, lt=INT64, description='Semi-autoregressive '
                                   'block; default: 32 where it divides max_tokens and fits '
                                   'the steps, else max_tokens.')
  sampler: Literal[SAMPLERS] = 'low_confidence'
  threshold: float = Field(0.9, ge=0, le=1, description='threshold sampler: commit every '
                           'position of the block whose probability exceeds this.')
  factor: float = Field(1.0, ge=0, le=1e6, description='factor sampler: commit the n most '
                        'probable while (n + 1)(1 - p_n) < factor.')
  entropy_bound: float = Field(0.1, ge=0, le=1e6, description='entropy_bound sampler: commit '
                               'the lowest-entropy positions while their summed entropy, less '
                               'the largest, stays within this.')
  cfg_scale: float = Field(0.0, ge=0, le=100, description='Classifier-free guidance weight.')


class CompletionRequest(_Request):
  prompt: str | list[str] | list[int] | list[list[int]]
  suffix: str | None = Field(None, description='Text after the completion (infilling): the '
                             'max_tokens generated tokens fill the gap between prompt and '
                             'suffix, which stays as given.')


class ChatMessage(BaseModel):
  model_config = ConfigDict(extra='forbid', strict=True)
  role: Literal['system', 'user', 'assistant']
  content: str


class ChatRequest(_Request):
  messages: list[ChatMessage] = Field(min_length=1)
  max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)


class _BodyTooLarge(HTTPException):
  pass


class _ClientGone(Exception):
  """The client disconnected before its answer was ready."""


class BodyLimit:
  """ASGI middleware: a body over `limit` bytes is a 413, by header or as it streams in."""

  def __init__(self, app, limit: int):
    self.app, self.limit = app, limit

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    declared = dict(scope['headers']).get(b'content-length')
    too_large = _BodyTooLarge(413, f'the request body is over {self.limit} bytes.')
    if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
      response = _error_response(too_large if declared.isdigit() else ApiError(
          400, 'Content-Length is not a number.'))
      return await response(scope, receive, send)
    received = 0

    async def limited():
      nonlocal received
      message = await receive()
      received += len(message.get('body', b''))
      if received > self.limit:
        raise too_large
      return message

    await self.app(scope, limited, send)


class Counted:
  """ASGI middleware: counts answers by route and status and times them to the last byte."""

  def __init__(self, app, metrics: engine_lib.Metrics):
    self.app, self.metrics = app, metrics

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    start, status = time.perf_counter(), [500]

    async def sending(message):
      if message['type'] == 'http.response.start':
        status[0] = message['status']
      await send(message)

    try:
      await self.app(scope, receive, sending)
    finally:
      route = scope.get('route')
      path = route.path if route is not None else 'other'
      self.metrics.requests.labels(path, str(status[0])).inc()
      self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def _error_response(exc: HTTPException) -> JSONResponse:
  kinds = {401: 'authentication_error', 404: 'not_found_error', 413: 'invalid_request_error',
           429: 'rate_limit_error', 503: 'server_error'}
  kind = getattr(exc, 'kind', None) or kinds.get(exc.status_code, 'invalid_request_error')
  return JSONResponse(_error_body(str(exc.detail), kind, getattr(exc, 'param', None),
                                  getattr(exc, 'code', None)),
                      status_code=exc.status_code, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
  first = exc.errors()[0]
  loc = [str(p) for p in first.get('loc', ()) if p != 'body']
  if first.get('type') == 'json_invalid':
    return f'the body is not valid JSON: {first.get("ctx", {}).get("error", first["msg"])}.', None
  param = '.'.join(loc) or None
  return (f'{param}: {first["msg"]}' if param else first['msg']), param


def _resolve_settings(req: _Request, max_tokens: int,
                      block_size: int = 0) -> engine_lib.Settings:
  """The request's sampler settings with the server's defaults filled in (`block_size`: a
  block diffusion model's blocks, the default block length)."""
  steps = req.steps or max_tokens
  block = req.block_length
  if block is None and block_size:
    block = block_size
  elif block is None:
    fits = max_tokens % 32 == 0 and steps % (max_tokens // 32) == 0
    block = 32 if fits and req.sampler != 'ancestral' else max_tokens
  return engine_lib.Settings(gen_length=max_tokens, steps=steps, block_length=block,
                             sampler=req.sampler, temperature=req.temperature,
                             top_k=min(req.top_k, engine_lib.MAX_TOP_K), top_p=req.top_p,
                             cfg_scale=req.cfg_scale, threshold=req.threshold,
                             factor=req.factor, entropy_bound=req.entropy_bound)


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
  hits = [i for i in (text.find(s) for s in stops) if i >= 0]
  return (text[:min(hits)], True) if hits else (text, False)


def create_app(engine: engine_lib.Engine, *, model_name: str, api_key: str | None = None,
               request_timeout_s: float = 300.0, max_body_bytes: int = 1 << 20,
               default_max_tokens: int = 64) -> FastAPI:
  """The app; it starts the engine's worker on startup (warm the engine up first; stopping
  it is the owner's business, so that several apps may share one engine)."""
  tokenizer = engine.tokenizer
  metrics = engine.metrics
  default_max_tokens = min(default_max_tokens, engine.gen_buckets[-1])
  template_path = os.path.join(os.path.dirname(engine.model.tokenizer_path),
                               'tokenizer_config.json')
  template = None
  if engine.model.tokenizer_path != 'bytes' and os.path.exists(template_path):
    template = ChatTemplate(template_path)
  created = int(time.time())

  app = FastAPI(title='dllm_jax', version='1', description=__doc__,
                on_startup=[engine.start])
  app.add_middleware(BodyLimit, limit=max_body_bytes)

  app.add_middleware(Counted, metrics=metrics)

  @app.exception_handler(HTTPException)
  async def http_error(request, exc):
    del request
    return _error_response(exc)

  @app.exception_handler(RequestValidationError)
  async def invalid(request, exc):
    del request
    message, param = _validation_message(exc)
    return _error_response(ApiError(400, message, param=param))

  @app.exception_handler(Exception)
  async def internal(request, exc):
    del request, exc
    return JSONResponse(_error_body('internal error; see the server log.', 'server_error'),
                        status_code=500)

  def authorize(request: Request):
    if api_key is None:
      return
    given = request.headers.get('authorization', '')
    if not hmac.compare_digest(given.encode(), f'Bearer {api_key}'.encode()):
      raise ApiError(401, 'a valid API key is needed: Authorization: Bearer KEY.',
                     kind='authentication_error', code='invalid_api_key')

  def check_model(name: str):
    if name != model_name:
      raise ApiError(404, f'the model {name!r} does not exist; this server has '
                     f'{model_name!r}.', param='model', code='model_not_found')

  def start_job(req: _Request, prompts: list[np.ndarray], max_tokens: int | None,
                suffix: np.ndarray):
    """Checks and queues a job; returns (job, queue of its events)."""
    check_model(req.model)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
      raise ApiError(400, f'stop: at most {MAX_STOP} non-empty strings.', param='stop')
    settings = _resolve_settings(req, max_tokens or default_max_tokens, engine.model.block_size)
    try:
      engine.check(max(len(p) for p in prompts), settings, len(prompts) * req.n, len(suffix))
    except sampling.SamplingError as e:
      field = str(e).split(':')[0]
      raise ApiError(400, str(e), param=field if field in type(req).model_fields else None) from e
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def post(item):
      if not loop.is_closed():  # else the server has stopped and nobody waits
        loop.call_soon_threadsafe(events.put_nowait, item)

    seed = secrets.randbits(32) if req.seed is None else req.seed % 2**32
    rows = [p for p in prompts for _ in range(req.n)]
    job = engine_lib.Job(rows, settings, seed, on_done=lambda result: post(('done', result)),
                         on_step=(lambda step, canvases, masked: post(
                             ('step', (step, canvases, masked)))) if req.stream else None,
                         suffix=suffix)
    try:
      engine.submit(job)
    except engine_lib.QueueFull as e:
      raise ApiError(429, 'the server is busy: its queue is full; retry shortly.',
                     kind='rate_limit_error', headers={'Retry-After': '1'}) from e
    return job, events, stops

  async def wait(job, events, request: Request):
    """The next event, or an ApiError on timeout; cancels the job if the client leaves."""
    deadline = job.enqueued + request_timeout_s
    while True:
      try:
        return await asyncio.wait_for(events.get(), timeout=0.25)
      except asyncio.TimeoutError:
        if await request.is_disconnected():
          engine.cancel(job)
          raise _ClientGone() from None
        if time.monotonic() > deadline:
          engine.cancel(job)
          raise ApiError(503, f'the request took over {request_timeout_s:.0f}s; try fewer '
                         'steps or tokens.', kind='server_error', code='timeout',
                         headers={'Retry-After': '5'}) from None

  async def finished_rows(job, events, request):
    kind, result = await wait(job, events, request)
    while kind == 'step':
      kind, result = await wait(job, events, request)
    if isinstance(result, Exception):
      raise ApiError(503, f'generation failed: {result}', kind='server_error')
    return result

  def choices_of(rows, stops, chat: bool):
    """The choices, their completion tokens and the model calls their rows used."""
    out, tokens, calls = [], 0, 0
    for i, row in enumerate(rows):
      text, stopped = _cut_at_stop(row.text, stops)
      if chat:
        text = text.strip()
      reason = 'stop' if stopped or row.finish_reason == 'stop' else 'length'
      tokens += len(tokenizer.encode(text)) if stopped else row.tokens
      body = ({'message': {'role': 'assistant', 'content': text}} if chat
              else {'text': text})
      out.append({'index': i, **body, 'logprobs': None, 'finish_reason': reason})
      calls += row.nfe
    return out, tokens, calls

  def usage(prompts, suffix, req, completion_tokens, calls):
    prompt_tokens = sum(len(p) + len(suffix) for p in prompts) * req.n
    return {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
            'total_tokens': prompt_tokens + completion_tokens, 'nfe': calls}

  async def respond(req: _Request, request: Request, prompts, max_tokens, chat: bool,
                    suffix: np.ndarray = engine_lib.NO_SUFFIX):
    job, events, stops = start_job(req, prompts, max_tokens, suffix)
    ident = f'{"chatcmpl" if chat else "cmpl"}-{secrets.token_hex(12)}'
    head = {'id': ident, 'object': 'chat.completion' if chat else 'text_completion',
            'created': int(time.time()), 'model': model_name}
    if not req.stream:
      try:
        rows = await finished_rows(job, events, request)
      except _ClientGone:
        return JSONResponse(_error_body('client closed the request', 'client_error'), 499)
      choices, tokens, calls = choices_of(rows, stops, chat)
      return {**head, 'choices': choices, 'usage': usage(prompts, suffix, req, tokens, calls)}
    chunk_head = {**head, 'object': 'chat.completion.chunk' if chat else 'text_completion'}
    empty = {'delta': {}} if chat else {'text': ''}
    include_usage = bool((req.stream_options or {}).get('include_usage'))

    def sse(payload) -> str:
      return f'data: {json.dumps(payload, ensure_ascii=False)}\n\n'

    async def stream():
      done = False
      try:
        if chat:
          yield sse({**chunk_head, 'choices': [
              {'index': i, 'delta': {'role': 'assistant', 'content': ''},
               'finish_reason': None} for i in range(len(job.prompts))]})
        while True:
          kind, result = await wait(job, events, request)
          if kind == 'step':
            step, canvases, masked = result
            yield sse({**chunk_head, 'choices': [
                {'index': i, **empty, 'finish_reason': None,
                 'denoise': {'step': step + 1, 'steps': job.settings.steps, 'canvas': c,
                             'masked': m}} for i, (c, m) in enumerate(zip(canvases, masked))]})
            continue
          done = True
          if isinstance(result, Exception):
            yield sse(_error_body(f'generation failed: {result}', 'server_error'))
            break
          choices, tokens, calls = choices_of(result, stops, chat)
          for c in choices:
            c.pop('logprobs')
            if chat:
              c['delta'] = {'content': c.pop('message')['content']}
          yield sse({**chunk_head, 'choices': choices})
          if include_usage:
            yield sse({**chunk_head, 'choices': [],
                       'usage': usage(prompts, suffix, req, tokens, calls)})
          break
        yield 'data: [DONE]\n\n'
      except ApiError as e:
        yield sse(_error_body(str(e.detail), e.kind, code=e.code))
        yield 'data: [DONE]\n\n'
      except _ClientGone:
        pass
      finally:
        if not done:
          engine.cancel(job)

    return StreamingResponse(stream(), media_type='text/event-stream',
                             headers={'Cache-Control': 'no-cache'})

  @app.post('/v1/completions', dependencies=[Depends(authorize)])
  async def completions(req: CompletionRequest, request: Request):
    prompt = req.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
      prompt = [prompt]
    if not prompt:
      raise ApiError(400, 'prompt: must not be an empty list.', param='prompt')
    prompts = []
    for p in prompt:
      if isinstance(p, str):
        prompts.append(np.asarray(tokenizer.encode(p), np.int32))
      else:
        if not all(0 <= t < tokenizer.vocab_size and t != tokenizer.mask_id for t in p):
          raise ApiError(400, f'prompt: token ids must be in [0, {tokenizer.vocab_size}) and '
                         f'not the mask ({tokenizer.mask_id}).', param='prompt')
        prompts.append(np.asarray(p, np.int32))
    suffix = np.asarray(tokenizer.encode(req.suffix or ''), np.int32)
    return await respond(req, request, prompts, req.max_tokens, chat=False, suffix=suffix)

  @app.post('/v1/chat/completions', dependencies=[Depends(authorize)])
  async def chat_completions(req: ChatRequest, request: Request):
    if template is None:
      raise ApiError(400, 'this model has no chat template (tokenizer_config.json beside its '
                     'tokenizer); use /v1/completions.', param='messages')
    try:
      prompt = template.encode(tokenizer, [m.model_dump() for m in req.messages])
    except ChatTemplateError as e:
      raise ApiError(400, str(e), param='messages') from e
    if req.max_tokens and req.max_completion_tokens:
      raise ApiError(400, 'give max_tokens or max_completion_tokens, not both.')
    return await respond(req, request, [np.asarray(prompt, np.int32)],
                         req.max_completion_tokens or req.max_tokens, chat=True)

  def model_card():
    return {'id': model_name, 'object': 'model', 'created': created, 'owned_by': 'dllm_jax'}

  @app.get('/v1/models', dependencies=[Depends(authorize)])
  async def models():
    return {'object': 'list', 'data': [model_card()]}

  @app.get('/v1/models/{name}', dependencies=[Depends(authorize)])
  async def model(name: str):
    check_model(name)
    return model_card()

  @app.get('/health')
  async def health():
    return {'status': 'ok', 'model': model_name, 'queued_rows': engine.queued_rows()}

  @app.get('/metrics', dependencies=[Depends(authorize)], response_class=PlainTextResponse)
  async def prometheus():
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

  page = (importlib.resources.files('dllm_jax.server') / 'static' / 'index.html').read_text()

  @app.get('/', response_class=HTMLResponse, include_in_schema=False)
  async def index():
    return page.replace('{{MODEL}}', html.escape(model_name)).replace(
        '{{MAX_TOKENS}}', str(engine.gen_buckets[-1]))

  return app


@contextlib.contextmanager
def running(app, host: str = '127.0.0.1', port: int = 0):
  """Serves `app` with uvicorn in a thread (port 0: a free one); yields its base URL."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level='error'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    if not thread.is_alive():
      raise RuntimeError(f'the server did not start on {host}:{port}.')
    time.sleep(0.02)
  port = server.servers[0].sockets[0].getsockname()[1]
  try:
    yield f'http://{host}:{port}'
  finally:
    server.should_exit = True
    thread.join()
