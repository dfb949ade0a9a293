"""MLP, GNN, encoder and encoder-decoder: shapes, gradients, quantized values, overfitting,
permutation equivariance, padding independence, greedy decoding, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bitjax._compat import iter_modules
from bitjax.models import (GNN, EncDecConfig, Encoder, EncoderConfig, EncoderDecoder, GNNConfig,
                           MLPClassifier, MLPConfig, quantized_kernels)
from bitjax.nn import BitDense

QUANTIZED = ("b1.58", "b1.58-median", "1bit")
TRANSFORMER = dict(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                   mlp_hidden_size=24, compute_dtype="float32")
NODES, FEATURES, CLASSES = 12, 10, 3


def make_mlp(precision, **kw):
  cfg = MLPConfig(input_dim=FEATURES, num_classes=CLASSES, hidden_sizes=(32, 16),
                  precision=precision, compute_dtype="float32", **kw)
  return MLPClassifier(cfg, rngs=nnx.Rngs(0))


def make_gnn(precision, architecture="gcn", **kw):
  fields = dict(architecture=architecture, input_dim=FEATURES, num_classes=CLASSES,
                hidden_sizes=(16,) if architecture == "gcn" else (), precision=precision,
                compute_dtype="float32")
  return GNN(GNNConfig(**{**fields, **kw}), rngs=nnx.Rngs(0))


def make_encoder(precision, **kw):
  return Encoder(EncoderConfig(**TRANSFORMER, num_classes=CLASSES, precision=precision, **kw),
                 rngs=nnx.Rngs(0))


def make_encdec(precision, **kw):
  cfg = EncDecConfig(**{**TRANSFORMER, "precision": precision, **kw})
  return EncoderDecoder(cfg, rngs=nnx.Rngs(0))


def random_graph(rng, nodes=NODES, edges=20):
  """Undirected edge list (both directions, no self loops, no duplicates)."""
  pairs = {tuple(sorted(p)) for p in rng.integers(0, nodes, (edges, 2)) if p[0] != p[1]}
  pairs = np.array(sorted(pairs), np.int32).reshape(-1, 2)
  senders = np.concatenate([pairs[:, 0], pairs[:, 1]])
  receivers = np.concatenate([pairs[:, 1], pairs[:, 0]])
  return senders, receivers


def dense_normalized_adjacency(senders, receivers):
  """D^-1/2 (A + I) D^-1/2 as a dense numpy matrix, the reference for propagation."""
  adjacency = np.eye(NODES)
  adjacency[receivers, senders] = 1.0
  degree = adjacency.sum(1)
  return adjacency / np.sqrt(np.outer(degree, degree))


def tokens_and_mask(rng, batch=3, seq=7, vocab=40):
  tokens = rng.integers(3, vocab, (batch, seq))
  lengths = rng.integers(2, seq + 1, batch)
  lengths[0], lengths[-1] = seq, 2  # one row unpadded, one mostly padding
  mask = np.arange(seq) < lengths[:, None]
  return jnp.asarray(np.where(mask, tokens, 0), jnp.int32), jnp.asarray(mask)


def batch_for(kind, rng):
  """(model factory, inputs, forward(model, *inputs)) of one model kind."""
  if kind == "mlp":
    x = jnp.asarray(rng.standard_normal((6, FEATURES)), jnp.float32)
    return make_mlp, (x,), lambda m, x: m(x)
  if kind in ("sgc", "gcn"):
    senders, receivers = random_graph(rng)
    x = jnp.asarray(rng.standard_normal((NODES, FEATURES)), jnp.float32)
    return (lambda p, **kw: make_gnn(p, kind, **kw)), (x, senders, receivers), \
        lambda m, *a: m(*a)
  tokens, mask = tokens_and_mask(rng)
  if kind == "encoder":
    return make_encoder, (tokens, mask), \
        lambda m, t, k: jnp.concatenate([m.masked_lm(t, k).reshape(3, -1), m.classify(t, k)], 1)
  targets, target_mask = tokens_and_mask(rng, seq=5)
  return make_encdec, (tokens, targets, mask, target_mask), lambda m, *a: m(*a)


KINDS = ("mlp", "sgc", "gcn", "encoder", "encdec")
OUTPUT_SHAPES = {"mlp": (6, CLASSES), "sgc": (NODES, CLASSES), "gcn": (NODES, CLASSES),
                 "encoder": (3, 7 * 40 + CLASSES), "encdec": (3, 5, 40)}


@pytest.mark.parametrize("precision", ["fp32", "b1.58"])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_gradients_reach_every_parameter(rng, kind, precision):
  make, inputs, forward = batch_for(kind, rng)
  model = make(precision, **({"use_bias": True} if kind in ("mlp", "gcn") else {}))
  graphdef, params = nnx.split(model)
  apply = lambda p: forward(nnx.merge(graphdef, p), *inputs)
  out = jax.eval_shape(apply, params)
  assert out.shape == OUTPUT_SHAPES[kind] and out.dtype == jnp.float32
  cotangent = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(apply(p) * cotangent)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def test_encoder_heads_shapes(rng):
  tokens, mask = tokens_and_mask(rng)
  graphdef, state = nnx.split(make_encoder("b1.58"))

  def shape(method):
    return jax.eval_shape(lambda s: getattr(nnx.merge(graphdef, s), method)(tokens, mask),
                          state).shape

  assert shape("__call__") == (3, 7, 16)
  assert shape("masked_lm") == (3, 7, 40)
  assert shape("classify") == (3, CLASSES)
  with pytest.raises(ValueError, match="num_classes=0"):
    Encoder(EncoderConfig(**TRANSFORMER), rngs=nnx.Rngs(0)).classify(tokens, mask)


def test_encdec_layer_counts():
  assert len(make_encdec("bf16").decoder_layers) == 1
  model = make_encdec("bf16", num_layers=2, num_decoder_layers=3)
  assert len(model.encoder_layers) == 2 and len(model.decoder_layers) == 3
  assert model.decoder_layers[0].cross_attn is not None
  assert model.encoder_layers[0].cross_attn is None and not model.encoder_layers[0].attn.causal


@pytest.mark.parametrize("precision", QUANTIZED)
@pytest.mark.parametrize("kind", KINDS)
def test_every_hidden_projection_is_quantized_to_the_preset_values(kind, precision):
  make = {"mlp": make_mlp, "sgc": lambda p: make_gnn(p, "sgc"),
          "gcn": lambda p: make_gnn(p, "gcn"), "encoder": make_encoder,
          "encdec": make_encdec}[kind]
  model = make(precision)
  denses = [m for _, m in iter_modules(model) if isinstance(m, BitDense)]
  full_precision = [m for m in denses if not m.spec.quantized]
  # Only the encoder's classifier (a head) stays full precision; MLP/GNN quantize all.
  assert len(full_precision) == (1 if kind == "encoder" else 0)
  kernels = quantized_kernels(model)
  assert len(kernels) == len(denses) - len(full_precision) > 0
  for kernel in kernels.values():
    distinct = np.unique(np.asarray(kernel))
    scale = np.abs(distinct).max()
    allowed = [-scale, scale] if precision == "1bit" else [-scale, 0.0, scale]
    assert np.isin(distinct, allowed).all(), distinct


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_has_logical_axes(kind):
  make, *_ = batch_for(kind, np.random.default_rng(0))
  for path, var in nnx.to_flat_state(nnx.state(make("b1.58"), nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == var[...].ndim, path
    assert set(axes) <= {"vocab", "embed", "heads", "kv_heads", "mlp", "norm", None}, path


def jitted(model, method="__call__", **static):
  """model.method(*args, **static) as one compiled function of args (eager dispatch of
  many small ops is slower to run than one compile)."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, *args: getattr(nnx.merge(graphdef, state), method)(*args, **static))
  return functools.partial(run, state)


