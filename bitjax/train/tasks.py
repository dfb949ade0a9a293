"""Tasks: what the one trainer trains. `config.task` picks one from TASKS.

A task owns everything that differs between a language model, an MLP, a GNN, an
encoder and an encoder-decoder: the schema of `config.model` (a ModelConfig
subclass) and of `config.data`, the data (train iterator, eval batches), the loss,
the summable eval statistics and the metrics made from them. The trainer
(`bitjax.train.trainer`) does the rest identically for all: state, sharding,
optimizer, checkpoints, metrics.jsonl and summary.json.

Batches are dicts of numpy arrays of fixed shapes, so one compiled step and one
compiled eval serve a whole run (eval batches are padded with rows of weight 0).
Row-batched tasks shard rows over the mesh's batch axes; a graph is replicated.
"""

from __future__ import annotations

import abc
import functools
import json
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bitjax import models
from bitjax.parallel import logical_sharding
from bitjax.train import step as step_lib
from bitjax.train.flops import train_matmul_flops
from bitjax.train.metrics import lm_metrics, throughput_metrics


def data_section(**fields):
  """A config.data section; a type as default is None of that type (settable by flag)."""
  import ml_collections

  from bitjax.data.config import optional

  return ml_collections.ConfigDict(
      {k: optional(v) if isinstance(v, type) else v for k, v in fields.items()})


def check_one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"config.{field}={value!r} is not one of {list(allowed)}")


def check_matches_data(field: str, value, data_value, what: str) -> None:
  if value != data_value:
    raise ValueError(f"config.model.{field}={value!r} does not match the data's {what} "
                     f"({data_value}); set config.model.{field}={data_value}")


def cached_by_fields(fn):
  """Memoise a loader on its data section's values: a sweep builds each data set once."""
  @functools.cache
  def by_key(key: str):
    return fn(json.loads(key))

  def load(data):
    fields = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    return by_key(json.dumps(fields, sort_keys=True, default=str))

  return load


# -- batches -----------------------------------------------------------------------------


def num_rows(arrays: dict) -> int:
  return next(iter(arrays.values())).shape[0]


def dense_rows(array, rows) -> np.ndarray:
  """Rows of a numpy array or a scipy sparse matrix (bag-of-words), as dense numpy."""
  picked = array[rows]
  return picked.toarray() if hasattr(picked, "toarray") else np.asarray(picked)


