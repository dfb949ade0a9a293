"""The Colab notebook runs top to bottom (with few training steps) on this machine."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "colab")) if f.endswith(".ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_code_cells_run(name, tmp_path, monkeypatch):
  with open(os.path.join(ROOT, "colab", name)) as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  monkeypatch.chdir(ROOT)  # the notebook runs from the repository root
  monkeypatch.setenv("BITJAX_NOTEBOOK_STEPS", "4")
  monkeypatch.setenv("BITJAX_NOTEBOOK_WORKDIR", str(tmp_path))
  namespace = {}
  for index, cell in enumerate(cells):
    source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("!", "%")))
    exec(compile(source, f"{name}[{index}]", "exec"), namespace)
  assert {"bf16", "b1.58"} <= set(os.listdir(tmp_path))
