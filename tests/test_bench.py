"""experiments/bench/train_step.py runs with only what the GPU machine has, and reports OOM."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "bench", "train_step.py")
# The GPU machine has jax, flax, optax, numpy, orbax and chex, none of these.
MISSING_ON_GPU_MACHINE = ("ml_collections", "grain", "tensorflow_datasets", "tensorboardX",
                          "tqdm")


def load_bench():
  spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_train_step_bench_runs_tiny_without_the_data_stack(tmp_path):
  out = tmp_path / "table.txt"
  block = "; ".join(f"sys.modules[{name!r}] = None" for name in MISSING_ON_GPU_MACHINE)
  code = (f"import sys, runpy; {block}; sys.argv = [{SCRIPT!r}, '--size', 'tiny', "
          f"'--batch_sizes', '2', '--steps', '2', '--warmup', '1', '--out', {str(out)!r}]; "
          f"runpy.run_path({SCRIPT!r}, run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = out.read_text().splitlines()
  assert lines[2].split() == ["batch", "precision", "step", "ms", "tokens/s", "TFLOP/s", "MFU",
                              "b1.58/bf16", "compile", "s"]
  bf16, b158 = (line.split() for line in lines[3:5])
  assert bf16[:2] == ["2", "bf16"] and b158[:2] == ["2", "b1.58"]
  assert float(bf16[2]) > 0 and float(b158[-2]) > 0  # step ms; the b1.58/bf16 ratio


def test_a_batch_that_runs_out_of_memory_is_reported(monkeypatch):
  bench = load_bench()

  def time_step(cfg, batch_size, *args):
    if batch_size > 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB")
    return 0.5, 1.0

  monkeypatch.setattr(bench, "time_step", time_step)
  args = bench.parse_args(["--size", "tiny", "--batch_sizes", "4,8"])
  rows = bench.run(args)
  assert [row["status"] for row in rows] == ["ok", "ok", "OOM", "OOM"]
  assert rows[1]["ratio"] == 1.0
  assert "OOM" in bench.format_table(args, rows).splitlines()[-1]