def fit(model, loss_fn, steps, lr=1e-2):
  """Adam on loss_fn(model) for `steps` steps; returns the trained model and the losses."""
  graphdef, params = nnx.split(model)
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return nnx.merge(graphdef, params), losses


def xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize("precision", ["bf16", "b1.58-median"])
def test_mlp_and_gnns_overfit_a_tiny_batch(rng, precision):
  x = jnp.asarray(rng.standard_normal((16, FEATURES)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, CLASSES, 16))
  mlp, _ = fit(make_mlp(precision), lambda m: xent(m(x), labels), 60, lr=0.03)
  assert (jitted(mlp)(x).argmax(-1) == labels).all()
  # Labels a 2-step propagation can express (random labels need not be: an isolated edge
  # gives both its nodes the same propagated features).
  senders, receivers = random_graph(rng)
  features = rng.standard_normal((NODES, 4 * NODES))
  a_hat = dense_normalized_adjacency(senders, receivers)
  node_labels = jnp.asarray(
      (a_hat @ a_hat @ features @ rng.standard_normal((4 * NODES, CLASSES))).argmax(-1))
  features = jnp.asarray(features, jnp.float32)
  for architecture in ("sgc", "gcn"):
    model = make_gnn(precision, architecture, input_dim=4 * NODES)
    trained, _ = fit(model, lambda m: xent(m(features, senders, receivers), node_labels), 80,
                     lr=0.05)
    np.testing.assert_array_equal(jitted(trained)(features, senders, receivers).argmax(-1),
                                  node_labels)


