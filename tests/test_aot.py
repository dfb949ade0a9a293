"""Ahead-of-time compiles for TPU slices on this CPU machine (needs libtpu: the `tpu` extra)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason='AOT tests need libtpu: pip install -e ".[dev,tpu]"')

from bitjax.models import DecoderConfig, train_flops_per_token  # noqa: E402
from bitjax.parallel.aot import (GIB, CompiledMemory, chip_hbm_bytes, out_of_memory,  # noqa: E402
                                 topology_devices, topology_mesh)
from bitjax.train.aot import CompileReport, compile_train_step, format_report  # noqa: E402
from bitjax.train.config import load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")


def test_topology_mesh_lays_out_the_slice_chips():
  mesh = topology_mesh("v5e:4x4", fsdp=4)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 4, "tensor": 1}
  device = mesh.devices.flat[0]
  assert device.platform == "tpu" and device.device_kind == "TPU v5 lite"
  assert chip_hbm_bytes(device.device_kind) == 16 * GIB
  assert chip_hbm_bytes("TPU v5") == 95 * GIB  # v5p, not v5e's prefix match
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
      mesh={"data": 16, "fsdp": 1, "tensor": 1}, precision="b1.58", compute_dtype="bfloat16",
      params=778_000_000, batch_size=512, seq_len=2048, remat=False, scan_layers=False,
      memory=CompiledMemory(int(8.7 * GIB), int(8.7 * GIB), int(8.7 * GIB), 33 * GIB, 0),
      hbm=16 * GIB, out_of_memory=None, compiled_flops=None, analytic_flops=5.5e15)
  text = format_report(report)
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
  assert report.analytic_flops == train_flops_per_token(cfg, 2048) * 32 * 2048
  assert report.compiled_flops > 0
