"""Meshes, logical-axis shardings, multi-host helpers, and sharded training on 8 virtual
CPU devices (in subprocesses) against one device."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bitjax.parallel import (logical_to_spec, make_mesh, process_batch_block,
                             with_logical_constraint)
from bitjax.parallel.multihost import distributed_requested, explicit_process_ids
from multidevice import json_result, run_on_8_devices


def test_logical_to_spec_uses_each_mesh_axis_once():
  assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
  assert logical_to_spec(("heads", "mlp")) == P("tensor", None)  # tensor already taken
  assert logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
  assert logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  assert logical_to_spec(("norm",)) == P(None)
  with pytest.raises(ValueError, match="logical axis 'rows' has no rule"):
    logical_to_spec(("rows",))


def test_mesh_sizes_are_checked_naming_the_field():
  mesh = make_mesh()  # one CPU device: everything 1
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="only one mesh axis may be -1 among config.mesh.data, "
                                       "config.mesh.fsdp"):
    make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match=r"config.mesh.data=2 x config.mesh.fsdp=2 x "
                                       r"config.mesh.tensor=1 needs 4 devices per slice, but 1"):
    make_mesh(data=2, fsdp=2)
  with pytest.raises(ValueError, match=r"config.mesh.tensor=0 must be a positive integer or -1"):
    make_mesh(tensor=0)
  with pytest.raises(ValueError, match=r"config.mesh.dcn_data=2 x .* needs 2 slices, but 1"):
    make_mesh(dcn_data=2)


def model_variants():
  from bitjax.models import (Decoder, DecoderConfig, EncDecConfig, Encoder, EncoderConfig,
                             EncoderDecoder, GNN, GNNConfig, MLPClassifier, MLPConfig)
  return [(Decoder, DecoderConfig(precision="bf16", tie_embeddings=True, num_layers=1)),
          (Decoder, DecoderConfig(precision="b1.58", tie_embeddings=False, num_layers=1)),
          (Encoder, EncoderConfig(precision="b1.58", num_classes=3, num_layers=1)),
          (EncoderDecoder, EncDecConfig(precision="b1.58", num_layers=1)),
          (Decoder, DecoderConfig(precision="b1.58", num_layers=2, scan_layers=True)),
          (EncoderDecoder, EncDecConfig(precision="bf16", num_layers=2, num_decoder_layers=3,
                                        scan_layers=True)),
          (MLPClassifier, MLPConfig(precision="bf16", use_bias=True)),
          (GNN, GNNConfig(precision="b1.58")),
          (GNN, GNNConfig(precision="bf16", architecture="gcn", hidden_sizes=(16,)))]


def test_every_parameter_of_every_model_has_logical_axes():
  from flax import nnx

  for model_class, cfg in model_variants():
    model = nnx.eval_shape(lambda: model_class(cfg, rngs=nnx.Rngs(0)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      axes = var.get_metadata().get("out_sharding")
      assert axes is not None and len(axes) == len(var.shape), (model_class, path, axes)
      logical_to_spec(axes)  # every name has a rule


def test_activation_constraint_is_a_no_op_without_a_mesh():
  x = jnp.ones((4, 8, 16))
  assert with_logical_constraint(x, ("batch", "length", "embed")) is x
  lowered = jax.jit(lambda x: with_logical_constraint(x, ("batch", "length", "embed")))
  assert "sharding_constraint" not in lowered.lower(x).as_text()


def test_distributed_is_requested_by_flag_or_environment():
  assert not distributed_requested("auto", {})
  assert distributed_requested("on", {}) and not distributed_requested("off", {
      "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert distributed_requested("auto", {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert distributed_requested("auto", {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"})
  assert not distributed_requested("auto", {"TPU_WORKER_HOSTNAMES": "localhost"})
  assert distributed_requested("auto", {"SLURM_NTASKS": "4"})
  # What jax sets after probing libtpu on a machine without a TPU.
  assert not distributed_requested("auto", {"TPU_WORKER_HOSTNAMES": (
      "WARNING: could not determine TPU worker hostnames or IP addresses, please set env var "
      "`TPU_WORKER_HOSTNAMES` manually, otherwise libtpu.so may not properly initialize.")})
  with pytest.raises(ValueError, match=r"--distributed='yes' is not one of \['auto', 'on', "):
    distributed_requested("yes", {})


def test_process_ids_come_from_the_environment_when_given():
  assert explicit_process_ids({}) == {}
  assert explicit_process_ids({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}) == {
      "num_processes": 4, "process_id": 3}
  with pytest.raises(ValueError, match="got only JAX_PROCESS_ID"):
    explicit_process_ids({"JAX_PROCESS_ID": "1"})
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=4 is not in \[0, JAX_NUM_PROCESSES=4\)"):
    explicit_process_ids({"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "4"})
  with pytest.raises(ValueError, match="must be integers"):
    explicit_process_ids({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})


def test_one_process_feeds_the_whole_batch():
  mesh = make_mesh()
  assert process_batch_block(NamedSharding(mesh, P(("data", "fsdp"))), (8, 16)) == (0, 1)


SHARDED_TRAINING = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, numpy as np
    from bitjax.models import Decoder, DecoderConfig
    from bitjax.parallel import global_batch, make_mesh
    from bitjax.train.config import default_config
    from bitjax.train.optim import learning_rate_schedule, make_optimizer
    from bitjax.train.step import jit_train_step, state_layout
    from bitjax.train.tasks.lm import next_token_loss, token_batch_sharding

    MESHES = {"one_device": dict(devices=jax.devices()[:1]), "data": dict(data=8),
              "fsdp": dict(data=1, fsdp=8), "tensor": dict(data=1, tensor=8),
              "mixed": dict(data=2, fsdp=2, tensor=2)}
    # Blocks stacked for a scan start from other random weights: compared with each other.
    SCANNED = {"one_device_scanned": MESHES["one_device"], "mixed_scanned": MESHES["mixed"]}
    STEPS, BATCH, SEQ = 4, 8, 16
    optim = default_config().optim
    optim.update(schedule="constant", lr=1e-2, warmup_steps=0)
    # Learnable windows (each token is the previous plus one), so the loss moves.
    starts = np.random.default_rng(0).integers(0, 64, (STEPS, BATCH, 1))
    windows = ((starts + np.arange(SEQ + 1)) % 64).astype(np.int32)
    cfg = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                        mlp_hidden_size=64, precision=sys.argv[1], compute_dtype="float32")
    tx = make_optimizer(optim, STEPS)
    schedule = learning_rate_schedule(optim, STEPS)
    spec = lambda array: str(array.sharding.spec)
    results = {}
    for name, mesh_args in {**MESHES, **SCANNED}.items():
      mesh = make_mesh(**mesh_args)
      scanned = name in SCANNED
      layout = state_layout(dataclasses.replace(cfg, num_layers=2, scan_layers=True) if scanned
                            else cfg, tx, 0, mesh, Decoder)
      batches = token_batch_sharding(mesh, BATCH, SEQ)
      step = jit_train_step(layout, tx, schedule, mesh, batches, next_token_loss)
      state, losses = layout.init(), []
      for window in windows:
        batch = global_batch({"inputs": window[:, :-1], "targets": window[:, 1:]}, batches, BATCH)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
      adam = state.opt_state[1][0]
      layer, moments = ((state.params["layers"], adam.mu["layers"]) if scanned else
                        (state.params["layers"][0], adam.mu["layers"][0]))
      results[name] = {
          "losses": losses,
          "q_proj": spec(layer["attn"]["q_proj"]["kernel"][...]),
          "down_proj": spec(layer["mlp"]["down_proj"]["kernel"][...]),
          "embedding": spec(state.params["embed"]["embedding"][...]),
          "norm": spec(state.params["final_norm"]["scale"][...]),
          "q_proj_adam_mu": spec(moments["attn"]["q_proj"]["kernel"][...]),
          "adam_count": spec(adam.count), "step": spec(state.step),
          "q_proj_shard": layer["attn"]["q_proj"]["kernel"][...].addressable_shards[0].data.shape,
          "devices": len(layer["attn"]["q_proj"]["kernel"][...].sharding.device_set)}
    print(json.dumps(results))
""")
PRECISIONS = ("bf16", "b1.58")
# float32 compute; b1.58's rounding to ternary and int8 amplifies reduction-order noise.
LOSS_RTOL = {"bf16": 1e-5, "b1.58": 5e-4}


