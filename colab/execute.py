"""Run the notebooks in colab/ top to bottom with nbclient, each in a kernel of its own.

    python colab/execute.py                    # every notebook, full mode; saves outputs
    python colab/execute.py 01_quickstart      # one
    python colab/execute.py --fast             # FAST mode; reports errors, saves nothing

Full mode saves each notebook with its outputs (what is committed) and writes the measured
wall time, the date and the machine into its top cell. The kernel's Python is a virtual
environment made for the run that sees this environment's packages after its own: it
sees the installed JAX and every dependency, so the notebooks' install cell installs this
checkout into that environment only (keeping JAX as it is) and never replaces the bitjax
that the machine's own environment has installed. tests/test_colab.py runs the notebooks the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

COLAB = os.path.dirname(os.path.abspath(__file__))
KERNEL_NAME = "bitjax-isolated"
COMMITTED_RUN = re.compile(r"^\*\*Committed run:\*\*.*$", re.M)


def notebooks() -> list[str]:
  return sorted(os.path.join(COLAB, f) for f in os.listdir(COLAB) if f.endswith(".ipynb"))


def make_kernel(root: str) -> str:
  """A virtual environment under `root` that sees this interpreter's packages after its own
  (a .pth file adds this interpreter's site directories, .pth files and all, the way
  --system-site-packages would, but also when this interpreter is itself a virtual
  environment), with no pip of its own (`python -m pip` is this environment's, installing
  into the new one), and a kernel spec for it; returns the JUPYTER_PATH entry that holds
  the spec. PYTHONPATH is cleared in the kernel, so bitjax is imported from what the
  install cell installed."""
  import site
  import sysconfig

  venv = os.path.join(root, "venv")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
  python = os.path.join(venv, "bin", "python")
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  outer = [d for d in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                                     sysconfig.get_paths()["platlib"]]) if os.path.isdir(d)]
  with open(os.path.join(purelib, "zz_outer_site.pth"), "w") as f:
    f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in outer) + "\n")
  spec_dir = os.path.join(root, "jupyter", "kernels", KERNEL_NAME)
  os.makedirs(spec_dir)
  with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
    json.dump({"argv": [python, "-m", "ipykernel_launcher", "-f",
                        "{connection_file}"],
               "display_name": "bitjax (isolated)", "language": "python",
               "env": {"PYTHONPATH": ""}}, f)
  return os.path.join(root, "jupyter")


@contextlib.contextmanager
def _environ(**values):
  old = {k: os.environ.get(k) for k in values}
  os.environ.update({k: v for k, v in values.items() if v is not None})
  try:
    yield
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _platforms() -> str | None:
  """JAX_PLATFORMS for the kernel: as set, else "cpu" on a machine with no GPU or TPU. The
  project's machines carry libtpu (the TPU compiler, for ahead-of-time compiles) without a
  TPU, and JAX's probe for one writes libtpu's errors into whichever cell runs first."""
  if os.environ.get("JAX_PLATFORMS") is not None:
    return None  # _environ leaves it as it is
  accelerator = shutil.which("nvidia-smi") or any(
      os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))
  return None if accelerator else "cpu"


def execute(path: str, jupyter_path: str, *, fast: bool, workdir: str | None = None,
            timeout: int = 3600, extra_env: dict | None = None):
  """Execute the notebook at `path` in the kernel of make_kernel, from its own folder (so
  its install cell finds the checkout). Returns (notebook node, wall seconds); a failing
  cell raises nbclient's CellExecutionError unless the caller reads the outputs instead."""
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(path, as_version=4)
  env = {"JUPYTER_PATH": jupyter_path, "BITJAX_FAST": "1" if fast else "0",
         "BITJAX_NOTEBOOK_WORKDIR": workdir, "JAX_PLATFORMS": _platforms(),
         **(extra_env or {})}
  with _environ(**env):
    start = time.time()
    NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=timeout, allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    seconds = time.time() - start
  return nb, seconds


def errors(nb) -> list[str]:
  """'cell N: ename: evalue' for every error output of the notebook."""
  return [f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
          for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
          for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} CPU cores, {cpu}"


def record_run(nb, seconds: float) -> None:
  """Write the measured wall time into the top cell and the notebook's metadata."""
  when = time.strftime("%Y-%m-%d", time.gmtime())
  runtime = next((line for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.get("outputs", []) for line in out.get("text", "").splitlines()
                  if line.startswith("runtime: ")), "runtime: ?")
  devices = re.search(r"\((.*)\)", runtime)  # bitjax.notebooks.Runtime.describe
  line = (f"**Committed run:** the outputs below are a full (not FAST) run of {when} on "
          f"{machine()} (JAX devices: {devices[1] if devices else '?'}), top to bottom in "
          f"{int(seconds // 60)} min {seconds % 60:.0f} s (kernel start to last cell, "
          f"measured by `colab/execute.py`; load average {os.getloadavg()[1]:.1f} over the "
          f"last 5 minutes of it, other jobs included).")
  nb.cells[0].source = COMMITTED_RUN.sub(line, nb.cells[0].source)
  nb.metadata["bitjax"] = {"fast": False, "wall_seconds": round(seconds, 1), "date": when,
                           "machine": machine(), "load_average_5min": os.getloadavg()[1]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="notebooks (file names or stems); default all")
  parser.add_argument("--fast", action="store_true", help="FAST mode; saves nothing")
  parser.add_argument("--workdir", help="where the notebooks write runs (default: a temporary "
                      "folder in FAST mode, runs/notebooks in full mode)")
  args = parser.parse_args(argv)
  paths = [p for p in notebooks() if not args.names or
           any(os.path.basename(p) in (n, n + ".ipynb") for n in args.names)]
  failed = 0
  with tempfile.TemporaryDirectory() as tmp:
    jupyter_path = make_kernel(tmp)
    workdir = args.workdir or (os.path.join(tmp, "runs") if args.fast else None)
    for path in paths:
      import nbformat

      stem = os.path.splitext(os.path.basename(path))[0]
      runs = os.path.join(workdir or os.path.join(COLAB, os.pardir, "runs", "notebooks"), stem)
      if not args.fast and os.path.isdir(runs) and os.listdir(runs):
        # A notebook reads finished runs back instead of training them: its wall time
        # would not be a full run's.
        print(f"{stem}: {os.path.normpath(runs)} holds runs of an earlier execution; remove "
              "it for a full, timed run", file=sys.stderr)
        return 2
      nb, seconds = execute(path, jupyter_path, fast=args.fast, workdir=workdir)
      problems = errors(nb)
      print(f"{os.path.basename(path)}: {seconds:.0f} s, "
            + (f"{len(problems)} errors: {problems}" if problems else "no errors"), flush=True)
      failed += bool(problems)
      if not args.fast and not problems:
        record_run(nb, seconds)
        nbformat.write(nb, path)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
