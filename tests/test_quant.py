"""Quantizers against an independent float64 numpy implementation of DESIGN.md section 2."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax import quant

EPS = 1e-5


def np_quantize_weight(w, method):
  w = np.asarray(w, np.float64)
  if method == "sign":
    return np.where(w - w.mean() > 0, 1, -1), np.abs(w).mean()
  stat = np.mean if method == "absmean" else np.median
  s = max(stat(np.abs(w)), EPS)
  return np.clip(np.round(w / s), -1, 1), s


def np_quantize_activation(x, bits, granularity):
  x = np.asarray(x, np.float64)
  q = 2 ** (bits - 1)
  absmax = (np.abs(x).max(axis=-1, keepdims=True) if granularity == "token" else np.abs(x).max())
  s = np.maximum(absmax, EPS) / (q - 1)
  return np.clip(np.round(x / s), -q, q - 1), s


def away_from_ties(ratio, tol=1e-3):
  """Where x / s is not within `tol` of a rounding boundary (float32 vs float64 may differ there)."""
  frac = np.abs(ratio) % 1.0
  return np.abs(frac - 0.5) > tol


def sample(rng, shape, dtype, kind):
  x = rng.standard_normal(shape) * rng.uniform(0.01, 3.0)
  if kind == "zeros":
    x = np.zeros(shape)
  elif kind == "huge":
    x = x * 1e30
  elif kind == "outliers":
    x[..., 0] *= 1000.0
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("method", ["absmean", "absmedian", "sign"])
@pytest.mark.parametrize("kind", ["normal", "zeros", "huge", "outliers"])
def test_quantize_weight_matches_numpy(rng, dtype, method, kind):
  w = sample(rng, (int(rng.integers(3, 70)), int(rng.integers(3, 70))), dtype, kind)
  codes, scale = quant.quantize_weight(w, method)
  ref_codes, ref_scale = np_quantize_weight(np.asarray(w, np.float32), method)
  assert codes.dtype == jnp.int8 and scale.dtype == jnp.float32 and scale.shape == ()
  np.testing.assert_allclose(float(scale), ref_scale, rtol=1e-5)
  allowed = {-1, 1} if method == "sign" else {-1, 0, 1}
  assert set(np.unique(np.asarray(codes)).tolist()) <= allowed
  ok = away_from_ties(np.asarray(w, np.float64) / ref_scale) if method != "sign" else (
      np.abs(np.asarray(w, np.float64) - np.asarray(w, np.float64).mean()) > 1e-6 * (1 + abs(ref_scale)))
  np.testing.assert_array_equal(np.asarray(codes)[ok], ref_codes[ok])
  assert ok.mean() > 0.9 or kind == "zeros"


def test_quantize_weight_none_is_identity(rng):
  w = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
  codes, scale = quant.quantize_weight(w, "none")
  np.testing.assert_array_equal(codes, w)
  assert float(scale) == 1.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("kind", ["normal", "zeros", "huge", "outliers"])
def test_quantize_activation_matches_numpy(rng, dtype, granularity, bits, kind):
  shape = (int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(2, 100)))
  x = sample(rng, shape, dtype, kind)
  codes, scale = quant.quantize_activation(x, bits, granularity)
  ref_codes, ref_scale = np_quantize_activation(np.asarray(x, np.float32), bits, granularity)
  assert codes.dtype == jnp.int8
  assert scale.shape == (shape[:-1] + (1,) if granularity == "token" else ())
  np.testing.assert_allclose(np.asarray(scale), ref_scale, rtol=1e-5)
  ok = away_from_ties(np.asarray(x, np.float64) / ref_scale)
  np.testing.assert_array_equal(np.asarray(codes)[ok], ref_codes[ok])
  q = 2 ** (bits - 1)
  assert np.asarray(codes).min() >= -q and np.asarray(codes).max() <= q - 1


def test_training_tips_reference_formulas(rng):
  """b1.58 = the paper's reference code (scale 1/mean|W|, 127/absmax per token), to float rounding."""
  w = rng.standard_normal((48, 32)).astype(np.float32)
  x = (rng.standard_normal((4, 48)) * 5).astype(np.float32)
  w_scale = 1.0 / np.maximum(np.abs(w).mean(), 1e-5)
  w_ref = np.clip(np.round(w * w_scale), -1, 1) / w_scale
  x_scale = 127.0 / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
  x_ref = np.clip(np.round(x * x_scale), -128, 127) / x_scale
  np.testing.assert_allclose(quant.weight_quant(jnp.asarray(w), "absmean"), w_ref, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(quant.activation_quant(jnp.asarray(x), 8, "token"), x_ref,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["absmean", "absmedian", "sign", "none"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_quant_forward_and_straight_through_gradient(rng, method, dtype):
  w = jnp.asarray(rng.standard_normal((9, 13)), dtype)
  upstream = jnp.asarray(rng.standard_normal((9, 13)), dtype)
  y, vjp = jax.vjp(lambda w: quant.weight_quant(w, method), w)
  codes, scale = quant.quantize_weight(w, method)
  assert y.dtype == dtype
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray((codes.astype(jnp.float32) * scale).astype(dtype),
                                        np.float32))
  (grad,) = vjp(upstream)
  np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(upstream, np.float32))


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_activation_quant_straight_through_gradient(rng, granularity):
  x = jnp.asarray(rng.standard_normal((3, 5, 17)) * 4, jnp.float32)
  upstream = jnp.asarray(rng.standard_normal((3, 5, 17)), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(quant.activation_quant(x, 8, granularity) * upstream))(x)
  np.testing.assert_array_equal(grad, upstream)
  # jit and higher-rank inputs take the same path.
  y = jax.jit(quant.activation_quant, static_argnums=(1, 2))(x, 8, granularity)
  codes, scale = quant.quantize_activation(x, 8, granularity)
  np.testing.assert_allclose(y, codes * scale, rtol=1e-6)


def test_presets_table():
  assert quant.PRECISIONS["b1.58"] == quant.QuantSpec("absmean", 8, "token")
  assert quant.PRECISIONS["b1.58-median"].weight == "absmedian"
  assert quant.PRECISIONS["1bit"] == quant.QuantSpec("sign", 8, "tensor")
  for name in ("bf16", "fp16", "fp32"):
    assert not quant.PRECISIONS[name].quantized
  spec = quant.resolve_precision("b1.58", act_bits=4)
  assert (spec.weight, spec.act_bits) == ("absmean", 4)
  assert quant.resolve_precision("b1.58", act_bits=0).act_bits is None
  assert quant.resolve_precision("bf16", weight_quant="absmean").quantized


def test_records_give_bits_packing_and_the_learning_rate_recipe():
  bits = {name: record.bits for name, record in quant.WEIGHT_QUANTIZERS.items()}
  assert bits == {"none": 16.0, "absmean": np.log2(3), "absmedian": np.log2(3), "sign": 1.0}
  assert {n: r.packing for n, r in quant.WEIGHT_QUANTIZERS.items()} == {
      "none": None, "absmean": "ternary", "absmedian": "ternary", "sign": "ternary"}
  assert sorted(quant.ACTIVATION_QUANTIZERS) == ["tensor", "token", "token_qb"]
  assert quant.PRECISIONS["1bit"].weight_bits == 1.0 and quant.PRECISIONS["bf16"].weight_bits == 16
  # The recipe of every preset and override is what `spec.quantized` chose before records.
  for name in quant.PRECISIONS:
    for weight in (None, *quant.WEIGHT_QUANTIZERS):
      for act_bits in (None, 0, 4, 8):
        spec = quant.resolve_precision(name, weight_quant=weight, act_bits=act_bits)
        assert spec.lr_recipe == ("low_bit" if spec.quantized else "full_precision"), spec
  assert quant.PRECISIONS["bf16"].lr_recipe == "full_precision"
  assert quant.resolve_precision("b1.58", act_bits=0).lr_recipe == "low_bit"


@pytest.mark.parametrize("call, message", [
    (lambda: quant.register_weight_quantizer(quant.WeightQuantizer("sign", None, 1.0)),
     "weight quantizer name='sign' is already registered"),
    (lambda: quant.register_activation_quantizer(
        quant.ActivationQuantizer("token", lambda x, bits: (x, 1.0))),
     "activation quantizer name='token' is already registered"),
    (lambda: quant.register_weight_quantizer(quant.PRECISIONS["b1.58"]),
     "is not a WeightQuantizer"),
    (lambda: quant.WeightQuantizer("int2", None, 2.0, packing="int2"),
     "packing='int2' is not one of ['ternary']"),
    (lambda: quant.WeightQuantizer("int2", None, 2.0, lr_recipe="fast"),
     "lr_recipe='fast' is not one of ['low_bit', 'full_precision']"),
])
def test_registries_refuse_bad_records(call, message):
  before = (dict(quant.WEIGHT_QUANTIZERS), dict(quant.ACTIVATION_QUANTIZERS))
  with pytest.raises(ValueError, match=re.escape(message)):
    call()
  assert (quant.WEIGHT_QUANTIZERS, quant.ACTIVATION_QUANTIZERS) == before


@pytest.mark.parametrize("call, message", [
    (lambda: quant.resolve_precision("b2"), "precision='b2' is not one of"),
    (lambda: quant.resolve_precision("b1.58", weight_quant="ternary"),
     "weight_quant='ternary' is not one of ['none', 'absmean', 'absmedian', 'sign']"),
    (lambda: quant.resolve_precision("b1.58", act_bits=1), "act_bits=1"),
    (lambda: quant.resolve_precision("b1.58", act_granularity="row"), "act_granularity='row'"),
    (lambda: quant.quantize_weight(jnp.ones(3), "round"), "method='round' is not one of"),
    (lambda: quant.quantize_activation(jnp.ones(3), 8, "channel"),
     "granularity='channel' is not one of ['token', 'tensor', 'token_qb']"),
])
def test_bad_quant_settings_name_the_field(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


@pytest.mark.parametrize("size", [1, 2, 3, 8, 1001, 4096])
def test_absmedian_scale_is_the_exact_median(rng, size):
  """The radix-selection median equals numpy's, ties and zeros included."""
  from bitjax.quant.quantizers import nonnegative_median

  x = np.abs(rng.normal(size=size)).astype(np.float32)
  x[: size // 3] = 0.0
  x[size // 3: size // 2] = x[-1]
  assert float(nonnegative_median(jnp.asarray(x))) == np.float32(np.median(x))


@pytest.mark.parametrize("bits", [4, 8])
def test_token_qb_scales_by_q_over_absmax(rng, bits):
  """`token_qb` (BitNet 2023 eq. 4, 2411.05882's layer): codes = clip(round(x * Q / absmax),
  -Q, Q-1) per token, scale absmax / Q, so a token's largest value lands on the clip."""
  q = 2 ** (bits - 1)
  x = rng.standard_normal((4, 6, 33)).astype(np.float32) * 3
  absmax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(EPS))
  expected = np.clip(np.round(x * (np.float32(q) / absmax)), -q, q - 1)
  codes, scale = quant.quantize_activation(jnp.asarray(x), bits, "token_qb")
  np.testing.assert_array_equal(codes, expected)
  np.testing.assert_allclose(scale, absmax / q, rtol=1e-7)
  row = np.abs(x[0, 0]).argmax()
  assert codes[0, 0, row] == (q - 1 if x[0, 0, row] > 0 else -q)
  upstream = rng.standard_normal(x.shape).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(quant.activation_quant(x, bits, "token_qb") * upstream))(
      jnp.asarray(x))
  np.testing.assert_array_equal(grad, upstream)


def test_b158_ln_preset_is_the_2411_05882_layer():
  spec = quant.PRECISIONS["b1.58-ln"]
  assert (spec.weight, spec.act_bits, spec.act_granularity) == ("absmean", 8, "token_qb")
  assert (spec.norm, spec.norm_eps, spec.bias) == ("layernorm", 1e-5, True)
  assert spec.lr_recipe == "low_bit" and spec.weight_bits == np.log2(3)
  # the other presets keep BitNet b1.58's layer: the model's norm, eps 1e-6, no bias
  for name in ("b1.58", "b1.58-median", "1bit", "bf16"):
    assert (quant.PRECISIONS[name].norm, quant.PRECISIONS[name].norm_eps,
            quant.PRECISIONS[name].bias) == (None, 1e-6, False)
