"""Node classification: a GNN on one whole graph, full batch."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bitjax import models
from bitjax.data import loaders
from bitjax.data.iterators import Repeat
from bitjax.train.tasks.base import check_matches_data
from bitjax.train.tasks.classification import ClassificationObjective, classification_sums


class NodeClassification(ClassificationObjective):
  """A GNN on one graph: the loss on its training nodes, accuracy on the eval split's.
  Planetoid files are read from config.data.data_dir (ind.<name>.* files). The graph is
  replicated over the mesh, not split by rows."""

  config_class, model_class = models.GNNConfig, models.GNN
  data_class = loaders.GraphData
  unit = "steps"
  splits_rows = False

  def validate(self, model_cfg):
    graph = loaders.cached_graph(self.config.data)
    check_matches_data("input_dim", model_cfg.input_dim, graph.features.shape[1],
                       "feature count")
    check_matches_data("num_classes", model_cfg.num_classes, graph.num_classes, "class count")

  def batch_sharding(self, mesh):
    return NamedSharding(mesh, PartitionSpec())

  def graph_batch(self, split: str) -> dict[str, np.ndarray]:
    from bitjax.data.graphs import padded

    arrays = padded(loaders.cached_graph(self.config.data))
    mask = arrays.pop(f"{'val' if split == 'validation' else split}_mask")
    for name in ("train_mask", "val_mask", "test_mask"):
      arrays.pop(name, None)
    return {**arrays, "weights": mask.astype(np.float32)}

  def train_iterator(self, block, num_blocks):
    return Repeat(self.graph_batch("train"))

  def eval_batches(self):
    return [self.graph_batch(self.config.data.eval_split)]

  def batch_spec(self):
    return {name: jax.ShapeDtypeStruct(array.shape, array.dtype)
            for name, array in self.graph_batch("train").items()}

  def eval_sums(self, model, batch, rng=None):
    logits = model(batch["features"], batch["senders"], batch["receivers"], batch["edge_mask"],
                   dropout_rng=rng)
    return classification_sums(logits, batch["labels"], batch["weights"])

  def units_per_step(self):
    return 1

  def data_info(self):
    graph = loaders.cached_graph(self.config.data)
    return {"name": graph.name, "nodes": graph.num_nodes, "edges": graph.num_edges,
            "classes": graph.num_classes, "train_nodes": int(graph.train_mask.sum())}