@pytest.fixture(scope="module")
def sharded_runs():
  """Four train steps per mesh and precision; both precisions at once on the two cores."""
  processes = {p: run_on_8_devices(SHARDED_TRAINING, p) for p in PRECISIONS}
  return {p: json_result(process) for p, process in processes.items()}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mesh", ["data", "fsdp", "tensor", "mixed"])
def test_sharded_training_gives_the_losses_of_one_device(sharded_runs, precision, mesh):
  runs = sharded_runs[precision]
  reference = runs["one_device"]["losses"]
  assert reference[-1] < reference[0] - 0.2  # it learns
  np.testing.assert_allclose(runs[mesh]["losses"], reference, rtol=LOSS_RTOL[precision])
  assert runs[mesh]["devices"] == 8


def test_parameters_and_optimizer_state_shard_by_the_rules(sharded_runs):
  mixed = sharded_runs["b1.58"]["mixed"]
  assert mixed["q_proj"] == mixed["q_proj_adam_mu"] == str(P("fsdp", "tensor"))
  assert mixed["down_proj"] == str(P("tensor", "fsdp"))
  assert mixed["embedding"] == str(P("tensor", "fsdp"))
  assert mixed["norm"] == str(P(None))
  assert mixed["adam_count"] == mixed["step"] == str(P())  # scalars replicated
  shards = {mesh: run["q_proj_shard"] for mesh, run in sharded_runs["bf16"].items()}
  assert shards == {"one_device": [32, 32], "data": [32, 32], "fsdp": [4, 32],
                    "tensor": [32, 4], "mixed": [16, 16], "one_device_scanned": [2, 32, 32],
                    "mixed_scanned": [2, 16, 16]}
  scanned = sharded_runs["b1.58"]["mixed_scanned"]
  assert scanned["q_proj"] == scanned["q_proj_adam_mu"] == str(P(None, "fsdp", "tensor"))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sharded_training_of_scanned_blocks_gives_the_losses_of_one_device(sharded_runs,
                                                                           precision):
  """Two blocks stacked on a `layers` axis (replicated) and run by a scan, on 2x2x2."""
  runs = sharded_runs[precision]
  reference = runs["one_device_scanned"]["losses"]
  assert reference[-1] < reference[0] - 0.2
  np.testing.assert_allclose(runs["mixed_scanned"]["losses"], reference,
                             rtol=LOSS_RTOL[precision])
