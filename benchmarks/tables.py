"""The one Markdown table writer of every benchmark, and how a number becomes a cell.

Tables are returned as lines, so that each benchmark puts its own header and notes
around them; docs/benchmarks.md collects them.
"""

from typing import Any, Sequence


def cell(value: Any, digits: int = 2) -> str:
  """A table cell: '-' for None, 'yes' / 'NO' for a bool, text as it is, else a number with
  `digits` decimals."""
  if value is None:
    return '-'
  if isinstance(value, bool):
    return 'yes' if value else 'NO'
  if isinstance(value, str):
    return value
  return f'{value:.{digits}f}'


def row_line(cells: Sequence[Any]) -> str:
  """'| a | b |'; an empty cell is a single space."""
  return '|' + ''.join(f' {c} |' if str(c) else ' |' for c in cells)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  """A Markdown table's lines: the header, the separator, one line per row.

  Cells are written with `str`: format numbers first (`cell`).
  """
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f'a row of {len(row)} cells under {len(header)} columns: {row}')
  return [row_line(header), '|' + '---|' * len(header)] + [row_line(r) for r in rows]
