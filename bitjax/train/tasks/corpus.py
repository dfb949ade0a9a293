"""Tasks made from the LM corpus: masked LM (encoder) and seq2seq (encoder-decoder)."""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from bitjax import models
from bitjax.data import loaders
from bitjax.data.iterators import MappedBatches
from bitjax.train.tasks.classification import (ClassificationObjective, InMemoryRows,
                                               classification_sums)
from bitjax.train.tasks.lm import LanguageModeling

class CorpusTask(ClassificationObjective):
  """Tasks made from the LM pipeline's token windows (train.seq_len tokens), turned into
  examples by `make_examples(windows, rng)`; eval windows use fixed seeds."""

  metric = "loss"
  unit = "tokens"

  def tokenizer(self):
    from bitjax.data import get_tokenizer

    return get_tokenizer(self.config.data)

  @abc.abstractmethod
  def make_examples(self, windows: np.ndarray, rng: np.random.Generator) -> dict:
    """Training examples (arrays keyed by name) from a batch of token windows."""

  def train_iterator(self, block, num_blocks):
    lm = LanguageModeling(self.config)
    return MappedBatches(lm.train_iterator(block, num_blocks),
                         lambda batch, rng: self.make_examples(batch["inputs"], rng),
                         self.config.train.seed)

  def eval_batches(self):
    return [self.make_examples(batch["inputs"], np.random.default_rng([2**31, i]))
            for i, batch in enumerate(LanguageModeling(self.config).eval_batches())]

  def batch_spec(self):
    """The shapes make_examples gives a batch of windows (numpy, so it runs on zeros)."""
    windows = np.zeros((self.config.train.batch_size, self.config.train.seq_len), np.int32)
    examples = self.make_examples(windows, np.random.default_rng(0))
    return {name: jax.ShapeDtypeStruct(array.shape, array.dtype)
            for name, array in examples.items()}

  def units_per_step(self):
    return self.config.train.batch_size * self.config.train.seq_len

  def data_info(self):
    return LanguageModeling(self.config).data_info()


class MaskedLM(CorpusTask):
  """BERT pretraining: predict the masked bytes (15%, 80/10/10) of corpus windows."""

  config_class, model_class = models.EncoderConfig, models.Encoder
  data_class = loaders.MaskedLMData

  def vocab_size_needed(self):
    return self.tokenizer().vocab_size + 1  # and [MASK]

  def validate(self, model_cfg):
    needed = self.vocab_size_needed()
    if model_cfg.vocab_size < needed:
      raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} leaves no room for "
                       f"the [MASK] id; it must be >= {needed}")

  def make_examples(self, windows, rng):
    from bitjax.data.text_tasks import mask_tokens

    mask = np.ones(windows.shape, bool)
    return mask_tokens(windows, mask, self.tokenizer(), rng, self.config.data.mask_rate)

  def eval_sums(self, model, batch, rng=None):
    logits = model.masked_lm(batch["tokens"], batch["mask"])
    targets = batch["targets"]
    return classification_sums(logits, targets, jnp.ones(targets.shape, jnp.float32))


class Seq2Seq(InMemoryRows, CorpusTask):
  """Encoder-decoder with teacher forcing: T5 span corruption of corpus windows, or a
  function's code -> the first line of its docstring (in-memory rows). Eval:
  teacher-forced loss and next-token accuracy over the target tokens."""

  config_class, model_class = models.EncDecConfig, models.EncoderDecoder
  data_class = loaders.Seq2SeqData

  def vocab_size_needed(self):
    return self.tokenizer().vocab_size + 1 + self.config.data.max_sentinels  # and sentinels

  def validate(self, model_cfg):
    data = self.config.data
    needed = self.vocab_size_needed()
    if data.objective == "span_corruption" and model_cfg.vocab_size < needed:
      raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} leaves no room for "
                       f"config.data.max_sentinels={data.max_sentinels} sentinels; it must "
                       f"be >= {needed}")

  def make_examples(self, windows, rng):
    from bitjax.data.text_tasks import seq2seq_arrays, span_corrupt

    data, tokenizer = self.config.data, self.tokenizer()
    pairs = [span_corrupt(row, tokenizer, rng, noise_density=data.noise_density,
                          mean_span=data.mean_span, max_sentinels=data.max_sentinels)
             for row in windows]
    return seq2seq_arrays(pairs, tokenizer, self.config.train.seq_len, data.target_len)

  def splits(self):
    from bitjax.data.text_tasks import text_pairs

    return {split: text_pairs(pairs, self.tokenizer(), self.config.train.seq_len,
                              self.config.data.target_len)
            for split, pairs in loaders.cached_docstrings(self.config.data).items()}

  def batch_source(self) -> type:
    """Where this objective's batches come from: in-memory docstring pairs, or windows."""
    return InMemoryRows if self.config.data.objective == "docstrings" else CorpusTask

  def train_iterator(self, block, num_blocks):
    return self.batch_source().train_iterator(self, block, num_blocks)

  def eval_batches(self):
    return self.batch_source().eval_batches(self)

  def batch_spec(self):
    return self.batch_source().batch_spec(self)

  def eval_sums(self, model, batch, rng=None):
    logits = model(batch["inputs"], batch["decoder_inputs"], batch["input_mask"],
                   batch["target_mask"])
    weights = batch["target_mask"].astype(jnp.float32)
    if "weights" in batch:
      weights = weights * batch["weights"][:, None]
    return classification_sums(logits, batch["targets"], weights)
