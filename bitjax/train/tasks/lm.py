"""Language modelling: next-token prediction with the decoder on a corpus (the
bitjax.data pipelines)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from bitjax import models
from bitjax.data.config import CorpusData
from bitjax.parallel import logical_sharding
from bitjax.train.metrics import lm_metrics
from bitjax.train.tasks.base import Task

TOKEN_AXES = ("batch", "length")  # logical axes of inputs and targets


def next_token_loss(model, batch, rng):
  """Mean next-token cross-entropy, no extra metrics."""
  del rng  # nothing random
  logits = model(batch["inputs"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {}


def token_batch_sharding(mesh: Mesh, batch_size: int, seq_len: int) -> NamedSharding:
  """Token windows [batch, length]: rows over the mesh's batch axes."""
  return logical_sharding((batch_size, seq_len), TOKEN_AXES, mesh)


class LanguageModeling(Task):
  """Next-token prediction with the decoder; eval in nats/token, perplexity and bits per byte."""

  config_class, model_class = models.DecoderConfig, models.Decoder
  data_class = CorpusData
  metric = "bits_per_byte"
  analysis = "scaling"
  unit = "tokens"
  flops_counted_by = "analytic (6 x matmul parameters + attention, per token x tokens)"

  def tokenizer(self):
    from bitjax.data import get_tokenizer

    return get_tokenizer(self.config.data)

  def vocab_size_needed(self):
    return self.tokenizer().vocab_size

  def validate(self, model_cfg):
    vocab = self.vocab_size_needed()
    if model_cfg.vocab_size < vocab:
      raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
                       f"{self.config.data.tokenizer!r} tokenizer's vocabulary ({vocab}); "
                       f"use at least {vocab}, or None to follow the tokenizer")

  def batch_sharding(self, mesh):
    return token_batch_sharding(mesh, self.config.train.batch_size, self.config.train.seq_len)

  def train_iterator(self, block, num_blocks):
    from bitjax.data import make_train_iterator

    train = self.config.train
    return make_train_iterator(self.config.data, seq_len=train.seq_len,
                               global_batch_size=train.batch_size, seed=train.seed,
                               process_index=block, process_count=num_blocks)

  def eval_batches(self):
    from bitjax.data import make_eval_batches

    train = self.config.train
    return make_eval_batches(self.config.data, seq_len=train.seq_len,
                             batch_size=train.batch_size, num_batches=train.eval_batches)

  def batch_spec(self):
    tokens = jax.ShapeDtypeStruct((self.config.train.batch_size, self.config.train.seq_len),
                                  jnp.int32)
    return {"inputs": tokens, "targets": tokens}

  def loss(self, model, batch, rng):
    return next_token_loss(model, batch, rng)

  def eval_sums(self, model, batch, rng=None):
    bytes_per_token = jnp.asarray(self.tokenizer().bytes_per_token)
    logits = model(batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return {"loss_sum": losses.sum(), "tokens": jnp.asarray(losses.size, jnp.float32),
            "bytes": bytes_per_token[batch["targets"]].sum()}

  def summarize(self, totals):
    return lm_metrics(totals["loss_sum"], totals["tokens"], totals["bytes"])

  def units_per_step(self):
    return self.config.train.batch_size * self.config.train.seq_len

  def train_flops_per_step(self, model_cfg, graphdef, params, batch):
    del graphdef, params, batch  # the closed formula (tests check the traced count equals it)
    return float(models.train_flops_per_token(model_cfg, self.config.train.seq_len)
                 * self.units_per_step())

  def run_stats(self, model_cfg, model):
    train = self.config.train
    tokens = train.steps * train.batch_size * train.seq_len
    flops = models.train_flops_per_token(model_cfg, train.seq_len) * tokens
    return {"non_embedding_params": models.count_params(model)["non_embedding"],
            "tokens": tokens, "train_flops": float(flops)}

  def data_info(self):
    from bitjax.data import corpus_metadata

    data = self.config.data
    if data.name in ("stdlib", "text_dir"):
      return {"name": data.name, **corpus_metadata(data)}
    return {"name": "tfds", "tfds_name": data.tfds_name}
