"""experiments/bench/train_step.py runs with only what the GPU machine has, and reports OOM."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import pytest

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
          f"'--batch_sizes', '2', '--steps', '2', '--warmup', '1', '--breakdown', '--scan_layers', "
          f"'--out', {str(out)!r}]; "
          f"runpy.run_path({SCRIPT!r}, run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = out.read_text().splitlines()
  assert "blocks scanned" in lines[0]
  assert lines[2].split() == ["batch", "precision", "step", "ms", "tokens/s", "TFLOP/s", "MFU",
                              "b1.58/bf16", "XLA", "GB", "compile", "s", "fwd", "ms",
                              "fwd+bwd", "ms", "optim", "ms"]
  bf16, b158 = (line.split() for line in lines[3:5])
  assert bf16[:2] == ["2", "bf16"] and b158[:2] == ["2", "b1.58"]
  assert float(bf16[2]) > 0 and float(b158[6]) > 0  # step ms; the b1.58/bf16 ratio
  for row in (bf16, b158):
    step_ms, fwd_ms, fwd_bwd_ms, optim_ms = map(float, (row[2], *row[-3:]))
    assert fwd_ms > 0 and fwd_bwd_ms > 0
    assert optim_ms == pytest.approx(step_ms - fwd_bwd_ms, abs=0.11)  # rounded to 0.1 ms


def test_a_batch_that_runs_out_of_memory_is_reported(monkeypatch):
  bench = load_bench()

  def time_step(cfg, batch_size, *args):
    if batch_size > 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB")
    return {"step_s": 0.5, "compile_s": 1.0, "xla_bytes": 2e9}

  monkeypatch.setattr(bench, "time_step", time_step)
  args = bench.parse_args(["--size", "tiny", "--batch_sizes", "4,8"])
  rows = bench.run(args)
  assert [row["status"] for row in rows] == ["ok", "ok", "OOM", "OOM"]
  assert rows[1]["ratio"] == 1.0
  assert "OOM" in bench.format_table(args, rows).splitlines()[-1]


def test_profile_summary_sums_device_kernels_by_kind(tmp_path):
  """A Chrome trace as jax.profiler writes it: host events are left out, numbered copies of
  a kernel pooled, and each kind's time per step is the sum of its kernels."""
  bench = load_bench()
  run = tmp_path / "plugins" / "profile" / "2026_01_01"
  run.mkdir(parents=True)
  kernels = {"sm90_xmma_gemm_bf16": 60000.0, "loop_multiply_fusion_3": 5000.0,
             "loop_multiply_fusion_12": 7000.0, "input_reduce_fusion": 3000.0,
             "flash_fprop_kernel": 9000.0, "copy_transpose.4": 1000.0}
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
            {"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction", "ts": 0, "dur": 5000.0}]
  events += [{"ph": "X", "pid": 2, "tid": 7, "name": name, "ts": 0, "dur": dur}
             for name, dur in kernels.items()]
  with gzip.open(run / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  times = bench.device_kernel_times(str(tmp_path))
  assert times == {"sm90_xmma_gemm_bf16": 60000.0, "loop_multiply_fusion": 12000.0,
                   "input_reduce_fusion": 3000.0, "flash_fprop_kernel": 9000.0,
                   "copy_transpose": 1000.0}
  table = bench.format_kernel_times(times, steps=2).splitlines()
  assert table[0].split()[-3:] == ["42.50", "ms/step", "100.0%"]  # 85 ms over 2 steps
  by_kind = {line[:64].strip(): float(line.split()[-3]) for line in table[1:5]}
  assert by_kind == {"matmul": 30.0, "other fusions": 7.5, "attention": 4.5,
                     "copy / transpose": 0.5}
  assert bench.device_kernel_times(str(tmp_path / "empty")) == {}
