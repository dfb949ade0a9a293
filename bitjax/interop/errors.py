"""The one error type of bitjax.interop: a single line naming the file and the problem."""

from __future__ import annotations


class InteropError(ValueError):
  """A checkpoint, workdir or output that cannot be converted; the message names the file."""