def test_transformers_overfit_a_tiny_batch(rng):
  tokens, mask = tokens_and_mask(rng, batch=4, seq=6)
  labels = jnp.asarray(rng.integers(0, CLASSES, 4))
  encoder, _ = fit(make_encoder("b1.58"), lambda m: xent(m.classify(tokens, mask), labels), 40)
  np.testing.assert_array_equal(jitted(encoder, "classify")(tokens, mask).argmax(-1), labels)

  targets = jnp.asarray(np.concatenate([rng.integers(3, 40, (4, 4)), np.full((4, 1), 2)], 1),
                        jnp.int32)  # four tokens, then EOS
  decoder_inputs = jnp.concatenate([jnp.ones((4, 1), jnp.int32), targets[:, :-1]], 1)
  encdec, losses = fit(make_encdec("b1.58"),
                       lambda m: xent(m(tokens, decoder_inputs, mask), targets), 100)
  assert losses[-1] < 0.1 * losses[0]
  np.testing.assert_array_equal(jitted(encdec, "greedy_decode", max_len=5)(tokens, mask),
                                targets)


def permute_graph(perm, features, senders, receivers):
  """The same graph with node i renamed inverse[i]: features row perm[j] becomes row j."""
  inverse = np.argsort(perm)
  return features[perm], inverse[senders], inverse[receivers]


@pytest.mark.parametrize("precision", ["fp32", "b1.58", "1bit"])
@pytest.mark.parametrize("architecture", ["sgc", "gcn"])
def test_gnn_is_equivariant_to_relabelling_nodes(rng, architecture, precision):
  senders, receivers = random_graph(rng)
  features = rng.standard_normal((NODES, FEATURES)).astype(np.float32)
  model = jitted(make_gnn(precision, architecture))
  out = np.asarray(model(jnp.asarray(features), senders, receivers))
  perm = rng.permutation(NODES)
  order = rng.permutation(len(senders))  # edge order does not matter either
  p_features, p_senders, p_receivers = permute_graph(perm, features, senders, receivers)
  permuted = model(jnp.asarray(p_features), p_senders[order], p_receivers[order])
  np.testing.assert_allclose(permuted, out[perm], rtol=1e-4, atol=1e-4)


def test_gnn_padding_changes_nothing(rng):
  """Padded nodes (no edges) and masked edges leave the real nodes' outputs unchanged."""
  senders, receivers = random_graph(rng)
  features = rng.standard_normal((NODES, FEATURES)).astype(np.float32)
  model = jitted(make_gnn("b1.58", "gcn"))
  out = model(jnp.asarray(features), senders, receivers)
  pad_nodes, pad_edges = 4, 6
  padded_features = np.concatenate([features, rng.standard_normal((pad_nodes, FEATURES))])
  junk = rng.integers(0, NODES + pad_nodes, (2, pad_edges))
  mask = np.arange(len(senders) + pad_edges) < len(senders)
  padded = model(jnp.asarray(padded_features, jnp.float32),
                 np.concatenate([senders, junk[0]]), np.concatenate([receivers, junk[1]]),
                 jnp.asarray(mask))
  np.testing.assert_allclose(padded[:NODES], out, rtol=1e-5, atol=1e-5)


def test_sgc_propagates_with_the_normalised_adjacency(rng):
  """SGC with K steps equals (D^-1/2 (A + I) D^-1/2)^K X W computed densely."""
  senders, receivers = random_graph(rng)
  features = rng.standard_normal((NODES, FEATURES))
  model = make_gnn("fp32", "sgc", propagation_steps=3)
  a_hat = dense_normalized_adjacency(senders, receivers)
  expected = np.linalg.matrix_power(a_hat, 3) @ features @ np.asarray(model.layers[0].kernel[...])
  np.testing.assert_allclose(model(jnp.asarray(features, jnp.float32), senders, receivers),
                             expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "1bit"])  # 1bit: one scale for the tensor
