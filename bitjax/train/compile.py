"""`python -m bitjax compile`: one train step of any task compiled for a TPU slice on
this machine, with the memory each chip needs, the FLOPs per step, and whether it fits.

The step, state layout and mesh are the trainer's own (one code path): the config's task
gives the model class, loss, batch sharding and the abstract batch (`Task.batch_spec`),
built over the topology's devices from bitjax.parallel.topology instead of local ones.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from bitjax.parallel.chips import GIB, chip_hbm_bytes, peak_tflops
from bitjax.parallel.topology import (CompiledMemory, OutOfMemory, bytes_per_chip,
                                      compiled_flops, compiled_memory, out_of_memory,
                                      topology_devices)
from bitjax.train.config import model_config, resolve_config
from bitjax.train.optim import learning_rate_schedule, make_optimizer
from bitjax.train.step import jit_train_step, state_layout
from bitjax.train.tasks import get_task
from bitjax.train.trainer import make_config_mesh

ADAM_STATE_BYTES = 4 + 4 + 4  # float32 parameter, first and second moment


@dataclasses.dataclass(frozen=True)
class CompileReport:
  topology: str
  num_slices: int
  chips: int
  device_kind: str
  mesh: dict[str, int]
  task: str
  precision: str
  compute_dtype: str
  params: int
  batch_size: int
  splits_rows: bool  # the batch is split by rows over data x fsdp (a graph is replicated)
  batch_shapes: dict[str, tuple[int, ...]]  # one global batch (Task.batch_spec)
  remat: bool | None  # None: the model has no such option (MLP, GNN)
  scan_layers: bool | None
  memory: CompiledMemory  # per chip; estimated from the compiler's error if it ran out
  hbm: int | None  # per chip
  out_of_memory: OutOfMemory | None  # the compiler refused: more than the HBM needed
  compiled_flops: float | None  # per chip and step, XLA's cost-model estimate
  flops: float  # per step, all chips: the task's count (Task.train_flops_per_step)
  flops_counted_by: str  # how the task counts them

  @property
  def state_lower_bound(self) -> float:
    """Bytes per chip of parameters and both Adam moments in float32, perfectly sharded."""
    return self.params * ADAM_STATE_BYTES / self.chips

  @property
  def usable_hbm(self) -> int | None:
    """The compiler's figure where it gave one (a little under the nominal HBM)."""
    return self.out_of_memory.available if self.out_of_memory else self.hbm

  @property
  def fits(self) -> bool | None:
    if self.out_of_memory is not None:
      return False
    return None if self.hbm is None else self.memory.total <= self.hbm


def compile_train_step(config: ml_collections.ConfigDict, topology: str,
                       num_slices: int = 1) -> CompileReport:
  """Lower and compile the trainer's step of `config` (any task) for `num_slices` slices
  of `topology`, from abstract (sharded) state and batch: nothing is allocated."""
  config = resolve_config(config)
  model_cfg = model_config(config)
  if model_cfg.compute_dtype == "auto" and model_cfg.spec.compute_dtype is None:
    # "auto" means bfloat16 on accelerators; this machine's backend is not the target.
    model_cfg = dataclasses.replace(model_cfg, compute_dtype="bfloat16")
  task = get_task(config)
  devices = topology_devices(topology, num_slices)
  mesh = make_config_mesh(config, task, devices)
  tcfg = config.train
  tx = make_optimizer(config.optim, tcfg.steps)
  layout = state_layout(model_cfg, tx, tcfg.seed, mesh, task.model_class)
  batch_layout = task.batch_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=batch_layout)
           for name, spec in task.batch_spec().items()}
  step = jit_train_step(layout, tx, learning_rate_schedule(config.optim, tcfg.steps),
                        mesh, batch_layout, task.loss, tcfg.seed)
  lowered = step.lower(layout.abstract, batch)
  try:
    compiled, oom = lowered.compile(), None
  except Exception as e:  # jax's runtime error type moved between versions
    oom = out_of_memory(e)
    if oom is None:
      raise
  if oom is None:
    memory, flops = compiled_memory(compiled), compiled_flops(compiled)
  else:
    # The compiler stops before its report; the state and batch sizes are known exactly.
    state, arguments = bytes_per_chip(layout.abstract), bytes_per_chip((layout.abstract, batch))
    temporaries = oom.needed if oom.what == "temporaries" else oom.needed - arguments
    memory, flops = CompiledMemory(arguments, state, state, temporaries, 0), None
  device_kind = devices[0].device_kind
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(layout.abstract.params))
  return CompileReport(
      topology=topology, num_slices=num_slices, chips=len(devices), device_kind=device_kind,
      mesh=dict(mesh.shape), task=config.task, precision=model_cfg.precision,
      compute_dtype=jnp.dtype(model_cfg.dtype).name, params=params,
      batch_size=tcfg.batch_size, splits_rows=task.splits_rows,
      batch_shapes={name: tuple(spec.shape) for name, spec in batch.items()},
      remat=getattr(model_cfg, "remat", None),
      scan_layers=getattr(model_cfg, "scan_layers", None),
      memory=memory, hbm=chip_hbm_bytes(device_kind), out_of_memory=oom, compiled_flops=flops,
      flops=task.train_flops_per_step(model_cfg, layout.graphdef, layout.abstract.params, batch),
      flops_counted_by=task.flops_counted_by)


