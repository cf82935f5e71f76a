"""The HTTP server: a real uvicorn on an ephemeral loopback port, serving a tiny LLaDA."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
from concurrent import futures

import pytest

from dllm_jax import generate
from dllm_jax.convert import synthetic
from dllm_jax.server import api
from dllm_jax.server import engine as engine_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = 'tiny-llada'


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('llada'))
  synthetic.write_llada(path, std=0.2)
  model = generate.load(hf_dir=path, dtype='float32')
  eng = engine_lib.Engine(model, max_batch=4, prompt_buckets=(32,), gen_buckets=(8, 16),
                          allow_cfg=True, max_queue=32)
  eng.warm_up(lambda message: None)
  yield eng
  eng.stop()


@pytest.fixture(scope='module')
def url(engine):
  with api.running(api.create_app(engine, model_name=MODEL)) as base:
    yield base


def call(base, method, path, body=None, raw=None, headers=None, timeout=120):
  """(status, headers, parsed JSON or text) of one request."""
  host, port = base.removeprefix('http://').split(':')
  conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  conn.request(method, path, body=data, headers={'Content-Type': 'application/json',
                                                 **(headers or {})})
  response = conn.getresponse()
  text = response.read().decode('utf-8', 'replace')
  conn.close()
  try:
    parsed = json.loads(text)
  except json.JSONDecodeError:
    parsed = text
  return response.status, dict(response.getheaders()), parsed


def complete(base, **fields):
  return call(base, 'POST', '/v1/completions', {'model': MODEL, 'prompt': 'def f(x):',
                                                'max_tokens': 8, **fields})


def sse_events(text: str) -> list:
  data = [line[6:] for line in text.split('\n\n') if line.startswith('data: ')]
  assert data[-1] == '[DONE]'
  return [json.loads(d) for d in data[:-1]]


def metric(base, name: str) -> float:
  text = call(base, 'GET', '/metrics')[2]
  match = re.search(rf'^{re.escape(name)} (\S+)$', text, re.M)
  return float(match.group(1)) if match else 0.0


def wait_for(condition, timeout=30.0):
  end = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < end, 'timed out waiting'
    time.sleep(0.02)


def test_completions_schema_usage_and_prompt_batches(url):
  status, _, body = complete(url, prompt=['a = ', 'b = '], n=2, seed=0, stop=['\n'])
  assert status == 200, body
  assert body['object'] == 'text_completion' and body['model'] == MODEL
  assert body['id'].startswith('cmpl-') and isinstance(body['created'], int)
  assert [c['index'] for c in body['choices']] == [0, 1, 2, 3]
  for choice in body['choices']:
    assert set(choice) == {'index', 'text', 'logprobs', 'finish_reason'}
    assert choice['finish_reason'] in ('stop', 'length') and '\n' not in choice['text']
  usage = body['usage']
  assert usage['total_tokens'] == usage['prompt_tokens'] + usage['completion_tokens']
  assert 0 < usage['completion_tokens'] <= 4 * 8
  assert 4 <= usage['nfe'] <= 4 * 8  # model calls of the 4 rows: at most steps each


def test_adaptive_samplers_report_the_model_calls_they_saved(url):
  """threshold 0 commits a whole block per call: one 8-token block, one call per row."""
  status, _, body = complete(url, prompt=['a = ', 'b = '], sampler='threshold', threshold=0.0,
                             max_tokens=8, steps=8, block_length=8, seed=0)
  assert status == 200, body
  assert body['usage']['nfe'] == 2 and body['usage']['completion_tokens'] > 0


def test_chat_schema_and_model_listing(url):
  status, _, body = call(url, 'POST', '/v1/chat/completions', {
      'model': MODEL, 'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 16,
      'steps': 8, 'block_length': 8, 'cfg_scale': 1.0, 'temperature': 0.5, 'seed': 1})
  assert status == 200, body
  assert body['object'] == 'chat.completion'
  message = body['choices'][0]['message']
  assert message['role'] == 'assistant' and isinstance(message['content'], str)
  assert call(url, 'GET', '/v1/models')[2]['data'][0]['id'] == MODEL
  assert call(url, 'GET', f'/v1/models/{MODEL}')[2]['object'] == 'model'
  assert call(url, 'GET', '/health')[2]['status'] == 'ok'
  schema = call(url, 'GET', '/openapi.json')[2]
  assert {'/v1/completions', '/v1/chat/completions', '/v1/models'} <= set(schema['paths'])


def test_a_seeded_request_answers_the_same_alone_and_batched(url, engine):
  settings = dict(seed=11, temperature=1.0, max_tokens=16, steps=8, block_length=8)
  alone = complete(url, **settings)[2]['choices'][0]['text']
  before = metric(url, 'dllm_batch_rows_count'), metric(url, 'dllm_batch_rows_sum')
  with futures.ThreadPoolExecutor(3) as pool:
    with engine.paused():
      others = [pool.submit(complete, url, seed=s, max_tokens=m, steps=m)
                for s, m in ((1, 12), (2, 10))]
      mine = pool.submit(complete, url, **settings)
      wait_for(lambda: engine.queued_rows() == 3)
    results = [f.result() for f in others + [mine]]
  assert all(status == 200 for status, _, _ in results)
  assert results[-1][2]['choices'][0]['text'] == alone
  # The three requests (different lengths, steps and seeds) were one sampler call.
  after = metric(url, 'dllm_batch_rows_count'), metric(url, 'dllm_batch_rows_sum')
  assert (after[0] - before[0], after[1] - before[1]) == (1, 3)


def test_a_suffix_is_filled_up_to_as_generate_infill_fills_it(url, engine):
  prompt, suffix = 'def f(x):\n    return ', '\nf(2)'
  status, _, body = complete(url, prompt=prompt, suffix=suffix, max_tokens=8, steps=8,
                             block_length=8, temperature=0.0)
  assert status == 200, body
  tok = engine.tokenizer
  # The same canvas, sampled alone: prompt, 8 masks in one block, then the suffix.
  filled = generate.infill(engine.model, f'{prompt}[MASK:8]{suffix}', temperature=0.0)[0]
  gap = filled.tokens[len(tok.encode(prompt)):][:8]
  stop = [i for i, t in enumerate(gap) if t in tok.stop_ids]
  assert body['choices'][0]['text'] == tok.decode(gap[:stop[0]] if stop else gap)
  assert body['usage']['prompt_tokens'] == len(tok.encode(prompt)) + len(tok.encode(suffix))
  status, _, body = complete(url, suffix='x' * 200, max_tokens=8)
  assert status == 400 and body['error']['param'] == 'suffix', body
  assert 'must fit in 16 (--gen_buckets)' in body['error']['message']


def test_streaming_emits_every_step_then_the_answer(url):
  settings = dict(seed=5, temperature=1.0, max_tokens=16, steps=8, block_length=4)
  final = complete(url, **settings)[2]['choices'][0]
  status, headers, text = complete(url, stream=True, stream_options={'include_usage': True},
                                   **settings)
  assert status == 200 and headers['content-type'].startswith('text/event-stream')
  events = sse_events(text)
  steps = [e['choices'][0]['denoise'] for e in events[:-1] if 'denoise' in e['choices'][0]]
  assert [s['step'] for s in steps] == list(range(1, 9))
  masked = [s['masked'] for s in steps]
  assert masked == sorted(masked, reverse=True) and masked[-1] == 0
  assert masked[0] == 14  # 4-token blocks, 2 steps each: 2 tokens a step
  assert steps[0]['canvas'].count(generate.MASK_GLYPH) >= 14
  assert all(e['choices'][0]['text'] == '' for e in events[:len(steps)])
  last, usage = events[-2], events[-1]
  assert last['choices'][0]['text'] == final['text']
  assert last['choices'][0]['finish_reason'] == final['finish_reason']
  assert usage['choices'] == [] and usage['usage']['completion_tokens'] > 0


def test_chat_streaming_sends_the_role_first_and_the_content_last(url):
  status, _, text = call(url, 'POST', '/v1/chat/completions', {
      'model': MODEL, 'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 8,
      'stream': True, 'seed': 2})
  assert status == 200
  events = sse_events(text)
  assert all(e['object'] == 'chat.completion.chunk' for e in events)
  assert events[0]['choices'][0]['delta']['role'] == 'assistant'
  assert 'content' in events[-1]['choices'][0]['delta']
  assert events[-1]['choices'][0]['finish_reason'] in ('stop', 'length')


BAD_REQUESTS = [
    ('not json', b'{"model": ', 400, 'not valid JSON'),
    ('invalid utf-8', b'{"model": "tiny-llada", "prompt": "\xff\xfe"}', 400, ''),
    ('missing prompt', {'model': MODEL}, 400, 'prompt: Field required'),
    ('missing model', {'prompt': 'x'}, 400, 'model: Field required'),
    ('wrong type', {'model': MODEL, 'prompt': 'x', 'max_tokens': '8'}, 400, 'max_tokens'),
    ('unknown field', {'model': MODEL, 'prompt': 'x', 'frobnicate': 1}, 400, 'frobnicate'),
    ('negative max_tokens', {'model': MODEL, 'prompt': 'x', 'max_tokens': -3}, 400,
     'max_tokens'),
    ('huge max_tokens', {'model': MODEL, 'prompt': 'x', 'max_tokens': 10**6}, 400,
     'max_tokens: must be in [1, 16]'),
    ('enormous max_tokens', {'model': MODEL, 'prompt': 'x', 'max_tokens': 2**70}, 400,
     'max_tokens'),
    ('zero steps', {'model': MODEL, 'prompt': 'x', 'steps': 0}, 400, 'steps'),
    ('threshold above 1', {'model': MODEL, 'prompt': 'x', 'sampler': 'threshold',
                           'threshold': 1.5}, 400, 'threshold'),
    ('negative factor', {'model': MODEL, 'prompt': 'x', 'factor': -1.0}, 400, 'factor'),
    ('block not dividing', {'model': MODEL, 'prompt': 'x', 'max_tokens': 8,
                            'block_length': 3}, 400, 'block_length: 3 must divide'),
    ('steps not fitting blocks', {'model': MODEL, 'prompt': 'x', 'max_tokens': 8,
                                  'block_length': 2, 'steps': 6}, 400, 'steps: 6 must be'),
    ('prompt too long', {'model': MODEL, 'prompt': 'word ' * 200}, 400, 'the prompt has'),
    ('unknown model', {'model': 'gpt-9', 'prompt': 'x'}, 404, "'gpt-9' does not exist"),
    ('unknown sampler', {'model': MODEL, 'prompt': 'x', 'sampler': 'beam'}, 400, 'sampler'),
    ('too many samples', {'model': MODEL, 'prompt': 'x', 'n': 9}, 400, 'at most 4'),
    ('astronomical n', {'model': MODEL, 'prompt': 'x', 'n': 10**18}, 400, 'at most 4'),
    ('endless steps', {'model': MODEL, 'prompt': 'x', 'max_tokens': 8, 'steps': 8 * 10**9},
     400, 'steps: at most 1024'),
    ('mask in token ids', {'model': MODEL, 'prompt': [5, 'MASK']}, 400, 'not the mask'),
    ('bad token ids', {'model': MODEL, 'prompt': [1, 10**9]}, 400, 'token ids'),
    ('empty prompt list', {'model': MODEL, 'prompt': []}, 400, 'prompt'),
    ('top_p zero', {'model': MODEL, 'prompt': 'x', 'top_p': 0}, 400, 'top_p'),
    ('five stops', {'model': MODEL, 'prompt': 'x', 'stop': list('abcde')}, 400, 'stop'),
]


@pytest.mark.parametrize('name, body, status, message', BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(url, engine, name, body,
                                                               status, message):
  del name
  if isinstance(body, dict) and body.get('prompt') == [5, 'MASK']:
    body = {**body, 'prompt': [5, engine.tokenizer.mask_id]}
  raw = body if isinstance(body, bytes) else None
  got, _, answer = call(url, 'POST', '/v1/completions', None if raw else body, raw=raw)
  assert got == status, answer
  assert set(answer['error']) == {'message', 'type', 'param', 'code'}
  assert message in answer['error']['message']
  assert complete(url)[0] == 200


def test_bad_chat_requests(url):
  def chat(**fields):
    return call(url, 'POST', '/v1/chat/completions', {'model': MODEL, **fields})
  assert chat(messages=[])[0] == 400
  assert chat(messages=[{'role': 'wizard', 'content': 'x'}])[2]['error']['param'] == \
      'messages.0.role'
  assert chat(messages=[{'role': 'user'}])[0] == 400
  assert call(url, 'GET', '/v1/nothing')[2]['error']['type'] == 'not_found_error'


def test_oversized_bodies_are_refused(engine):
  with api.running(api.create_app(engine, model_name=MODEL, max_body_bytes=1000)) as base:
    status, _, body = complete(base, prompt='x' * 2000)
    assert status == 413 and 'over 1000 bytes' in body['error']['message']
    # Without a Content-Length, as the body streams in.
    host, port = base.removeprefix('http://').split(':')
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = iter([json.dumps({'model': MODEL, 'prompt': 'y' * 3000}).encode()])
    conn.request('POST', '/v1/completions', body=chunks, encode_chunked=True,
                 headers={'Content-Type': 'application/json'})
    assert conn.getresponse().status == 413
    assert complete(base)[0] == 200


def test_api_key(engine):
  with api.running(api.create_app(engine, model_name=MODEL, api_key='s3cret')) as base:
    assert complete(base)[0] == 401
    wrong = call(base, 'POST', '/v1/completions', {'model': MODEL, 'prompt': 'x'},
                 headers={'Authorization': 'Bearer nope'})
    assert wrong[0] == 401 and wrong[2]['error']['code'] == 'invalid_api_key'
    assert call(base, 'GET', '/metrics')[0] == 401
    right = call(base, 'POST', '/v1/completions', {'model': MODEL, 'prompt': 'x',
                                                   'max_tokens': 8},
                 headers={'Authorization': 'Bearer s3cret'})
    assert right[0] == 200
    assert call(base, 'GET', '/health')[0] == 200


def test_a_full_queue_is_429_with_retry_after(url, engine):
  engine.max_queue, limit = 2, engine.max_queue
  try:
    with futures.ThreadPoolExecutor(2) as pool, engine.paused():
      waiting = [pool.submit(complete, url, seed=i) for i in range(2)]
      wait_for(lambda: engine.queued_rows() == 2)
      status, headers, body = complete(url)
      assert status == 429 and headers['retry-after'] == '1'
      assert body['error']['type'] == 'rate_limit_error'
  finally:
    engine.max_queue = limit
  assert [f.result()[0] for f in waiting] == [200, 200]


def test_a_client_that_leaves_frees_its_slot(url, engine):
  host, port = url.removeprefix('http://').split(':')
  body = json.dumps({'model': MODEL, 'prompt': 'x', 'max_tokens': 8}).encode()
  with engine.paused():
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: '
                 b'application/json\r\nContent-Length: ' + str(len(body)).encode() +
                 b'\r\n\r\n' + body)
    wait_for(lambda: engine.queued_rows() == 1)
    sock.close()
    wait_for(lambda: engine.queued_rows() == 0, timeout=10)


def test_a_job_cancelled_while_the_worker_gathers_companions_never_runs(engine):
  engine.start()  # idempotent: the app's startup may have started it already
  ids = engine.tokenizer.encode('x = ')
  settings = engine_lib.Settings(gen_length=8, steps=8, block_length=8)
  done = {}
  engine.batch_wait_s, wait = 1.0, engine.batch_wait_s
  try:
    first = engine_lib.Job([ids], settings, 0, on_done=lambda r: done.setdefault('first', r))
    engine.submit(first)
    time.sleep(0.2)  # the worker now waits up to 1 s for companions of `first`
    engine.cancel(first)
    engine.submit(engine_lib.Job([ids, ids], settings, 1,
                                 on_done=lambda r: done.setdefault('second', r)))
    wait_for(lambda: 'second' in done)
  finally:
    engine.batch_wait_s = wait
  assert 'first' not in done
  assert [row.finish_reason in ('stop', 'length') for row in done['second']] == [True, True]


def test_a_request_over_its_time_is_503_and_leaves_the_queue(engine):
  with api.running(api.create_app(engine, model_name=MODEL, request_timeout_s=0.5)) as base:
    with engine.paused():
      status, headers, body = complete(base)
      assert status == 503 and body['error']['code'] == 'timeout' and 'retry-after' in headers
      assert engine.queued_rows() == 0


def test_load_every_request_answered_no_5xx_no_compilation(url, engine):
  compiled = metric(url, 'dllm_compilations_total')
  assert compiled == len(list(engine.shapes()))  # all at warm-up

  def client(i):
    statuses = []
    for j in range(4):
      length = (4, 8, 12, 16)[(i + j) % 4]
      statuses.append(complete(url, max_tokens=length, steps=length, seed=i * 10 + j,
                               sampler=('low_confidence', 'random', 'ancestral')[j % 3],
                               stream=bool(j % 2), n=1 + (i % 2))[0])
    return statuses

  with futures.ThreadPoolExecutor(16) as pool:
    statuses = [s for result in pool.map(client, range(16)) for s in result]
  assert len(statuses) == 64 and set(statuses) == {200}
  assert metric(url, 'dllm_compilations_total') == compiled


def test_openapi_schema_fuzzed_without_server_errors(url):
  """Valid and invalid requests drawn from /openapi.json by schemathesis: never a 5xx."""
  import schemathesis  # pylint: disable=g-import-not-at-top
  from hypothesis import HealthCheck, errors, given, settings  # pylint: disable=g-import-not-at-top
  calls = {}

  def fuzzer(operation, mode):
    label = (operation.label, mode.value)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
      response = case.call(base_url=url, timeout=60)
      assert response.status_code < 500, (case.body, response.text)
      calls[label] = calls.get(label, 0) + 1
    return fuzz

  for result in schemathesis.openapi.from_url(f'{url}/openapi.json').get_all_operations():
    operation = result.ok()
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
      try:
        fuzzer(operation, mode)()
      except errors.Unsatisfiable:  # nothing to make invalid in a GET without parameters
        assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method == 'get'
  for path in ('/v1/completions', '/v1/chat/completions'):
    assert calls[(f'POST {path}', 'positive')] >= 10
    assert calls[(f'POST {path}', 'negative')] >= 10


def test_openai_client_completes_chats_and_streams(url):
  import openai  # pylint: disable=g-import-not-at-top
  client = openai.OpenAI(base_url=f'{url}/v1', api_key='unused')
  done = client.completions.create(model=MODEL, prompt='x = ', max_tokens=8, seed=4,
                                   temperature=0.8, extra_body={'steps': 4})
  streamed = client.completions.create(model=MODEL, prompt='x = ', max_tokens=8, seed=4,
                                       temperature=0.8, extra_body={'steps': 4}, stream=True)
  assert ''.join(chunk.choices[0].text for chunk in streamed) == done.choices[0].text
  chat = client.chat.completions.create(model=MODEL, max_tokens=8,
                                        messages=[{'role': 'user', 'content': 'Hi'}])
  assert chat.choices[0].message.role == 'assistant'
  with pytest.raises(openai.NotFoundError):
    client.completions.create(model='other', prompt='x')


def test_the_page_shows_the_answer_denoising_in_chromium(url, tmp_path):
  chromium = shutil.which('chromium')
  if chromium is None and not os.environ.get('CI'):
    pytest.skip('Debian chromium is not installed (.ci/run installs it)')
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=[
        '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'])
    page = browser.new_page()
    page.goto(url + '/')
    page.fill('#prompt', 'def f(x):')
    for field, value in (('#max_tokens', '16'), ('#steps', '8'), ('#block_length', '8'),
                         ('#temperature', '0.7')):
      page.fill(field, value)
    page.click('#go')
    page.wait_for_function("document.getElementById('status').textContent.includes('done')",
                           timeout=60_000)
    seen = page.evaluate('window.denoised')
    page.screenshot(path=str(tmp_path / 'page.png'))
    text = page.inner_text('#out')
    browser.close()
  assert [s['step'] for s in seen] == list(range(1, 9))  # every step was drawn
  assert seen[0]['masked'] == 14 and seen[-1]['masked'] == 0
  assert text.startswith('def f(x):') and generate.MASK_GLYPH not in text
  assert os.path.getsize(tmp_path / 'page.png') > 1000


def test_serve_cli_refuses_bad_setups_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('DLLM_API_KEY', None)
  for args, message in ((['--checkpoint', str(tmp_path / 'none')], 'error: '),
                        (['--checkpoint', str(tmp_path), '--host', '0.0.0.0'],
                         'without an API key')):
    proc = subprocess.run([sys.executable, '-m', 'dllm_jax.serve', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, proc.stderr


def test_serve_builds_from_a_checkpoint_trained_here(tiny_config, tmp_path):
  """The command's own wiring (flags -> warmed-up engine -> app) on a byte-level model: it
  completes, and chat is a clear 400 since bytes have no chat template."""
  from dllm_jax import serve  # pylint: disable=g-import-not-at-top
  from dllm_jax import train  # pylint: disable=g-import-not-at-top
  tiny_config.train.update(num_steps=2, eval_every=2, checkpoint_every=2)
  train.train_and_evaluate(tiny_config, str(tmp_path))
  flags = dict(checkpoint=str(tmp_path), hf_dir=None, model_name='', host='127.0.0.1',
               api_key_env='DLLM_TEST_NO_SUCH_KEY', max_batch=1, prompt_buckets=['16'],
               gen_buckets=['8'], allow_cfg=False, max_queue=4, batch_wait_ms=0.0,
               request_timeout_s=60.0, max_body_bytes=10_000, default_max_tokens=64,
               mesh='', use_ema=False, max_steps=64)
  app, eng = serve.build(types.SimpleNamespace(**flags))
  try:
    with api.running(app) as base:
      name = os.path.basename(str(tmp_path))
      status, _, body = call(base, 'POST', '/v1/completions',
                             {'model': name, 'prompt': 'def ', 'max_tokens': 8})
      assert status == 200 and body['usage']['completion_tokens'] <= 8
      status, _, body = call(base, 'POST', '/v1/chat/completions', {
          'model': name, 'messages': [{'role': 'user', 'content': 'hi'}]})
      assert status == 400 and 'no chat template' in body['error']['message']
      assert metric(base, 'dllm_compilations_total') == 1
  finally:
    eng.stop()


def test_a_model_sharded_over_a_mesh_serves_the_same_answers(engine, url):
  """The engine runs its calls in the model's mesh: a (data 2, fsdp 2, tensor 2) placement
  answers as the single-device one does."""
  model = generate.load(hf_dir=os.path.dirname(engine.model.tokenizer_path), dtype='float32',
                        mesh_shape=(2, 2, 2))
  sharded = engine_lib.Engine(model, max_batch=2, prompt_buckets=(32,), gen_buckets=(8,))
  sharded.warm_up(lambda message: None)
  try:
    with api.running(api.create_app(sharded, model_name=MODEL)) as base:
      for seed in (0, 1):
        got = complete(base, seed=seed, temperature=0.9, n=2)[2]['choices']
        want = complete(url, seed=seed, temperature=0.9, n=2)[2]['choices']
        assert [c['text'] for c in got] == [c['text'] for c in want]
  finally:
    sharded.stop()
