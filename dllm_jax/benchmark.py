r"""Diffusion LM against an autoregressive LM of the same size on the same data.

  python -m dllm_jax.benchmark --models=dllm,ar --task=speed --out=DIR
  python -m dllm_jax.benchmark --task=likelihood --train_steps=300 --out=DIR
  python -m dllm_jax.benchmark --task=reverse_translation --dictionary_size=100 --out=DIR
  python -m dllm_jax.benchmark --task=reverse_completion --dllm_checkpoint=RUN1 \
      --ar_checkpoint=RUN2 --out=DIR
  python -m dllm_jax.benchmark --task=frontier --dllm_checkpoint=RUN1 --ar_checkpoint=RUN2 \
      --out=DIR

The models are configs/llada_small.py and configs/ar_small.py at --size (small or tiny);
tasks that need trained models train both alike (--train_steps) unless given training
workdirs (--dllm_checkpoint, --ar_checkpoint). Each task writes DIR/<task>.json with every
figure and setting, DIR/<task>.md with a table, and DIR/<task>.png. See
dllm_jax/benchmarks/{generation_speed,likelihood,reversal,frontier}.py for what each
measures.
"""

import os
import sys

from absl import app, flags

from dllm_jax import cli
from dllm_jax import data as data_lib
from dllm_jax import generate
from dllm_jax import sampling
from dllm_jax.benchmarks import common, frontier, generation_speed, likelihood, reversal
from dllm_jax.config import ConfigError

TASKS = ('speed', 'likelihood', 'reverse_translation', 'reverse_completion', 'frontier')


def define_flags():
  flags.DEFINE_list('models', ['dllm', 'ar'], 'Which of dllm, ar to run.')
  flags.DEFINE_enum('task', None, TASKS, 'The task.')
  flags.DEFINE_string('out', None, 'Output directory of the report.')
  flags.DEFINE_string('runs', '', 'Where models trained here go (default: OUT/runs).')
  flags.DEFINE_enum('size', 'small', ['small', 'tiny'], 'Variant of both configs.')
  flags.DEFINE_string('dllm_checkpoint', '', 'A trained dLLM workdir (else trained here).')
  flags.DEFINE_string('ar_checkpoint', '', 'A trained AR workdir (else trained here).')
  flags.DEFINE_integer('train_steps', 0, 'Steps to train each model (0: the config\'s).')
  flags.DEFINE_list('lengths', ['64', '128', '256', '512', '1024'], 'speed: lengths.')
  flags.DEFINE_list('batch_sizes', ['1', '16'], 'speed, frontier: batch sizes.')
  flags.DEFINE_integer('dllm_steps', 64, 'speed: the fixed number of denoising steps.')
  flags.DEFINE_integer('repeats', 3, 'speed, frontier: timed runs per point.')
  flags.DEFINE_integer('prompts', 32, 'frontier: validation-text prompts.')
  flags.DEFINE_integer('prompt_len', 32, 'frontier: tokens per prompt.')
  flags.DEFINE_integer('gen_length', 128, 'frontier: tokens to generate.')
  flags.DEFINE_integer('block_length', 32, 'frontier: the dLLM\'s block length.')
  flags.DEFINE_integer('steps_equal_length_up_to', 1024, 'speed: time the dLLM with steps = '
                       'length only up to this length (it costs length^2).')
  flags.DEFINE_integer('dictionary_size', 100, 'reverse_translation: pairs.')
  flags.DEFINE_integer('pair_repeats', 60, 'reverse_translation: passes over the pairs.')
  flags.DEFINE_integer('pairs', 100, 'reverse_completion: line pairs.')
  flags.DEFINE_string('text_file', '', 'reverse_completion, frontier: text (default: the '
                      'validation split of the default corpus).')
  flags.DEFINE_integer('seed', 0, 'Seed of the generated data.')
  flags.DEFINE_string('data_files', '', 'Training text for likelihood and reverse_completion '
                      '(config.data.files; default: the standard library).')
  flags.DEFINE_string('data_dir', '', 'Where prepared datasets are cached (config.data.data_dir).')