def test_encoder_outputs_do_not_depend_on_pad_tokens(rng, precision):
  tokens, mask = tokens_and_mask(rng)
  encoder = make_encoder(precision)
  model, classify = jitted(encoder), jitted(encoder, "classify")
  garbage = jnp.where(mask, tokens, jnp.asarray(rng.integers(3, 40, tokens.shape), jnp.int32))
  hidden, hidden_garbage = model(tokens, mask), model(garbage, mask)
  np.testing.assert_allclose(hidden_garbage, hidden, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(classify(garbage, mask), classify(tokens, mask),
                             rtol=1e-6, atol=1e-6)
  # Without a mask the pad id marks padding; a real token there does change the output.
  np.testing.assert_allclose(model(tokens), hidden, rtol=1e-6, atol=1e-6)
  assert not np.allclose(model(garbage), hidden)
  # Bidirectional: an early position sees a change at the end.
  changed = tokens.at[0, -1].set((tokens[0, -1] + 1 - 3) % 37 + 3)
  assert not np.allclose(model(changed, mask)[0, 0], hidden[0, 0])


def test_greedy_decoding_is_the_argmax_of_the_full_forward(rng):
  precision = "b1.58"
  tokens, mask = tokens_and_mask(rng)
  model = make_encdec(precision)
  max_len = 6
  out = np.asarray(jitted(model, "greedy_decode", max_len=max_len)(tokens, mask))
  assert out.shape == (3, max_len)
  decoder_inputs = np.concatenate([np.ones((3, 1), np.int32), out[:, :-1]], 1)
  teacher_forced = np.asarray(jitted(model)(tokens, decoder_inputs, mask).argmax(-1))
  # A random model may emit EOS early; the row is padded after it, so compare up to there.
  eos, pad = model.cfg.eos_id, model.cfg.pad_id
  for forced, greedy in zip(teacher_forced, out):
    end = list(greedy).index(eos) + 1 if eos in greedy else max_len
    np.testing.assert_array_equal(forced[:end], greedy[:end])
    assert (greedy[end:] == pad).all()
  # Declaring a token the model emits as EOS stops each row there and pads the rest.
  new_eos = int(out[0, 0])
  stopped = np.asarray(jitted(make_encdec(precision, eos_id=new_eos), "greedy_decode",
                              max_len=max_len)(tokens, mask))
  for row, full in zip(stopped, out):
    ends = {t: list(full).index(t) + 1 for t in (new_eos, eos) if t in full}
    end = min(ends.values(), default=max_len)  # `out` itself stopped at the default EOS
    np.testing.assert_array_equal(row[:end], full[:end])
    if new_eos in full[:end]:
      assert (row[end:] == pad).all()


@pytest.mark.parametrize("make_config, fields, message", [
    (MLPConfig, dict(hidden_sizes=()), "config.model.hidden_sizes=() must be a non-empty tuple"),
    (MLPConfig, dict(hidden_sizes=(8, 0)), "config.model.hidden_sizes=(8, 0) must be"),
    (MLPConfig, dict(input_dim=0), "config.model.input_dim=0 must be a positive integer"),
    (MLPConfig, dict(precision="b2"), "config.model.precision='b2' is not one of"),
    (GNNConfig, dict(architecture="gat"), "config.model.architecture='gat' is not one of"),
    (GNNConfig, dict(propagation_steps=0), "config.model.propagation_steps=0 must be a positive"),
    (EncoderConfig, dict(num_classes=-1), "config.model.num_classes=-1 must be an integer >= 0"),
    (EncoderConfig, dict(pad_id=264), "config.model.pad_id=264 must be a token id in [0, "
                                      "config.model.vocab_size=264)"),
    (EncoderConfig, dict(hidden_size=30), "config.model.hidden_size=30 is not divisible"),
    (EncDecConfig, dict(num_decoder_layers=0), "config.model.num_decoder_layers=0 must be None"),
    (EncDecConfig, dict(eos_id=-1), "config.model.eos_id=-1 must be a token id"),
    (EncDecConfig, dict(weight_quant="ternary"), "config.model.weight_quant='ternary'"),
])
def test_bad_model_config_names_the_field(make_config, fields, message):
  with pytest.raises(ValueError) as info:
    make_config(**fields)
  assert message in str(info.value)


def test_unknown_model_field_is_refused():
  with pytest.raises(ValueError, match=r"config.model has unknown fields \['hops'\]"):
    GNNConfig.from_mapping({"architecture": "sgc", "hops": 2})
  assert MLPConfig.from_mapping({"hidden_sizes": [8, 4]}).hidden_sizes == (8, 4)