class ArrayBatches(Iterator):
  """Endless shuffled batches of the rows of in-memory arrays (a new permutation each
  epoch, from `seed`), this process's block of every batch. The state is the batch
  count, so a checkpoint resumes it exactly."""

  def __init__(self, arrays: dict, batch_size: int, seed: int, block: int, num_blocks: int):
    self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
    self.block = slice(block * batch_size // num_blocks, (block + 1) * batch_size // num_blocks)
    self.num_rows = num_rows(arrays)
    if self.num_rows < batch_size:
      raise ValueError(f"config.train.batch_size={batch_size} exceeds the {self.num_rows} "
                       "training examples")
    self.count = 0

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, index = divmod(self.count, self.num_rows // self.batch_size)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    rows = order[index * self.batch_size:(index + 1) * self.batch_size][self.block]
    self.count += 1
    batch = {key: dense_rows(value, rows) for key, value in self.arrays.items()}
    return {**batch, "weights": np.ones(len(rows), np.float32)}

  def get_state(self) -> dict:
    return {"batches": self.count}

  def set_state(self, state: dict) -> None:
    self.count = int(state["batches"])


class Repeat(Iterator):
  """The same batch forever: a GNN trains on its one graph."""

  def __init__(self, batch: dict):
    self.batch = batch

  def __next__(self):
    return self.batch

  def get_state(self) -> dict:
    return {}

  def set_state(self, state: dict) -> None:
    pass


class MappedBatches(Iterator):
  """Another checkpointable iterator's batches through `fn(batch, rng)`; the rng is seeded
  by (seed, batch count), so a resumed run sees the same corruption."""

  def __init__(self, inner, fn, seed: int):
    self.inner, self.fn, self.seed, self.count = inner, fn, seed, 0

  def __next__(self):
    batch = self.fn(next(self.inner), np.random.default_rng([self.seed, self.count]))
    self.count += 1
    return batch

  def get_state(self) -> dict:
    return {"inner": self.inner.get_state(), "batches": self.count}

  def set_state(self, state: dict) -> None:
    self.inner.set_state(state["inner"])
    self.count = int(state["batches"])


def padded_batches(arrays: dict, batch_size: int, max_batches: int) -> list[dict]:
  """The rows in order in batches of `batch_size` (at most `max_batches`); the last is
  padded with copies of row 0 of weight 0, so every batch has the same shape."""
  total = num_rows(arrays)
  batches = []
  for start in range(0, min(total, batch_size * max_batches), batch_size):
    rows = np.arange(start, start + batch_size)
    real = rows < total
    batch = {key: dense_rows(value, np.where(real, rows, 0)) for key, value in arrays.items()}
    batches.append({**batch, "weights": real.astype(np.float32)})
  return batches


# -- losses and metrics ------------------------------------------------------------------


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


# -- tasks -------------------------------------------------------------------------------


class Task(abc.ABC):
  """One config's task; the defaults fit classification of in-memory rows.

  `metric` is the summary's headline figure (eval_<metric>) that sweep reports
  tabulate.
  """

  config_class: type[models.ModelConfig]
  model_class: type[nnx.Module]
  unit = "examples"  # what throughput counts
  metric = "accuracy"

  def __init__(self, config):
    self.config = config

  @staticmethod
  @abc.abstractmethod
  def default_data():
    """The config.data section with its defaults."""

  def validate(self, model_cfg) -> None:
    """Check config.data and the model fields that must fit the data; ValueError naming them."""

  def batch_sharding(self, mesh) -> NamedSharding:
    return logical_sharding((self.config.train.batch_size,), ("batch",), mesh)

  def splits(self) -> dict[str, dict]:
    """In-memory tasks: {split: {name: array}} (rows first). Streaming tasks (LM, MLM,
    graphs) hold no splits and override train_iterator and eval_batches instead."""
    raise TypeError(f"{type(self).__name__} holds no in-memory splits")

  def train_iterator(self, block: int, num_blocks: int):
    """Endless iterator of this process's batches, with get_state / set_state."""
    train = self.config.train
    return ArrayBatches(self.splits()["train"], train.batch_size, train.seed, block, num_blocks)

  def eval_batches(self) -> list[dict[str, np.ndarray]]:
    """Global eval batches of `config.data.eval_split` (the trainer takes its rows)."""
    train = self.config.train
    return padded_batches(self.splits()[self.config.data.eval_split], train.batch_size,
                          train.eval_batches)

  def loss(self, model, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pure and jittable: (mean loss, metrics) of a train batch; rng for dropout."""
    return mean_loss_and_accuracy(self.eval_sums(model, batch, rng))

  @abc.abstractmethod
  def eval_sums(self, model, batch, rng=None) -> dict[str, jax.Array]:
    """Statistics that add up over eval batches."""

  def summarize(self, totals: dict[str, float]) -> dict[str, float]:
    count = max(totals["count"], 1.0)
    return {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count}

  def units_per_step(self) -> int:
    return self.config.train.batch_size

  def train_flops_per_step(self, model_cfg, loss_of, params, batch) -> float:
    """Matmul FLOPs of one training step, counted from the traced `loss_of(params,
    batch)` (bitjax.train.flops); the LM uses its closed formula instead."""
    del model_cfg
    return float(train_matmul_flops(loss_of, params, batch))

  def throughput(self, units_per_s: float, flops_per_step: float) -> dict[str, float]:
    """Units/s, TFLOP/s per device and (on known accelerators) MFU."""
    return throughput_metrics(units_per_s, flops_per_step / self.units_per_step(),
                              jax.device_count(), jax.devices()[0].device_kind, self.unit)

  def run_stats(self, model_cfg, model) -> dict:
    """Task-specific summary fields (the LM's tokens and FLOPs)."""
    return {}

  def data_info(self) -> dict:
    return {"name": self.config.data.name}


class LanguageModeling(Task):
  """Next-token prediction with the decoder on a corpus (the bitjax.data pipelines)."""

  config_class, model_class = models.DecoderConfig, models.Decoder
  unit = "tokens"
  metric = "bits_per_byte"

  @staticmethod
  def default_data():
    from bitjax.data import default_data_config

    return default_data_config()

  def validate(self, model_cfg):
    from bitjax.data import get_tokenizer, validate_data_config

    validate_data_config(self.config.data)
    vocab = get_tokenizer(self.config.data).vocab_size
    if model_cfg.vocab_size < vocab:
      raise ValueError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the "
                       f"{self.config.data.tokenizer!r} tokenizer's vocabulary ({vocab})")

  def batch_sharding(self, mesh):
    return step_lib.batch_sharding(mesh, self.config.train.batch_size, self.config.train.seq_len)

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

  def loss(self, model, batch, rng):
    return step_lib.next_token_loss(model, batch, rng)

  def eval_sums(self, model, batch, rng=None):
    from bitjax.data import get_tokenizer

    bytes_per_token = jnp.asarray(get_tokenizer(self.config.data).bytes_per_token)
    logits = model(batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return {"loss_sum": losses.sum(), "tokens": jnp.asarray(losses.size, jnp.float32),
            "bytes": bytes_per_token[batch["targets"]].sum()}

  def summarize(self, totals):
    return lm_metrics(totals["loss_sum"], totals["tokens"], totals["bytes"])

  def units_per_step(self):
    return self.config.train.batch_size * self.config.train.seq_len

  def train_flops_per_step(self, model_cfg, loss_of, params, batch):
    del loss_of, params, batch  # the closed formula (tests check the traced count equals it)
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


EVAL_SPLITS = ("validation", "test")


class FeatureClassification(Task):
  """An MLP on feature vectors: scikit-learn's bundled sets (classify_tabular) or TF-IDF
  bag-of-words of text files (classify_text). Evaluates on `data.eval_split`."""

  config_class, model_class = models.MLPConfig, models.MLPClassifier

  def validate(self, model_cfg):
    check_one_of("data.eval_split", self.config.data.eval_split, EVAL_SPLITS)
    self.check_source()
    data = self.dataset()
    check_matches_data("input_dim", model_cfg.input_dim, data.input_dim, "feature count")
    check_matches_data("num_classes", model_cfg.num_classes, data.num_classes, "class count")

  @abc.abstractmethod
  def check_source(self) -> None:
    """Check that config.data names an available source; ValueError naming the field."""

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


@cached_by_fields
def _tabular(data):
  from bitjax.data.tabular import load_tabular

  return load_tabular(data["name"], seed=data["split_seed"])


class TabularClassification(FeatureClassification):

  @staticmethod
  def default_data():
    return data_section(name="digits", split_seed=0, eval_split="validation")

  def check_source(self):
    from bitjax.data.tabular import TABULAR_DATASETS

    check_one_of("data.name", self.config.data.name, TABULAR_DATASETS)

  def dataset(self):
    return _tabular(self.config.data)


TEXT_SOURCES = ("stdlib_packages", "text_dir")


@cached_by_fields
def _tfidf(data):
  from bitjax.data import text_classification as tc

  chunking = dict(chunk_chars=data["chunk_chars"], max_chunks_per_file=data["max_chunks_per_file"],
                  seed=data["split_seed"])
  if data["name"] == "stdlib_packages":
    examples = tc.stdlib_packages(max_classes=data["max_classes"], **chunking)
  else:
    examples = tc.directory_classification(data["text_dir"], data["text_glob"],
                                           max_classes=data["max_classes"], **chunking)
  return tc.tfidf(examples, data["max_features"])


class TextClassification(FeatureClassification):
  """TF-IDF features; vocabulary and idf from the train split only."""

  @staticmethod
  def default_data():
    return data_section(name="stdlib_packages", text_dir=str, text_glob="**/*.txt",
                        max_classes=10, chunk_chars=2000, max_chunks_per_file=4,
                        max_features=10000, split_seed=0, eval_split="validation")

  def check_source(self):
    data = self.config.data
    check_one_of("data.name", data.name, TEXT_SOURCES)
    if data.name == "text_dir" and not data.text_dir:
      raise ValueError("config.data.text_dir must name a directory when "
                       "config.data.name='text_dir'")

  def dataset(self):
    return _tfidf(self.config.data)


GRAPHS = ("csbm", "karate_club", "cora", "citeseer", "pubmed")


@cached_by_fields
def _graph(data):
  from bitjax.data import graphs

  if data["name"] == "csbm":
    graph = graphs.contextual_sbm(feature_signal=data["feature_signal"], seed=data["graph_seed"])
  elif data["name"] == "karate_club":
    graph = graphs.karate_club(seed=data["graph_seed"])
  else:
    graph = graphs.load_planetoid(data["name"], os.path.expanduser(data["data_dir"]))
  return graphs.row_normalized(graph)


class NodeClassification(Task):
  """A GNN on one graph: the loss on its training nodes, accuracy on the eval split's.
  Planetoid files are read from config.data.data_dir (ind.<name>.* files)."""

  config_class, model_class = models.GNNConfig, models.GNN
  unit = "steps"

  @staticmethod
  def default_data():
    # csbm's feature_signal 0.2 makes SGC about as accurate as on Cora (81%): at the
    # generator's 0.5 the words alone nearly give the class away.
    return data_section(name="csbm", data_dir=str, graph_seed=0, feature_signal=0.2,
                        eval_split="validation")

  def validate(self, model_cfg):
    data = self.config.data
    check_one_of("data.name", data.name, GRAPHS)
    check_one_of("data.eval_split", data.eval_split, EVAL_SPLITS)
    if data.name in ("cora", "citeseer", "pubmed") and not data.data_dir:
      raise ValueError(f"config.data.data_dir must hold the Planetoid files ind.{data.name}.*")
    graph = _graph(data)
    check_matches_data("input_dim", model_cfg.input_dim, graph.features.shape[1],
                       "feature count")
    check_matches_data("num_classes", model_cfg.num_classes, graph.num_classes, "class count")

  def batch_sharding(self, mesh):
    return NamedSharding(mesh, PartitionSpec())

  def graph_batch(self, split: str) -> dict[str, np.ndarray]:
    from bitjax.data.graphs import padded

    arrays = padded(_graph(self.config.data))
    mask = arrays.pop(f"{'val' if split == 'validation' else split}_mask")
    for name in ("train_mask", "val_mask", "test_mask"):
      arrays.pop(name, None)
    return {**arrays, "weights": mask.astype(np.float32)}

  def train_iterator(self, block, num_blocks):
    return Repeat(self.graph_batch("train"))

  def eval_batches(self):
    return [self.graph_batch(self.config.data.eval_split)]

  def eval_sums(self, model, batch, rng=None):
    logits = model(batch["features"], batch["senders"], batch["receivers"], batch["edge_mask"],
                   dropout_rng=rng)
    return classification_sums(logits, batch["labels"], batch["weights"])

  def units_per_step(self):
    return 1

  def data_info(self):
    graph = _graph(self.config.data)
    return {"name": graph.name, "nodes": graph.num_nodes, "edges": graph.num_edges,
            "classes": graph.num_classes, "train_nodes": int(graph.train_mask.sum())}


def corpus_data(**extra):
  """The LM corpus section (stdlib / text_dir / tfds) plus a task's own fields."""
  from bitjax.data import default_data_config

  config = default_data_config()
  config.update(data_section(**extra))
  return config


class CorpusTask(Task):
  """Tasks made from the LM pipeline's token windows (train.seq_len tokens), turned into
  examples by `make_examples(windows, rng)`; eval windows use fixed seeds."""

  unit = "tokens"

  def validate(self, model_cfg):
    from bitjax.data import validate_data_config

    validate_data_config(self.config.data)

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

  def units_per_step(self):
    return self.config.train.batch_size * self.config.train.seq_len

  def data_info(self):
    return LanguageModeling(self.config).data_info()


class MaskedLM(CorpusTask):
  """BERT pretraining: predict the masked bytes (15%, 80/10/10) of corpus windows."""

  config_class, model_class = models.EncoderConfig, models.Encoder
  metric = "loss"

  @staticmethod
  def default_data():
    return corpus_data(mask_rate=0.15)

  def validate(self, model_cfg):
    super().validate(model_cfg)
    needed = self.tokenizer().vocab_size + 1
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


SEQ2SEQ_OBJECTIVES = ("span_corruption", "docstrings")


@cached_by_fields
def _docstrings(data):
  from bitjax.data import corpus
  from bitjax.data.text_tasks import corpus_docstrings

  root = None if data["name"] == "stdlib" else data["text_dir"]
  pattern = corpus.STDLIB_GLOB if data["name"] == "stdlib" else data["text_glob"]
  return corpus_docstrings(root, pattern)


class Seq2Seq(CorpusTask):
  """Encoder-decoder with teacher forcing: T5 span corruption of corpus windows, or a
  function's code -> the first line of its docstring. Eval: teacher-forced loss and
  next-token accuracy over the target tokens."""

  config_class, model_class = models.EncDecConfig, models.EncoderDecoder
  metric = "loss"

  @staticmethod
  def default_data():
    return corpus_data(objective="span_corruption", target_len=32, noise_density=0.15,
                       mean_span=3.0, max_sentinels=16)

  def validate(self, model_cfg):
    super().validate(model_cfg)
    data = self.config.data
    check_one_of("data.objective", data.objective, SEQ2SEQ_OBJECTIVES)
    if data.objective == "docstrings" and data.name == "tfds":
      raise ValueError("config.data.objective='docstrings' reads Python files: "
                       "config.data.name must be 'stdlib' or 'text_dir'")
    needed = self.tokenizer().vocab_size + 1 + data.max_sentinels
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
            for split, pairs in _docstrings(self.config.data).items()}

  def train_iterator(self, block, num_blocks):
    if self.config.data.objective == "docstrings":
      return Task.train_iterator(self, block, num_blocks)
    return super().train_iterator(block, num_blocks)

  def eval_batches(self):
    if self.config.data.objective == "docstrings":
      return Task.eval_batches(self)
    return super().eval_batches()

  def eval_sums(self, model, batch, rng=None):
    logits = model(batch["inputs"], batch["decoder_inputs"], batch["input_mask"],
                   batch["target_mask"])
    weights = batch["target_mask"].astype(jnp.float32)
    if "weights" in batch:
      weights = weights * batch["weights"][:, None]
    return classification_sums(logits, batch["targets"], weights)


@cached_by_fields
def _package_chunks(data):
  from bitjax.data.text_classification import stdlib_packages
  from bitjax.data.text_tasks import encode_padded
  from bitjax.data.tokenizers import ByteTokenizer

  examples = stdlib_packages(max_classes=data["max_classes"], chunk_chars=data["seq_len"],
                             max_chunks_per_file=data["max_chunks_per_file"],
                             seed=data["split_seed"])
  splits = {}
  for name, split in examples.splits.items():
    tokens, mask = encode_padded(ByteTokenizer(), split["texts"], data["seq_len"])
    splits[name] = {"tokens": tokens, "mask": mask, "labels": split["labels"]}
  return splits, len(examples.class_names)


class SequenceClassification(Task):
  """The encoder's classification head on byte sequences: which top-level stdlib
  package a chunk of train.seq_len bytes comes from."""

  config_class, model_class = models.EncoderConfig, models.Encoder

  @staticmethod
  def default_data():
    return data_section(name="stdlib_packages", max_classes=10, max_chunks_per_file=8,
                        split_seed=0, eval_split="validation")

  def source(self):
    return _package_chunks({**self.config.data.to_dict(), "seq_len": self.config.train.seq_len})

  def validate(self, model_cfg):
    data = self.config.data
    check_one_of("data.name", data.name, ("stdlib_packages",))
    check_one_of("data.eval_split", data.eval_split, EVAL_SPLITS)
    check_matches_data("num_classes", model_cfg.num_classes, self.source()[1], "class count")

  def splits(self):
    return self.source()[0]

  def eval_sums(self, model, batch, rng=None):
    logits = model.classify(batch["tokens"], batch["mask"])
    return classification_sums(logits, batch["labels"], batch["weights"])


TASKS: dict[str, type[Task]] = {
    "lm": LanguageModeling,
    "classify_tabular": TabularClassification,
    "classify_text": TextClassification,
    "node_classification": NodeClassification,
    "mlm": MaskedLM,
    "classify_sequence": SequenceClassification,
    "seq2seq": Seq2Seq,
}


def task_class(name: str) -> type[Task]:
  check_one_of("task", name, TASKS)
  return TASKS[name]


def get_task(config) -> Task:
  """The task `config.task` names, bound to `config`."""
  return task_class(config.task)(config)
