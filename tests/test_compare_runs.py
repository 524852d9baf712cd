"""scripts/compare_runs.py, run as a user runs it, on two small logged runs."""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

from tests.conftest import REPO_ROOT

METRICS = ('AP', 'AP50', 'AP75')


def _write_runs(tmp_path):
  ours, theirs = tmp_path / 'ours', tmp_path / 'd2'
  (ours / 'eval').mkdir(parents=True)
  theirs.mkdir()
  lines = [{'step': 20, 'total': 4.0, 'rpn_cls': 0.6, 'rpn_box': 0.1, 'cls': 1.0, 'box': 0.3,
            'mask': 0.7, 'learning_rate': 0.01},
           {'step': 40, 'total': 2.0, 'rpn_cls': 0.3, 'rpn_box': 0.05, 'cls': 0.5, 'box': 0.2,
            'mask': 0.5, 'learning_rate': 0.02}]
  # A resumed run logged step 40 again: the last line of a step wins.
  lines.append(dict(lines[-1], total=1.0))
  (ours / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  their_lines = [{'iteration': 19, 'total_loss': 5.0, 'loss_rpn_cls': 0.7, 'loss_rpn_loc': 0.2,
                  'loss_cls': 1.2, 'loss_box_reg': 0.4, 'loss_mask': 0.69, 'lr': 0.01},
                 {'iteration': 39, 'total_loss': 2.5, 'loss_rpn_cls': 0.4, 'loss_rpn_loc': 0.1,
                  'loss_cls': 0.6, 'loss_box_reg': 0.3, 'loss_mask': 0.6, 'lr': 0.02}]
  (theirs / 'metrics.json').write_text(''.join(json.dumps(x) + '\n' for x in their_lines))
  ours_ap = {'bbox': (0.61, 0.9, 0.7), 'segm': (0.6, 0.88, 0.71)}
  their_ap = {'bbox': (0.6, 0.91, 0.68), 'segm': (0.62, 0.9, 0.7)}
  (ours / 'eval' / 'metrics.json').write_text(
      json.dumps({t: dict(zip(METRICS, v)) for t, v in ours_ap.items()}))
  (theirs / 'eval.json').write_text(
      json.dumps({t: dict(zip(METRICS, v)) for t, v in their_ap.items()}))
  return ours, theirs


def _run(*args):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'compare_runs.py'),
                         *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=60)


def test_plot_and_table(tmp_path):
  ours, theirs = _write_runs(tmp_path)
  out = tmp_path / 'plot.svg'
  result = _run('--ours', ours, '--detectron2', theirs, '--out', out)
  assert result.returncode == 0, result.stderr
  assert '| bbox | AP | 0.610 | 0.600 | +0.010 |' in result.stdout
  assert '| segm | AP | 0.600 | 0.620 | -0.020 |' in result.stdout
  root = ElementTree.parse(out).getroot()
  lines = root.findall('{http://www.w3.org/2000/svg}polyline')
  assert len(lines) == 12  # 6 panels x 2 runs
  # Total loss panel: steps 20 and 40 on a 40-step axis, values on a 0..5 axis.
  first = [tuple(map(float, p.split(','))) for p in lines[0].get('points').split()]
  second = [tuple(map(float, p.split(','))) for p in lines[1].get('points').split()]
  assert len(first) == 2 and len(second) == 2
  x0, width = first[1][0] - (first[1][0] - first[0][0]) * 2, (first[1][0] - first[0][0]) * 2
  assert abs(second[1][0] - (x0 + width)) < 0.2  # Detectron2's iteration 39 is step 40
  # Ours at step 40 is 1.0 (the resumed line), Detectron2's 2.5: heights in that ratio.
  bottom = [float(r.get('y')) + float(r.get('height'))
            for r in root.findall('{http://www.w3.org/2000/svg}rect') if r.get('x')][0]
  assert abs((bottom - first[1][1]) / (bottom - second[1][1]) - 1.0 / 2.5) < 1e-2


def test_a_missing_log_is_one_line_naming_it(tmp_path):
  ours, theirs = _write_runs(tmp_path)
  (theirs / 'metrics.json').unlink()
  result = _run('--ours', ours, '--detectron2', theirs, '--out', tmp_path / 'plot.svg')
  assert result.returncode == 2
  assert re.fullmatch(r'compare_runs\.py: \S+metrics\.json: no such file .*\n', result.stderr)
