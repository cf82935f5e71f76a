"""experiments/colab_quickstart.ipynb runs: its code cells, in order, minus shell lines."""

import json
import os

import matplotlib

from conftest import REPO

matplotlib.use('Agg')


def test_quickstart_notebook_code_cells_run(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))  # its dataset cache goes to a scratch home
  monkeypatch.chdir(REPO)
  with open(os.path.join(REPO, 'experiments', 'colab_quickstart.ipynb'), encoding='utf-8') as f:
    notebook = json.load(f)
  namespace = {}
  for cell in notebook['cells']:
    if cell['cell_type'] != 'code':
      continue
    source = ''.join(line for line in cell['source'] if not line.lstrip().startswith(('!', '%')))
    exec(compile(source, 'colab_quickstart.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['summary']['step'] == 60
  assert os.path.exists(os.path.join(namespace['workdir'], 'metrics.jsonl'))
