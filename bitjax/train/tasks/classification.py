"""Classification: the cross-entropy objective most tasks share, in-memory rows as data,
and the tabular, text (MLP) and sequence (encoder) classification tasks."""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import optax

from bitjax import models
from bitjax.data import loaders
from bitjax.data.iterators import ArrayBatches, num_rows, padded_batches
from bitjax.train.tasks.base import Task, check_matches_data


def classification_sums(logits, labels, weights) -> dict[str, jax.Array]:
  """Summed cross-entropy, correct predictions and weight over items with a label (>= 0)."""
  weights = weights * (labels >= 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  correct = jnp.argmax(logits, -1) == labels
  return {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(),
          "count": weights.sum()}


def mean_loss_and_accuracy(sums) -> tuple[jax.Array, dict[str, jax.Array]]:
  count = jnp.maximum(sums["count"], 1.0)
  return sums["loss_sum"] / count, {"accuracy": sums["correct"] / count}


class ClassificationObjective(Task):
  """Tasks whose eval_sums are classification_sums (labels, masked bytes, target tokens):
  the train loss is their mean cross-entropy, with accuracy as a metric."""

  metric = "accuracy"

  def loss(self, model, batch, rng):
    return mean_loss_and_accuracy(self.eval_sums(model, batch, rng))

  def summarize(self, totals):
    count = max(totals["count"], 1.0)
    return {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count}


class InMemoryRows(Task):
  """Data held as in-memory splits of rows: shuffled train batches of `config.train.
  batch_size` rows, eval batches of `config.data.eval_split` padded with rows of
  weight 0. Every batch carries a "weights" row vector."""

  @abc.abstractmethod
  def splits(self) -> dict[str, dict]:
    """{split: {name: array}}, rows first (numpy, or scipy CSR for bag-of-words)."""

  def train_iterator(self, block, num_blocks):
    train = self.config.train
    return ArrayBatches(self.splits()["train"], train.batch_size, train.seed, block, num_blocks)

  def eval_batches(self):
    train = self.config.train
    return padded_batches(self.splits()[self.config.data.eval_split], train.batch_size,
                          train.eval_batches)

  def batch_spec(self):
    rows = self.config.train.batch_size
    spec = {name: jax.ShapeDtypeStruct((rows, *array.shape[1:]), array.dtype)
            for name, array in self.splits()["train"].items()}
    return {**spec, "weights": jax.ShapeDtypeStruct((rows,), jnp.float32)}


class FeatureClassification(InMemoryRows, ClassificationObjective):
  """An MLP on feature vectors: scikit-learn's bundled sets (classify_tabular) or TF-IDF
  bag-of-words of text files (classify_text). Evaluates on `data.eval_split`."""

  config_class, model_class = models.MLPConfig, models.MLPClassifier

  def validate(self, model_cfg):
    data = self.dataset()
    check_matches_data("input_dim", model_cfg.input_dim, data.input_dim, "feature count")
    check_matches_data("num_classes", model_cfg.num_classes, data.num_classes, "class count")

  @abc.abstractmethod
  def dataset(self):
    """The bitjax.data Classification (cached per data section)."""

  def splits(self):
    return self.dataset().splits

  def eval_sums(self, model, batch, rng=None):
    logits = model(batch["features"], dropout_rng=rng)
    return classification_sums(logits, batch["labels"], batch["weights"])

  def data_info(self):
    data = self.dataset()
    return {"name": data.name, "classes": data.num_classes, "features": data.input_dim,
            **{f"{name}_examples": num_rows(split) for name, split in data.splits.items()}}


class TabularClassification(FeatureClassification):

  data_class = loaders.TabularData

  def dataset(self):
    return loaders.cached_tabular(self.config.data)


class TextClassification(FeatureClassification):
  """TF-IDF features; vocabulary and idf from the train split only."""

  data_class = loaders.TextClassData

  def dataset(self):
    return loaders.cached_tfidf(self.config.data)


class SequenceClassification(InMemoryRows, ClassificationObjective):
  """The encoder's classification head on byte sequences: which top-level stdlib
  package a chunk of train.seq_len bytes comes from."""

  config_class, model_class = models.EncoderConfig, models.Encoder
  data_class = loaders.SequenceClassData

  def source(self):
    return loaders.cached_package_chunks(
        {**self.config.data.to_dict(), "seq_len": self.config.train.seq_len})

  def validate(self, model_cfg):
    check_matches_data("num_classes", model_cfg.num_classes, self.source()[1], "class count")

  def splits(self):
    return self.source()[0]

  def eval_sums(self, model, batch, rng=None):
    logits = model.classify(batch["tokens"], batch["mask"])
    return classification_sums(logits, batch["labels"], batch["weights"])
