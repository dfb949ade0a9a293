"""Matmul FLOPs counted from traced programs (bitjax.train.flops) against hand counts and
the decoder's closed formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.models import (Decoder, DecoderConfig, Encoder, EncoderConfig, MLPClassifier,
                           MLPConfig, train_flops_per_token)
from bitjax.train.flops import (dot_general_flops, forward_matmul_flops,
                                train_matmul_flops)
from bitjax.train.tasks.lm import next_token_loss


def test_dot_general_counts_two_flops_per_multiply_add(rng):
  batch, m, k, n = rng.integers(1, 9, 4)
  lhs, rhs = jnp.ones((batch, m, k)), jnp.ones((batch, k, n))
  counted = forward_matmul_flops(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b), lhs, rhs)
  assert counted == 2 * batch * m * k * n
  # Contraction over two axes, free axes on both sides.
  assert dot_general_flops((m, k, 3), (5, k, 3), (((1, 2), (1, 2)), ((), ()))) == 2 * m * k * 3 * 5


def test_scans_multiply_conds_take_the_larger_branch_while_loops_refuse():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 8))
  one = 2 * 4 * 8 * 8
  scanned = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
  assert forward_matmul_flops(scanned, x, w) == 5 * one
  branchy = lambda p, x, w: jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
  assert forward_matmul_flops(branchy, True, x, w) == 2 * one
  nested = jax.jit(lambda x, w: jax.checkpoint(lambda x: x @ w)(x) @ w)
  assert forward_matmul_flops(nested, x, w) == 2 * one
  looped = lambda x, w: jax.lax.while_loop(lambda c: c[0, 0] < 9, lambda c: c @ w, x)
  with pytest.raises(ValueError, match="no static trip count"):
    forward_matmul_flops(looped, x, w)


def tokens(batch, seq):
  return jax.ShapeDtypeStruct((batch, seq), jnp.int32)


@pytest.mark.parametrize("precision, kv_heads, mlp_type, remat, tie, scan", [
    ("bf16", None, "swiglu", False, True, False), ("b1.58", 2, "swiglu", True, False, False),
    ("1bit", 4, "relu2", False, False, False), ("b1.58", None, "relu2_glu", True, True, True)])
def test_traced_count_of_the_decoder_equals_its_closed_formula(precision, kv_heads, mlp_type,
                                                               remat, tie, scan):
  cfg = DecoderConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=kv_heads, mlp_hidden_size=96, mlp_type=mlp_type,
                      precision=precision, remat=remat, tie_embeddings=tie, scan_layers=scan)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  loss = lambda p, b: next_token_loss(nnx.merge(graphdef, p), b, None)[0]
  batch = {"inputs": tokens(3, 40), "targets": tokens(3, 40)}
  assert train_matmul_flops(loss, params, batch) == train_flops_per_token(cfg, 40) * 3 * 40


def test_encoder_masked_lm_count_by_hand():
  h, heads, glu, vocab, layers, batch, seq = 32, 4, 48, 80, 3, 2, 24
  cfg = EncoderConfig(vocab_size=vocab, hidden_size=h, num_layers=layers, num_heads=heads,
                      mlp_hidden_size=glu, precision="b1.58")
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
  loss = lambda p, t: nnx.merge(graphdef, p).masked_lm(t).sum()
  per_token_forward = (
      layers * (2 * 4 * h * h          # q, k, v, o projections
                + 2 * 3 * h * glu      # gate, up, down
                + 2 * 2 * seq * h)     # scores and weighted sum over the whole window
      + 2 * h * vocab)                 # the tied masked-LM head
  assert train_matmul_flops(loss, params, tokens(batch, seq)) == (
      3 * per_token_forward * batch * seq)


def test_mlp_count_by_hand():
  cfg = MLPConfig(input_dim=30, num_classes=7, hidden_sizes=(64, 16), precision="b1.58")
  graphdef, params = nnx.split(nnx.eval_shape(lambda: MLPClassifier(cfg, rngs=nnx.Rngs(0))))
  loss = lambda p, x: nnx.merge(graphdef, p)(x).sum()
  features = jax.ShapeDtypeStruct((11, 30), jnp.float32)
  assert train_matmul_flops(loss, params, features) == 3 * 2 * 11 * (30 * 64 + 64 * 16 + 16 * 7)
