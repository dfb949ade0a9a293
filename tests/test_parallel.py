"""Meshes and logical-axis shardings, on 8 virtual CPU devices in a subprocess."""

import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from bitjax.parallel import logical_to_spec, make_mesh


def test_logical_to_spec_uses_each_mesh_axis_once():
  assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
  assert logical_to_spec(("heads", "mlp")) == P("tensor", None)  # tensor already taken
  assert logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
  assert logical_to_spec(("norm",)) == P(None)
  with pytest.raises(ValueError, match="logical axis 'rows' has no rule"):
    logical_to_spec(("rows",))


def test_mesh_sizes_are_checked():
  mesh = make_mesh()  # one CPU device: everything 1
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="only one mesh axis may be -1 among config.mesh.data, config.mesh.fsdp"):
    make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="needs 4 devices per slice, but 1 are available"):
    make_mesh(data=2, fsdp=2)


SHARDED_FORWARD = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from bitjax.models import Decoder, DecoderConfig
    from bitjax.parallel import make_mesh, state_shardings

    cfg = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                        mlp_hidden_size=48, precision="b1.58", compute_dtype="float32")
    graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    shardings = state_shardings(state, mesh)
    layer = shardings["layers"][0]
    assert layer["attn"]["q_proj"]["kernel"].spec == P("fsdp", "tensor")
    assert layer["mlp"]["down_proj"]["kernel"].spec == P("tensor", "fsdp")
    assert layer["attn"]["q_proj"]["norm"]["scale"].spec == P(None)
    assert shardings["embed"]["embedding"].spec == P("tensor", "fsdp")
    sharded = jax.device_put(state, shardings)
    assert len(sharded["layers"][0]["attn"]["q_proj"]["kernel"].get_value().sharding.device_set) == 8
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 8)), jnp.int32)
    forward = lambda s, t: nnx.merge(graphdef, s)(t)
    expected = forward(state, tokens)
    got = jax.jit(forward)(sharded, tokens)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    print("ok")
""")


def test_decoder_parameters_shard_by_the_rules_and_compute_the_same():
  out = subprocess.run([sys.executable, "-c", SHARDED_FORWARD], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith("ok")