def fit_suggestions(report: CompileReport) -> list[str]:
  """What to change when the step does not fit, most effective first."""
  mesh, memory, hbm = report.mesh, report.memory, report.usable_hbm or 0
  batch_shards = mesh["data"] * mesh["fsdp"]
  state_per_chip = memory.arguments  # the donated train state and this chip's batch rows
  suggestions = []
  if mesh["data"] > 1 and state_per_chip > 2 * report.state_lower_bound:
    suggestions.append(
        f"shard the train state over the data axis too: --config.mesh.data=1 "
        f"--config.mesh.fsdp=-1 (state per chip {state_per_chip / GIB:.2f} GiB -> about "
        f"{report.state_lower_bound / GIB:.2f} GiB)")
  rows_per_chip = report.batch_size // batch_shards if report.splits_rows else 0
  if rows_per_chip > 1:
    room = hbm - (memory.total - memory.temporaries)
    fitting_rows = int(room // (memory.temporaries / rows_per_chip)) if room > 0 else 0
    if fitting_rows >= 1:
      suggestions.append(
          f"a smaller batch: --config.train.batch_size={fitting_rows * batch_shards} "
          f"({fitting_rows} rows per batch shard instead of {rows_per_chip}; estimated from "
          "temporaries growing with the batch)")
    else:
      suggestions.append(f"a smaller batch: --config.train.batch_size={batch_shards} "
                         "(one row per batch shard)")
  if report.remat is False:
    suggestions.append("recompute activations in the backward pass: --config.model.remat=True")
  suggestions.append(f"more chips (a larger --topology), or tensor parallelism "
                     f"(--config.mesh.tensor, now {mesh['tensor']})")
  return suggestions


def describe_batch(shapes: dict[str, tuple[int, ...]]) -> str:
  """"32 x 2048 (inputs, targets)": the arrays grouped by shape."""
  names_by_shape = {}
  for name, shape in shapes.items():
    names_by_shape.setdefault(shape, []).append(name)
  return ", ".join(f"{' x '.join(map(str, shape)) or 'scalar'} ({', '.join(names)})"
                   for shape, names in names_by_shape.items())


def describe_model(report: CompileReport) -> str:
  options = [report.precision, f"compute {report.compute_dtype}"]
  if report.remat is not None:
    options.append(f"remat {'on' if report.remat else 'off'}")
  if report.scan_layers is not None:
    options.append(f"blocks {'scanned' if report.scan_layers else 'unrolled'}")
  return f"{report.params / 1e6:,.1f}M parameters, {', '.join(options)}"


def format_report(report: CompileReport) -> str:
  gib = lambda n: f"{n / GIB:8.2f} GiB"
  memory, chips = report.memory, report.chips
  slices = f" x {report.num_slices} slices" if report.num_slices > 1 else ""
  hbm = f"{report.hbm / GIB:.1f} GiB HBM each" if report.hbm else "HBM unknown"
  oom = report.out_of_memory
  source = ("XLA buffer assignment" if oom is None else
            "estimated: the TPU compiler ran out of HBM before its report")
  lines = [
      f"{report.topology}{slices}: {chips} x {report.device_kind} ({hbm})",
      "mesh: " + " x ".join(f"{axis} {size}" for axis, size in report.mesh.items())
      + f"; batch {describe_batch(report.batch_shapes)}"
      + ("" if report.splits_rows else ", replicated"),
      f"model ({report.task}): {describe_model(report)}; parameters + Adam moments (float32) "
      f"need at least {report.state_lower_bound / GIB:.2f} GiB per chip",
      "",
      f"memory per chip ({source}):",
      f"  arguments   {gib(memory.arguments)}  train state shard and batch rows",
      f"  outputs     {gib(memory.outputs)}  of which {memory.aliased / GIB:.2f} GiB reuse "
      "the donated arguments",
      f"  temporaries {gib(memory.temporaries)}  activations, gradients, optimizer update",
      f"  code        {gib(memory.code)}",
      f"  total       {gib(memory.total)}"
      + (f"  {memory.total / report.hbm:.0%} of {report.hbm / GIB:.1f} GiB" if report.hbm else ""),
      "",
      f"FLOPs per step: {report.flops:.3e} {report.flops_counted_by}",
  ]
  if report.compiled_flops is not None and not report.splits_rows:
    lines.append(f"                {report.compiled_flops:.3e} compiled (XLA's cost model of "
                 "one chip, which computes the whole replicated batch)")
  elif report.compiled_flops is not None:
    loops = ("the scan over blocks and FSDP's windowed matmuls" if report.scan_layers else
             "FSDP's windowed matmuls")
    lines.append(f"                {report.compiled_flops * chips:.3e} compiled (XLA's cost "
                 f"model per chip x {chips} chips; it counts a loop body once, so {loops} "
                 "make it low; MFU uses the count above)")
  peak = peak_tflops(report.device_kind)
  if peak:
    ideal = report.flops / (chips * peak * 1e12)
    lines.append(f"step time at 100% of the {peak:g} TFLOP/s peak: {ideal * 1e3:.1f} ms "
                 f"({ideal / 0.4 * 1e3:.1f} ms at 40% MFU)")
  lines.append("")
  if report.fits is None:
    lines.append("fits: unknown (no HBM size for this chip)")
  elif report.fits:
    lines.append(f"fits: yes, {(report.hbm - memory.total) / GIB:.2f} GiB per chip to spare")
  else:
    lines.append(f"fits: NO, needs {memory.total / GIB:.2f} GiB per chip, "
                 f"{report.usable_hbm / GIB:.2f} GiB are available. Try:")
    lines += [f"  - {suggestion}" for suggestion in fit_suggestions(report)]
    if oom:
      lines.append(f"(compiler: {oom.message.splitlines()[0]})")
  return "\n".join(lines)
