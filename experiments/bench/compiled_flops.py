"""Why XLA's compiled FLOP count differs from the analytic one under FSDP on TPU.

  python experiments/bench/compiled_flops.py      # libtpu, no TPU; about 5 min on 2 cores

Compiles the trainer's step of a 2-layer decoder for a TPU slice (as `python -m bitjax
compile` does) over data-parallel and FSDP meshes, with and without remat, and prints
XLA's cost-model FLOPs (per chip x chips) over the analytic count
(bitjax.models.train_flops_per_token), with the number of windowed-einsum loops the SPMD
partitioner made (`windowed_dot_general` while bodies: collective matmuls). XLA's cost
model counts a loop body once, not once per trip, so those loops make it undercount.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from types import SimpleNamespace

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bitjax.models import DecoderConfig, train_flops_per_token  # noqa: E402
from bitjax.parallel.topology import compiled_flops, topology_mesh  # noqa: E402
from bitjax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from bitjax.train.step import jit_train_step, state_layout  # noqa: E402
from bitjax.train.tasks import get_task  # noqa: E402

OPTIM = SimpleNamespace(schedule="constant", lr=1.5e-3, stage2_lr=1e-3, stage1_end_lr=None,
                        warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                        grad_clip=1.0)
MESHES = {"data": dict(data=-1), "fsdp": dict(data=1, fsdp=-1)}


def compiled_over_analytic(topology: str, mesh_name: str, remat: bool, batch: int,
                           seq_len: int) -> tuple[float, int]:
  """(XLA FLOPs x chips / analytic FLOPs, windowed-einsum loops) for one train step."""
  cfg = DecoderConfig(vocab_size=512, hidden_size=512, num_layers=2, num_heads=4,
                      mlp_hidden_size=1024, tie_embeddings=False, precision="bf16",
                      compute_dtype="bfloat16", remat=remat)
  task = get_task(SimpleNamespace(task="lm", train=SimpleNamespace(batch_size=batch,
                                                                   seq_len=seq_len, seed=0)))
  mesh = topology_mesh(topology, **MESHES[mesh_name])
  tx = make_optimizer(OPTIM, 100)
  layout = state_layout(cfg, tx, 0, mesh, task.model_class)
  batches = task.batch_sharding(mesh)
  abstract_batch = {name: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=batches)
                    for name, spec in task.batch_spec().items()}
  step = jit_train_step(layout, tx, learning_rate_schedule(OPTIM, 100), mesh, batches,
                        task.loss)
  compiled = step.lower(layout.abstract, abstract_batch).compile()
  analytic = train_flops_per_token(cfg, seq_len) * batch * seq_len
  loops = len(set(re.findall(r"body=%([\w.\-]*windowed_dot_general[\w.\-]*)",
                             compiled.as_text())))
  return compiled_flops(compiled) * mesh.size / analytic, loops


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topologies", default="v5e:2x2,v5e:4x4")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=2048)
  args = parser.parse_args(argv)
  jax.config.update("jax_platforms", "cpu")  # only the TPU compiler is needed
  print(f"2-layer decoder (hidden 512, GLU 1024, 4 heads), batch {args.batch} x "
        f"{args.seq_len}, bf16, AdamW; XLA FLOPs x chips / analytic FLOPs")
  print(f"{'topology':>10}{'mesh':>6}{'remat':>7}{'XLA/analytic':>14}{'windowed loops':>16}")
  for topology in args.topologies.split(","):
    for mesh_name in MESHES:
      for remat in (False, True):
        ratio, loops = compiled_over_analytic(topology, mesh_name, remat, args.batch,
                                              args.seq_len)
        print(f"{topology:>10}{mesh_name:>6}{str(remat):>7}{ratio:>14.3f}{loops:>16}",
              flush=True)


if __name__ == "__main__":
  main()
