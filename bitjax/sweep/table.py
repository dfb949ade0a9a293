"""The one table formatter of the sweep reports: columns as (header, width, cell text).

Every report table (the per-run and per-size scaling tables, `compare`'s comparison, the
seed table of small models) is a list of columns over a list of rows, so widths, the
header rule and markdown rendering live here once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Column:
  """`width` is a format spec of alignment and width ("<14", ">10"; unused in markdown);
  `text(row)` is the cell's text, already formatted."""
  header: str
  width: str
  text: Callable[[Any], str]


def format_table(columns: Sequence[Column], rows: Iterable, *, indent: str = "",
                 markdown: bool = False) -> str:
  """Header, rule and one line per row: fixed-width text, or a markdown table."""
  def line(cells) -> str:
    if markdown:
      return "| " + " | ".join(cells) + " |"
    return indent + "".join(f"{cell:{c.width}}" for c, cell in zip(columns, cells))

  header = line([c.header for c in columns])
  rule = "|---" * len(columns) + "|" if markdown else indent + "-" * (len(header) - len(indent))
  return "\n".join([header, rule, *(line([c.text(row) for c in columns]) for row in rows)])
