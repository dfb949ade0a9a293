"""The notebooks in colab/: each runs top to bottom in FAST mode, its install cell included
(in local mode it installs this checkout), in a kernel of its own; the install cell keeps an
installed JAX; the committed notebooks carry a full run's outputs and no errors."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NAMES = sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb"))
_spec = importlib.util.spec_from_file_location("colab_execute", os.path.join(COLAB, "execute.py"))
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

# Text each notebook's FAST run must print: its computed results, not only its headings.
EXPECTED = {
    "01_quickstart.ipynb": ["b1.58 / bf16 perplexity ratio", "=== b1.58: Decoder at step 4",
                            "of the largest |logit|", "greedy tokens are identical",
                            "packed 14 layers"],
    "02_quantizers_and_kernels.ipynb": ["equal to the formula at 100.0000% of weights",
                                        "max |dL/dW - G| = 0.0", "ternary exact: True",
                                        "zero share / scale"],
    "03_scaling_curves.ipynb": ["Scaling fits", "seeds per (size, precision)",
                                "published (BitNet b1.58", "nano-b1.58-seed=1"],
    "04_small_models.ipynb": [" runs in ", "vs bf16 over", "paper: SGC (K=2) on Cora",
                              "configs/gnn.py:dataset=csbm,architecture=sgc"],
}


def _text(nb) -> str:
  return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))


def _pngs(nb) -> int:
  return sum("image/png" in out.get("data", {}) for cell in nb.cells
             if cell.cell_type == "code" for out in cell.get("outputs", []))


def _install_cell(name: str) -> str:
  return next(c.source for c in nbformat.read(os.path.join(COLAB, name), as_version=4).cells
              if c.cell_type == "code")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
  """One isolated kernel environment for the notebooks (colab/execute.py's): the install
  cell installs this checkout into it, never into the environment running the tests."""
  return execute.make_kernel(str(tmp_path_factory.mktemp("kernel")))


@pytest.fixture(scope="module")
def fast_env(tmp_path_factory):
  """XLA settings that only make the FAST runs compile sooner: the cheaper CPU optimisation
  level (as experiments/small_models/run.sh uses) and one persistent compilation cache for
  the four notebooks, whose small runs compile many of the same programs."""
  return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1",
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}


def test_every_notebook_is_expected_and_listed_in_the_readme():
  assert NAMES == sorted(EXPECTED)
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  repo = re.search(r'^BITJAX_REPO = "https://github.com/([^"]+)"', _install_cell(NAMES[0]),
                   re.M)[1]
  for name in NAMES:
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/colab/{name}"
    assert badge in readme, name
    top = nbformat.read(os.path.join(COLAB, name), as_version=4).cells[0].source
    assert badge in top and "colab-badge.svg" in top, name
    assert _install_cell(name) == _install_cell(NAMES[0]), f"{name}: install cell differs"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_in_fast_mode(name, kernel, fast_env, tmp_path):
  nb, seconds = execute.execute(os.path.join(COLAB, name), kernel, fast=True,
                                workdir=str(tmp_path), extra_env=fast_env)
  print(f"{name}: {seconds:.0f} s")
  assert not execute.errors(nb), execute.errors(nb)
  install = "".join(out.get("text", "") for out in nb.cells[1].outputs)
  assert f"bitjax installed from {ROOT};" in install, install
  assert "not reinstalled" in install, install
  text = _text(nb)
  for expected in EXPECTED[name]:
    assert expected in text, f"{name}: {expected!r} not printed"
  assert "FAST=True" in text and _pngs(nb) >= 1


def test_install_cell_keeps_the_installed_jax(tmp_path):
  """The install cell in local mode, in a fresh environment that sees this machine's
  packages (as a Colab runtime's JAX is there before the cell): pip installs bitjax from
  this checkout and resolves its dependencies, but JAX, jaxlib and libtpu stay the ones
  installed (same versions, imported from the same files, nothing JAX in the environment),
  and the bitjax install of the environment running the tests is left as it was."""
  probe = ("import importlib.metadata as m, json, jax; print(json.dumps({'jax': jax.__version__, "
           "'jax_file': jax.__file__, 'bitjax': str(m.distribution('bitjax')._path)}))")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  before = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                     capture_output=True, text=True).stdout)
  execute.make_kernel(str(tmp_path))
  python = os.path.join(tmp_path, "venv", "bin", "python")
  cell = tmp_path / "install_cell.py"
  cell.write_text(_install_cell(NAMES[0]))
  result = subprocess.run([python, str(cell)], cwd=COLAB, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"keeping the installed jax {before['jax']}" in result.stdout, result.stdout
  installed = next(l for l in result.stdout.splitlines() if l.startswith("Successfully installed"))
  assert not re.search(r"\b(jax|jaxlib|libtpu|jax-cuda\d+-\w+)-\d", installed), installed
  assert not glob.glob(os.path.join(tmp_path, "venv", "lib", "python*", "site-packages", "jax*"))
  after = subprocess.run([python, "-c", "import bitjax, jax; print(jax.__version__, jax.__file__, "
                          "bitjax.__file__)"], env=env, check=True, capture_output=True,
                         text=True).stdout.split()
  assert after[:2] == [before["jax"], before["jax_file"]]
  assert after[2] == os.path.join(ROOT, "bitjax", "__init__.py")
  again = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                    capture_output=True, text=True).stdout)
  assert again == before


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_carries_a_full_run(name):
  path = os.path.join(COLAB, name)
  assert os.path.getsize(path) < 1.5e6
  nb = nbformat.read(path, as_version=4)
  assert not execute.errors(nb), execute.errors(nb)
  assert nb.metadata.get("bitjax", {}).get("fast") is False, "not a full run"
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
  assert re.search(r"\*\*Committed run:\*\* the outputs below are a full .* in \d+ min \d+ s",
                   nb.cells[0].source)
  text = _text(nb)
  assert "FAST=False" in text and "wall time of this run" in text and _pngs(nb) >= 1
