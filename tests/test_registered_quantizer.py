"""A weight quantizer added in one place only (`bitjax.quant.register_weight_quantizer`):
per-output-channel absmean ternary. It quantizes as a float64 numpy reference says,
validates as `config.model.weight_quant`, trains a decoder and a GNN through the trainer,
counts its per-column scales in the weight memory, and packs for serving."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax._compat import iter_modules
from bitjax.infer import pack_model
from bitjax.models import Decoder, DecoderConfig, quantized_kernels, weight_memory_bits
from bitjax.nn import BitDense
from bitjax.quant import (WEIGHT_QUANTIZERS, WeightQuantizer, quantize_weight,
                          register_weight_quantizer, resolve_precision, ternary_around,
                          weight_quant)
from bitjax.train import train_and_evaluate
from bitjax.train.config import load_config

from test_quant import EPS, away_from_ties
from test_train import restore_model, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "absmean_per_channel"


@pytest.fixture
def per_channel():
  """The registration, undone afterwards so every other test sees the usual registry."""
  register_weight_quantizer(WeightQuantizer(
      NAME, ternary_around(lambda magnitudes: jnp.mean(magnitudes, axis=0)), math.log2(3),
      packing="ternary", lr_recipe="low_bit"))
  yield NAME
  del WEIGHT_QUANTIZERS[NAME]


def np_per_channel(w):
  w = np.asarray(w, np.float64)
  scale = np.maximum(np.abs(w).mean(axis=0), EPS)
  return np.clip(np.round(w / scale), -1, 1), scale


def train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_quantizes_per_column_and_validates_by_name(rng, per_channel):
  w = jnp.asarray(rng.standard_normal((int(rng.integers(3, 90)), int(rng.integers(2, 40))))
                  * rng.uniform(0.01, 3.0, (1, 1)), jnp.float32)
  w = w.at[:, 0].set(0.0)  # a dead column keeps the floor scale
  codes, scale = quantize_weight(w, per_channel)
  ref_codes, ref_scale = np_per_channel(w)
  assert codes.dtype == jnp.int8 and scale.shape == (w.shape[1],)
  np.testing.assert_allclose(scale, ref_scale, rtol=1e-5)
  ok = away_from_ties(np.asarray(w, np.float64) / ref_scale)
  np.testing.assert_array_equal(np.asarray(codes)[ok], ref_codes[ok])
  y, vjp = jax.vjp(lambda w: weight_quant(w, per_channel), w)
  np.testing.assert_allclose(np.asarray(y)[ok], (ref_codes * ref_scale)[ok], rtol=1e-5)
  np.testing.assert_array_equal(vjp(jnp.ones_like(w))[0], np.ones(w.shape))

  spec = resolve_precision("b1.58", weight_quant=per_channel)
  assert spec.quantized and spec.weight_bits == math.log2(3) and spec.lr_recipe == "low_bit"
  # Weight-only, under a full-precision preset: the record's recipe still decides.
  assert resolve_precision("bf16", weight_quant=per_channel).lr_recipe == "low_bit"
  with pytest.raises(ValueError, match=rf"weight_quant='absmean_channel' is not one of .*"
                                       rf"'{per_channel}'"):
    resolve_precision("b1.58", weight_quant="absmean_channel")


def test_memory_counts_one_scale_per_column_and_serving_matches_training(rng, per_channel):
  cfg = DecoderConfig(precision="b1.58", weight_quant=per_channel, vocab_size=96, hidden_size=64,
                      num_layers=2, num_heads=4, mlp_hidden_size=160, compute_dtype="float32")
  model = Decoder(cfg, rngs=nnx.Rngs(int(rng.integers(1 << 16))))
  kernels = {id(m.kernel): m.kernel.shape for _, m in iter_modules(model)
             if isinstance(m, BitDense) and m.spec.quantized}
  params = [v for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  want = sum(math.prod(v.shape) * math.log2(3) + 32 * v.shape[1] if id(v) in kernels
             else 16 * math.prod(v.shape) for v in params)
  assert len(kernels) == 2 * 7 and weight_memory_bits(model) == pytest.approx(want, rel=1e-12)

  layer = BitDense(200, 48, spec=cfg.spec, rngs=nnx.Rngs(int(rng.integers(1 << 16))))
  served = nnx.clone(layer)
  served.serve("interpret")
  assert served.scale.shape == (48,) and served.scale.get_metadata()["out_sharding"] == ("mlp",)
  x = jnp.asarray(rng.standard_normal((3, 5, 200)), jnp.float32)
  want, got = np.asarray(layer(x)), np.asarray(served(x))
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_trains_a_nano_decoder_that_packs(per_channel, tmp_path):
  config = small_config(tmp_path / "tfds", "b1.58", **{
      "model.weight_quant": per_channel, "train.steps": 40, "train.eval_every": 40,
      "train.checkpoint_every": 40, "train.log_every": 10, "optim.warmup_steps": 5})
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(config, workdir)
  losses = [r["loss"] for r in train_records(workdir)]
  assert np.isfinite(summary["eval_loss"]) and losses[-1] < losses[0] - 0.5, losses
  model = restore_model(config, workdir)
  kernel = np.asarray(quantized_kernels(model)["layers/0/mlp/up_proj"])
  column_scales = np.abs(kernel).max(axis=0)
  assert len(np.unique(column_scales)) > kernel.shape[1] // 2  # trained with per-column scales
  np.testing.assert_array_equal(np.abs(kernel) / column_scales, np.round(np.abs(kernel)
                                                                        / column_scales))

  packed, report = pack_model(model, backend="xla")
  assert report.layers == 7 * config.model.num_layers
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 16)))
  want, got = np.asarray(model(tokens)), np.asarray(packed(tokens))
  # An activation code may round the other way between the paths (see tests/test_infer.py).
  assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()


def test_trains_a_gnn(per_channel, tmp_path):
  def run(name, **overrides):
    config = load_config(os.path.join(ROOT, "configs", "gnn.py:karate_club,architecture=gcn,"
                                                       "precision=b1.58"),
                         {"train.steps": 20, "train.eval_every": 20, "train.log_every": 1,
                          "train.checkpoint_every": 20, **overrides})
    workdir = str(tmp_path / name)
    return train_and_evaluate(config, workdir), [r["loss"] for r in train_records(workdir)]

  summary, losses = run("per_channel", **{"model.weight_quant": per_channel})
  per_tensor, per_tensor_losses = run("per_tensor")
  assert summary["weight_memory_bits"] > per_tensor["weight_memory_bits"]  # the column scales
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert losses != per_tensor_losses and losses != run("bf16", **{"model.precision": "bf16"})[1]