def _trained(kinds, size, runs, steps, given, **data_overrides) -> dict[str, generate.Model]:
  models = {}
  for kind in kinds:
    workdir = given.get(kind) or os.path.join(runs, kind)
    if not given.get(kind):
      overrides = {f'data.{k}': v for k, v in data_overrides.items()}
      if steps:
        overrides.update({'train.num_steps': steps, 'train.checkpoint_every': steps,
                          'train.eval_every': steps,
                          'train.warmup_steps': min(steps // 10, 100)})
      common.train_model(kind, size, workdir, **overrides)
    models[kind] = generate.load(workdir=workdir)
  return models


def _validation_text(f, size: str, data: dict) -> str:
  """--text_file, or the validation split of the default corpus."""
  if f.text_file:
    with open(f.text_file, encoding='utf-8') as fh:
      return fh.read()
  data_config = common.config_for('dllm', size).data
  data_config.update(data)
  records = data_lib.open_sources(data_config)['eval'].records
  return ''.join(records[i]['text'].decode('utf-8') for i in range(len(records)))


def run(task: str, kinds, out: str, size: str, f) -> dict:
  given = {'dllm': f.dllm_checkpoint, 'ar': f.ar_checkpoint}
  data = {'files': f.data_files, 'data_dir': f.data_dir}
  runs = os.path.join(f.runs or os.path.join(out, 'runs'), task)
  if task == 'speed':
    lengths = [int(x) for x in f.lengths]
    models = (common.load_models(kinds, given) if all(given[k] for k in kinds)
              else {k: common.random_model(k, size, max(lengths) + generation_speed.PROMPT_LEN + 1)
                    for k in kinds})
    result, rows = generation_speed.run(
        models, lengths=lengths, batch_sizes=[int(b) for b in f.batch_sizes],
        dllm_steps=f.dllm_steps, repeats=f.repeats,
        steps_equal_length_up_to=f.steps_equal_length_up_to)
    common.write_report(out, task, result, rows, ['model', 'setting', 'batch', 'gen_length',
                                                  'latency_s', 'tokens_per_sec',
                                                  'gflops_per_token'], generation_speed.plot,
                        notes=f'Crossover (first length where the dLLM is as fast): '
                              f'{result["crossover"]}')
  elif task == 'likelihood':
    result, rows = likelihood.run(kinds, size, runs, train_steps=f.train_steps or
                                  common.config_for('dllm', size).train.num_steps,
                                  workdirs={k: v for k, v in given.items() if v},
                                  data_overrides={f'data.{k}': v for k, v in data.items()})
    common.write_report(out, task, result, rows, ['model', 'bound', 'steps', 'training_tokens',
                                                  'val_bits_per_token', 'stderr_bits'],
                        likelihood.make_plot(result['curves']),
                        notes=f'dLLM minus AR: {result["gap_bits_per_token"]} bits/token.')
  elif task == 'reverse_translation':
    pairs = reversal.make_dictionary(f.dictionary_size, f.seed)
    corpus = reversal.write_corpus(os.path.join(runs, 'data'),
                                   reversal.training_text(pairs, f.pair_repeats, f.seed))
    models = _trained(kinds, size, runs, f.train_steps, {}, files=corpus,
                      validation_fraction=0.01, data_dir=f.data_dir)
    rows = reversal.evaluate_translation(models, pairs)
    result = {'task': task, 'dictionary_size': len(pairs), 'pair_repeats': f.pair_repeats,
              'train_steps': f.train_steps, 'size': size, 'pairs': pairs}
    common.write_report(out, task, result, rows, ['model', 'query', 'n', 'exact_match',
                                                  'char_similarity'], reversal.plot_accuracy)
  elif task == 'frontier':
    models = _trained(common.MODELS, size, runs, f.train_steps, given, **data)
    result, rows = frontier.run(
        models, _validation_text(f, size, data), prompts=f.prompts, prompt_len=f.prompt_len,
        gen_length=f.gen_length, block_length=f.block_length,
        batch_sizes=[int(b) for b in f.batch_sizes], repeats=f.repeats)
    common.write_report(out, task, result, rows, frontier.COLUMNS, frontier.plot,
                        notes=frontier.notes(result, rows))
  else:
    models = _trained(kinds, size, runs, f.train_steps, given, **data)
    text = _validation_text(f, size, data)
    triples = reversal.line_pairs(text, f.pairs, f.seed)
    rows = reversal.evaluate_completion(models, triples)
    result = {'task': task, 'pairs': len(triples), 'size': size,
              'text': f.text_file or 'validation split of the default corpus'}
    common.write_report(out, task, result, rows, ['model', 'query', 'n', 'exact_match',
                                                  'char_similarity'], reversal.plot_accuracy)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  f = flags.FLAGS
  kinds = [k for k in common.MODELS if k in f.models]
  unknown = sorted(set(f.models) - set(common.MODELS))
  try:
    if unknown or not kinds:
      raise ConfigError(f'--models: {", ".join(f.models)}; choose from {", ".join(common.MODELS)}.')
    run(f.task, kinds, f.out, f.size, f)
  except (ConfigError, FileNotFoundError, data_lib.DataError, sampling.SamplingError) as e:
    sys.exit(f'error: {e}')
  print(f'wrote {os.path.join(f.out, f.task)}.{{json,md,png}}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['task', 'out'])
  app.run(main)
