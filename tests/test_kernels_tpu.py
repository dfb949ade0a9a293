"""The Pallas TPU kernel and a packed model compile for real TPU chips, without a TPU.

libtpu describes TPU v4 / v5e / v6e topologies on this CPU machine; programs are
lowered and compiled for one chip (or a 2x2 slice under shard_map) and inspected.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bitjax.infer import pack_model
from bitjax.kernels import tpu
from bitjax.models import Decoder, DecoderConfig
from bitjax.parallel import make_mesh

pytest.importorskip("libtpu", reason="TPU ahead-of-time compilation needs libtpu")
from bitjax.parallel.topology import topology_devices  # noqa: E402

INT8_MXU = {"v5e:2x2": True, "v6e:2x2": True, "v4:2x2x1": False}


def one_chip(topology):
  """A bitjax (data, fsdp, tensor) mesh over the first chip of `topology`."""
  return make_mesh(1, 1, 1, devices=topology_devices(topology)[:1])


def abstract(mesh, *arrays_or_shapes):
  sharding = NamedSharding(mesh, P())
  return [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in arrays_or_shapes]


def is_mosaic(compiled) -> bool:
  return "tpu_custom_call" in compiled.as_text()


@pytest.mark.parametrize("topology", list(INT8_MXU))
@pytest.mark.parametrize("dtype", [jnp.int8, jnp.bfloat16])
def test_kernel_compiles_for_the_chip(topology, dtype):
  """int8 activations on the int8 MXU (v5e, v6e) or through bf16 (v4); bf16 everywhere."""
  mesh = one_chip(topology)
  x = jax.ShapeDtypeStruct((8, 2560), dtype)
  packed = jax.ShapeDtypeStruct((2560 // 16, 6912), jnp.int32)
  fn = jax.jit(lambda x, p: tpu.matmul(x, p, int8_mxu=INT8_MXU[topology]))
  compiled = fn.lower(*abstract(mesh, x, packed)).compile()
  assert is_mosaic(compiled)
  out = compiled.memory_analysis().output_size_in_bytes
  assert out == 8 * 6912 * 4  # int32 or float32 sums


def test_kernel_under_shard_map_with_sharded_weights():
  """Weights split over `tensor` (columns), activations over `data`: each chip runs the kernel."""
  devices = np.array(topology_devices("v5e:2x2")).reshape(2, 2)
  mesh = Mesh(devices, ("data", "tensor"))
  matmul = jax.shard_map(lambda x, p: tpu.matmul(x, p), mesh=mesh,
                         in_specs=(P("data", None), P(None, "tensor")),
                         out_specs=P("data", "tensor"), check_vma=False)
  x = jax.ShapeDtypeStruct((64, 4096), jnp.int8, sharding=NamedSharding(mesh, P("data", None)))
  packed = jax.ShapeDtypeStruct((256, 14336), jnp.int32,
                                sharding=NamedSharding(mesh, P(None, "tensor")))
  compiled = jax.jit(matmul).lower(x, packed).compile()
  assert is_mosaic(compiled)
  # Each chip holds half the packed columns and half the rows of x.
  per_chip_args = compiled.memory_analysis().argument_size_in_bytes
  assert per_chip_args == 256 * 14336 * 4 // 2 + 64 * 4096 // 2


@pytest.mark.parametrize("topology", list(INT8_MXU))
def test_packed_decoder_forward_compiles(topology):
  """`auto` reads the target chip from the mesh in context: the Mosaic kernel, int8 MXU
  on v5e/v6e and the bf16 path on v4, although this host is a CPU."""
  cfg = DecoderConfig(precision="b1.58", vocab_size=512, hidden_size=256, num_layers=2,
                      num_heads=4, mlp_hidden_size=768, compute_dtype="bfloat16")
  # Packed on this CPU host for a TPU: without the int8 copies CPU serving would keep.
  model, report = pack_model(Decoder(cfg, rngs=nnx.Rngs(0)), unpacked=False)
  graphdef, state = nnx.split(model)
  mesh = one_chip(topology)
  tokens = jax.ShapeDtypeStruct((4, 16), jnp.int32)
  forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
  state_shapes = jax.tree.map(lambda a: abstract(mesh, a)[0], state)
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    compiled = forward.lower(state_shapes, *abstract(mesh, tokens)).compile()
  assert is_mosaic(compiled)
  state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
  # TPU layouts pad small arrays to whole tiles; nothing is unpacked into the arguments.
  arguments = compiled.memory_analysis().argument_size_in_bytes
  assert state_bytes <= arguments <= 1.05 * state_bytes + 2**16
  assert report.packed_bytes < report.bf16_bytes / 7
  assert dataclasses.asdict(report)["format"] == "bitjax-ternary-v1"
