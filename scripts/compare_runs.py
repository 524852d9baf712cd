"""Draws our training run's loss curves beside Detectron2's, and tables both runs' AP.

  python scripts/compare_runs.py --ours workdir/side_by_side/ours \
      --detectron2 workdir/side_by_side/detectron2 --out docs/side_by_side_shapes.svg

Reads our <ours>/metrics.jsonl (mean of the steps since the previous line) and
<ours>/eval/metrics.json, and Detectron2's <detectron2>/metrics.json (its JSONWriter:
each loss the median of the last 20 iterations) and <detectron2>/eval.json
(scripts/detectron2_shapes.py). Writes one SVG with a panel per loss (no plotting
library: a few polylines) and prints the AP table in Markdown.
"""

import argparse
import json
import os
import sys

# (our name, Detectron2's name, panel title)
LOSSES = (('total', 'total_loss', 'total'), ('rpn_cls', 'loss_rpn_cls', 'RPN objectness'),
          ('rpn_box', 'loss_rpn_loc', 'RPN boxes'), ('cls', 'loss_cls', 'classification'),
          ('box', 'loss_box_reg', 'box regression'), ('mask', 'loss_mask', 'mask'))
COLORS = {'ours': '#1f77b4', 'Detectron2': '#d62728'}


def read_json_lines(path: str) -> list[dict]:
  """The objects of a JSON-lines file, one per line; a clear error naming the file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (has the run logged any steps?)')
  with open(path) as f:
    try:
      return [json.loads(line) for line in f if line.strip()]
    except json.JSONDecodeError as error:
      raise ValueError(f'{path}: not JSON lines ({error})') from None


def curves(ours: list[dict], theirs: list[dict]) -> dict[str, dict[str, list]]:
  """{panel title: {'ours': [(step, value)], 'Detectron2': [(step, value)]}}.

  A step logged twice (a resumed run) keeps its last value; Detectron2's iteration i is
  the step after i + 1 updates, as our step numbers count them.
  """
  out = {}
  for name, their_name, title in LOSSES:
    mine = {line['step']: line[name] for line in ours if name in line}
    other = {line['iteration'] + 1: line[their_name] for line in theirs if their_name in line}
    out[title] = {'ours': sorted(mine.items()), 'Detectron2': sorted(other.items())}
  return out


def svg(panels: dict[str, dict[str, list]], width: int = 900, columns: int = 3) -> str:
  """Small multiples: one panel per loss, steps on x, linear y from 0, a legend on top."""
  rows = -(-len(panels) // columns)
  panel_w, panel_h, pad = width // columns, 220, 40
  height = rows * panel_h + 30
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
  for i, (label, color) in enumerate(COLORS.items()):
    parts.append(f'<line x1="{10 + 110 * i}" y1="14" x2="{35 + 110 * i}" y2="14" '
                 f'stroke="{color}" stroke-width="2"/>'
                 f'<text x="{40 + 110 * i}" y="18">{label}</text>')
  for index, (title, series) in enumerate(panels.items()):
    x0 = (index % columns) * panel_w + pad
    y0 = 30 + (index // columns) * panel_h + 20
    w, h = panel_w - pad - 10, panel_h - 60
    points = [p for values in series.values() for p in values]
    if not points:
      continue
    max_step = max(s for s, _ in points) or 1
    max_value = max(v for _, v in points) or 1.0
    parts.append(f'<text x="{x0}" y="{y0 - 6}" font-weight="bold">{title}</text>')
    parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" '
                 f'stroke="#999"/>')
    parts.append(f'<text x="{x0 - 4}" y="{y0 + 8}" text-anchor="end">{max_value:.3g}</text>'
                 f'<text x="{x0 - 4}" y="{y0 + h}" text-anchor="end">0</text>'
                 f'<text x="{x0 + w}" y="{y0 + h + 14}" text-anchor="end">{max_step}</text>'
                 f'<text x="{x0}" y="{y0 + h + 14}">step 0</text>')
    for label, values in series.items():
      coords = ' '.join(f'{x0 + w * s / max_step:.1f},{y0 + h * (1 - v / max_value):.1f}'
                        for s, v in values)
      parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS[label]}" '
                   f'stroke-width="1.5"/>')
  parts.append('</svg>')
  return '\n'.join(parts) + '\n'


def ap_table(ours: dict, theirs: dict) -> str:
  """Markdown rows: bbox and segm AP, AP50, AP75 of both runs and their difference."""
  lines = ['| task | metric | ours | Detectron2 | ours - Detectron2 |', '|---|---|---|---|---|']
  for task in ('bbox', 'segm'):
    for metric in ('AP', 'AP50', 'AP75'):
      a, b = ours[task][metric], theirs[task][metric]
      lines.append(f'| {task} | {metric} | {a:.3f} | {b:.3f} | {a - b:+.3f} |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ours', required=True, help='our training workdir')
  parser.add_argument('--detectron2', required=True, help="scripts/detectron2_shapes.py's --out")
  parser.add_argument('--out', required=True, help='the SVG to write')
  args = parser.parse_args(argv)
  try:
    panels = curves(read_json_lines(os.path.join(args.ours, 'metrics.jsonl')),
                    read_json_lines(os.path.join(args.detectron2, 'metrics.json')))
    with open(os.path.join(args.ours, 'eval', 'metrics.json')) as f:
      ours = json.load(f)
    with open(os.path.join(args.detectron2, 'eval.json')) as f:
      theirs = json.load(f)
  except (OSError, ValueError) as error:
    print(f'compare_runs.py: {error}', file=sys.stderr)
    return 2
  with open(args.out, 'w') as f:
    f.write(svg(panels))
  print(ap_table(ours, theirs))
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
