"""The Task interface: what differs between objectives, behind one set of methods.

A task owns the schema of `config.model` (a ModelConfig subclass) and of `config.data`,
the data (a train BatchIterator, eval batches, the shapes of one batch), the loss, the
summable eval statistics and the metrics made from them, and its FLOPs. The trainer
(`bitjax.train.trainer`), `python -m bitjax compile` (`bitjax.train.compile`) and the
train-step benchmark build everything else identically for every task: state,
sharding, optimizer, step, checkpoints, metrics.jsonl and summary.json.
"""

from __future__ import annotations

import abc

import jax
from flax import nnx
from jax.sharding import NamedSharding

from bitjax import models
from bitjax.data.iterators import Batch, BatchIterator
from bitjax.parallel import logical_sharding
from bitjax.schema import Section
from bitjax.train.flops import train_matmul_flops
from bitjax.train.metrics import throughput_metrics


def check_matches_data(field: str, value, data_value, what: str) -> None:
  if value != data_value:
    raise ValueError(f"config.model.{field}={value!r} does not match the data's {what} "
                     f"({data_value}); set config.model.{field}={data_value}")


class Task(abc.ABC):
  """One config's objective, bound to the config (`config.train` and `config.data`).

  `metric` is the summary's headline figure (eval_<metric>) that sweep reports
  tabulate; `analysis` says which analysis a sweep's results get ("scaling": fits over
  model sizes; "seed_table": means and spreads over seeds). Batches are dicts of numpy
  arrays of fixed shapes (`batch_spec`), so one compiled step and one compiled eval
  serve a whole run.
  """

  config_class: type[models.ModelConfig]
  model_class: type[nnx.Module]
  data_class: type[Section]  # the schema of config.data (bitjax.schema)
  metric: str
  analysis = "seed_table"
  unit = "examples"  # what throughput counts
  splits_rows = True  # batches are split by rows over the mesh's batch axes
  flops_counted_by = "traced (3 x the matmuls of the loss's forward pass)"

  def __init__(self, config):
    self.config = config

  @classmethod
  def default_data(cls):
    """The config.data section with its defaults, from the task's data schema."""
    return cls.data_class.config_dict()

  def tokenizer(self):
    """The tokenizer of the task's text (bitjax.data.tokenizers), None for tasks without
    one; the trainer saves it with the run, and bitjax.load returns it."""
    return None

  def vocab_size_needed(self) -> int | None:
    """The token ids the model must embed (the tokenizer's and any extra ids), for a
    `config.model.vocab_size` of None; None for tasks without a tokenizer."""
    return None

  def validate(self, model_cfg) -> None:
    """Checks beyond the two sections' schemas: the model fields that must fit the data
    (feature and class counts, vocabulary room); ValueError naming them."""

  @abc.abstractmethod
  def train_iterator(self, block: int, num_blocks: int) -> BatchIterator:
    """Endless batches: block `block` of `num_blocks` equal row blocks of every batch."""

  @abc.abstractmethod
  def eval_batches(self) -> list[Batch]:
    """Global eval batches of one shape (the trainer takes this process's rows)."""

  @abc.abstractmethod
  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global train batch, as the train iterator yields it:
    what the compiler needs to build the step without any data."""

  @abc.abstractmethod
  def loss(self, model, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pure and jittable: (mean loss, metrics) of a train batch; rng for dropout."""

  @abc.abstractmethod
  def eval_sums(self, model, batch, rng=None) -> dict[str, jax.Array]:
    """Statistics that add up over eval batches."""

  @abc.abstractmethod
  def summarize(self, totals: dict[str, float]) -> dict[str, float]:
    """The eval metrics from the summed statistics."""

  def batch_sharding(self, mesh) -> NamedSharding:
    return logical_sharding((self.config.train.batch_size,), ("batch",), mesh)

  def units_per_step(self) -> int:
    return self.config.train.batch_size

  def train_flops_per_step(self, model_cfg, graphdef, params, batch) -> float:
    """Matmul FLOPs of one training step, counted from the traced loss on `params` and
    `batch` (arrays or ShapeDtypeStructs; bitjax.train.flops); the LM has a closed formula."""
    del model_cfg
    loss_of = lambda params, batch: self.loss(nnx.merge(graphdef, params), batch,
                                              jax.random.key(0))[0]
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
