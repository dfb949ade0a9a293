"""Helpers of the notebooks in colab/: the runtime they run on, the sizes they pick for it,
FAST mode, wall-clock timing and showing saved plots. The notebooks stay thin; what they
compute lives in the library, and this module only adapts it to a notebook session."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass

from bitjax.timing import median_seconds  # noqa: F401  (the notebooks time kernels with it)

FAST_ENV = "BITJAX_FAST"  # "1": the short settings the tests run every notebook with
WORKDIR_ENV = "BITJAX_NOTEBOOK_WORKDIR"


def fast_mode(default: bool = False) -> bool:
  """FAST from the environment (BITJAX_FAST=1 or 0), else `default` (the notebook's switch)."""
  value = os.environ.get(FAST_ENV)
  return default if value is None else value.strip() not in ("", "0", "false", "False")


def notebook_workdir(name: str) -> str:
  """Where a notebook writes its runs: $BITJAX_NOTEBOOK_WORKDIR/name, else runs/notebooks/name
  (relative to the checkout the install cell changed into)."""
  return os.path.join(os.environ.get(WORKDIR_ENV, os.path.join("runs", "notebooks")), name)


@dataclass(frozen=True)
class Runtime:
  backend: str          # jax.default_backend(): cpu, gpu or tpu
  device_kind: str      # e.g. "cpu", "NVIDIA A100-SXM4-40GB", "TPU v5 lite"
  devices: int
  fast: bool

  def pick(self, choices: dict, fast=None):
    """The value for this runtime: `choices` maps a backend (cpu, gpu, tpu) to a value;
    in FAST mode `fast` wins when given (one small setting on every runtime)."""
    if self.fast and fast is not None:
      return fast
    return choices.get(self.backend, choices["cpu"])

  def describe(self) -> str:
    return (f"runtime: {self.backend} ({self.devices} x {self.device_kind}); "
            f"FAST={self.fast}")


def runtime(fast: bool = False) -> Runtime:
  """The accelerator JAX sees and FAST mode (the notebook's switch, overridden by $BITJAX_FAST)."""
  import jax

  devices = jax.devices()
  return Runtime(jax.default_backend(), devices[0].device_kind, len(devices), fast_mode(fast))


class Stopwatch:
  """The notebook's wall clock: started by its first code cell, read by its last."""

  def __init__(self):
    self.start = time.time()
    self.started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.start))

  def elapsed(self) -> float:
    return time.time() - self.start

  def report(self) -> str:
    seconds = self.elapsed()
    return (f"wall time of this run: {seconds:.0f} s ({int(seconds // 60)} min "
            f"{seconds % 60:.0f} s), started {self.started_at}")


def show(paths) -> None:
  """Display the PNG files among `paths` inline (saved plots, so the notebook keeps them)."""
  from IPython.display import Image, display

  for path in ([paths] if isinstance(paths, str) else paths):
    if str(path).endswith(".png"):
      display(Image(filename=str(path)))


def show_figure(fig) -> None:
  """Display a matplotlib Figure (built without pyplot) inline as a PNG."""
  import io

  from IPython.display import Image, display

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  display(Image(data=buffer.getvalue()))


# The trainer imports tqdm.auto, which warns in a kernel without ipywidgets; the notebooks
# turn progress bars off (train.progress_bar=False), so the warning says nothing there.
warnings.filterwarnings("ignore", message="IProgress not found")
