"""Ahead-of-time compiles for TPU slices on this CPU machine (needs libtpu: the `tpu` extra)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason='AOT tests need libtpu: pip install -e ".[dev,tpu]"')

from bitjax.models import DecoderConfig, train_flops_per_token  # noqa: E402
from bitjax.parallel.chips import GIB, chip_hbm_bytes, peak_tflops  # noqa: E402
from bitjax.parallel.topology import (CompiledMemory, out_of_memory, topology_devices,  # noqa: E402
                                      topology_mesh)
from bitjax.train.compile import CompileReport, compile_train_step, format_report  # noqa: E402
from bitjax.train.config import load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
LM_CONFIG = os.path.join(CONFIGS, "lm.py")


def test_topology_mesh_lays_out_the_slice_chips():
  mesh = topology_mesh("v5e:4x4", fsdp=4)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 4, "tensor": 1}
  device = mesh.devices.flat[0]
  assert device.platform == "tpu" and device.device_kind == "TPU v5 lite"
  assert chip_hbm_bytes(device.device_kind) == 16 * GIB
  assert chip_hbm_bytes("TPU v5") == 95 * GIB  # v5p, not v5e's prefix match
  # One table gives both the HBM and the peak FLOP/s of a chip.
  assert (peak_tflops("TPU v5 lite"), peak_tflops("TPU v5")) == (197.0, 459.0)
  assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and chip_hbm_bytes("cpu") is None
  two_slices = topology_mesh("v5e:2x2", data=1, fsdp=-1, dcn_data=2, num_slices=2)
  assert dict(two_slices.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  # The slow (DCN) axis crosses slices, the fast ones stay within one.
  assert {d.slice_index for d in two_slices.devices[0].flat} == {0}


def test_bad_topologies_are_named():
  with pytest.raises(ValueError, match=r"--topology='v9:4x4' must be GENERATION:SHAPE with "
                                       r"GENERATION one of \['v4', 'v5e', 'v5p', 'v6e'\]"):
    topology_devices("v9:4x4")
  with pytest.raises(ValueError, match="config.mesh.data=3 .* needs 3 devices per slice, but 16"):
    topology_mesh("v5e:4x4", data=3)


def test_compiler_out_of_memory_errors_are_read():
  oom = out_of_memory(RuntimeError(
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (33.02G) exceeds available HBM (15.75G)."))
  assert (oom.what, oom.needed, oom.available) == ("temporaries", int(33.02 * GIB),
                                                   int(15.75 * GIB))
  oom = out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space "
                                   "hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity."))
  assert (oom.what, oom.needed) == ("total", int(20.5 * GIB))
  assert out_of_memory(RuntimeError("INVALID_ARGUMENT: bad shape")) is None


def test_a_step_that_does_not_fit_gets_suggestions():
  report = CompileReport(
      topology="v5e:4x4", num_slices=1, chips=16, device_kind="TPU v5 lite",
      mesh={"data": 16, "fsdp": 1, "tensor": 1}, task="lm", precision="b1.58",
      compute_dtype="bfloat16", params=778_000_000, batch_size=512, splits_rows=True,
      batch_shapes={"inputs": (512, 2048), "targets": (512, 2048)}, remat=False,
      scan_layers=False,
      memory=CompiledMemory(int(8.7 * GIB), int(8.7 * GIB), int(8.7 * GIB), 33 * GIB, 0),
      hbm=16 * GIB, out_of_memory=None, compiled_flops=None, flops=5.5e15,
      flops_counted_by="analytic")
  text = format_report(report)
  assert "batch 512 x 2048 (inputs, targets)" in text
  assert "fits: NO, needs 41.70 GiB per chip, 16.00 GiB are available" in text
  assert "--config.mesh.data=1 --config.mesh.fsdp=-1" in text
  assert "--config.train.batch_size=112" in text  # 7 rows per chip fit beside the state
  assert "--config.model.remat=True" in text


def test_cli_compile_needs_a_topology_and_names_a_bad_one():
  env = {**os.environ, "PYTHONPATH": ROOT}
  run = lambda *args: subprocess.run([sys.executable, "-m", "bitjax", "compile", *args],
                                     capture_output=True, text=True, cwd=ROOT, env=env,
                                     timeout=300)
  out = run(f"--config={LM_CONFIG}:nano")
  assert out.returncode != 0 and "`compile` needs --config and --topology" in out.stderr
  out = run(f"--config={LM_CONFIG}:nano", "--topology=v5e:4x4", "--config.mesh.data=3")
  assert out.returncode != 0
  assert "bad config: mesh config.mesh.data=3" in out.stderr


@pytest.mark.slow
def test_700m_b158_step_compiles_for_v5e_4x4_and_fits():
  """The paper's 700M b1.58 model, FSDP over the 16 chips, two sequences per chip."""
  config = load_config(f"{LM_CONFIG}:700m,precision=b1.58",
                       {"mesh.data": 1, "mesh.fsdp": -1, "train.batch_size": 32})
  report = compile_train_step(config, "v5e:4x4")
  print(format_report(report))
  memory = report.memory
  assert report.chips == 16 and report.mesh == {"data": 1, "fsdp": 16, "tensor": 1}
  assert report.compute_dtype == "bfloat16" and report.remat and report.scan_layers
  assert "blocks scanned" in format_report(report)
  # Parameters plus two Adam moments in float32, spread over the chips, are a floor.
  state = report.params * 3 * 4 / 16
  assert 700e6 < report.params < 800e6
  assert state <= memory.arguments < 1.1 * state  # the state shard (and the batch rows)
  assert memory.aliased >= state  # the donated state is updated in place
  assert state < memory.total < 16 * GIB and report.fits
  cfg = DecoderConfig.from_mapping(config.model)
  assert report.flops == train_flops_per_token(cfg, 2048) * 32 * 2048
  assert report.compiled_flops > 0


@pytest.mark.slow
@pytest.mark.parametrize("spec, task, model, batch", [
    ("encoder.py", "mlm", "remat off", "16 x 128 (tokens, mask, targets)"),
    ("encdec.py", "seq2seq", "remat off", "16 x 128 (inputs, input_mask), 16 x 32 (targets, "
     "target_mask, decoder_inputs)"),
    ("mlp.py", "classify_tabular", "bf16, compute float32;", "64 x 64 (features), 64 (labels, "
     "weights)"),
    ("gnn.py", "node_classification", "bf16, compute float32;", "2708 x 1433 (features), "
     "2708 (labels, weights)"),
])
def test_every_task_family_compiles_for_v5e_2x2(spec, task, model, batch):
  """Each task's step and abstract batch (Task.batch_spec), from its default config."""
  report = compile_train_step(load_config(os.path.join(CONFIGS, spec)), "v5e:2x2")
  text = format_report(report)
  print(text)
  assert report.task == task and report.chips == 4 and report.fits
  assert f"model ({task}):" in text and model in text and batch in text
  assert report.flops > 0 and report.memory.total > 0
  assert ("analytic" if task == "lm" else "traced") in report.flops_counted_by
  if task == "node_classification":  # one graph, replicated over the 4 chips
    assert not report.splits_rows and "replicated" in text
