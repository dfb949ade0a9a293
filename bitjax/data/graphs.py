"""Graphs for node classification: Planetoid files (Cora, CiteSeer, PubMed), a Cora-shaped
contextual stochastic block model, and Zachary's karate club, all offline.

Every loader returns a `Graph`: node features and labels, an undirected edge list
stored in both directions without self loops or duplicates (the GNN adds self
loops itself), and boolean train/validation/test node masks. `padded` turns it
into fixed-size arrays for `bitjax.models.GNN`, so graphs padded to the same
sizes share one compiled program.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np

from bitjax.data.splits import stratified_split

PLANETOID_NAMES = ("cora", "citeseer", "pubmed")
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
PLANETOID_VALIDATION_NODES = 500


@dataclasses.dataclass(frozen=True)
class Graph:
  """One graph; labels are -1 where a node has none (CiteSeer's missing test nodes)."""

  name: str
  features: np.ndarray  # float32 [nodes, features]
  labels: np.ndarray  # int32 [nodes]
  senders: np.ndarray  # int32 [edges]
  receivers: np.ndarray  # int32 [edges]
  train_mask: np.ndarray  # bool [nodes]
  val_mask: np.ndarray
  test_mask: np.ndarray
  num_classes: int

  @property
  def num_nodes(self) -> int:
    return self.features.shape[0]

  @property
  def num_edges(self) -> int:
    return self.senders.shape[0]


def undirected_edges(pairs: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """(senders, receivers) of the undirected graph with the given node pairs: both
  directions, self loops and duplicates dropped, sorted by (sender, receiver)."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  both = np.concatenate([pairs, pairs[:, ::-1]])
  keys = np.unique(both[:, 0] * num_nodes + both[:, 1])
  return (keys // num_nodes).astype(np.int32), (keys % num_nodes).astype(np.int32)


def _mask(num_nodes: int, indices) -> np.ndarray:
  mask = np.zeros(num_nodes, bool)
  mask[np.asarray(indices, np.int64)] = True
  return mask


def row_normalized(graph: Graph) -> Graph:
  """Features scaled to sum to 1 per node (rows of zeros stay zero), as in GCN and SGC."""
  sums = graph.features.sum(1, keepdims=True)
  features = graph.features / np.where(sums == 0, 1, sums)
  return dataclasses.replace(graph, features=features.astype(np.float32))


def padded(graph: Graph, num_nodes: int | None = None,
           num_edges: int | None = None) -> dict[str, np.ndarray]:
  """Arrays of fixed sizes for the GNN: padded nodes have zero features, label -1 and
  no edges; padded edges point at node 0 with edge_mask False. None: no padding."""
  num_nodes = graph.num_nodes if num_nodes is None else num_nodes
  num_edges = graph.num_edges if num_edges is None else num_edges
  if num_nodes < graph.num_nodes or num_edges < graph.num_edges:
    raise ValueError(f"graph {graph.name!r} has {graph.num_nodes} nodes and {graph.num_edges} "
                     f"edges; it does not fit in {num_nodes} nodes and {num_edges} edges")

  def pad(array, size, value=0):
    widths = [(0, size - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, widths, constant_values=value)

  return {
      "features": pad(graph.features, num_nodes),
      "labels": pad(graph.labels, num_nodes, -1),
      "senders": pad(graph.senders, num_edges),
      "receivers": pad(graph.receivers, num_edges),
      "edge_mask": pad(np.ones(graph.num_edges, bool), num_edges, False),
      **{name: pad(getattr(graph, name), num_nodes, False)
         for name in ("train_mask", "val_mask", "test_mask")},
  }


class PlanetoidFormatError(ValueError):
  """A Planetoid file is missing, unreadable or inconsistent; the message names it."""


class _PlanetoidUnpickler(pickle.Unpickler):
  """Unpickles exactly the classes Planetoid files are made of (as Python 2 pickled them
  and as today's numpy and scipy pickle them), so a tampered file cannot run code: numpy
  arrays and scalars, scipy CSR matrices, a defaultdict of lists, and the plain
  containers and helpers their pickles name. Any other global (os.system, eval, a numpy
  or scipy function) is refused, since a pickle calls what it names."""

  ALLOWED = frozenset({
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
      ("scipy.sparse._csr", "csr_matrix"),
      ("collections", "defaultdict"),
      ("copyreg", "_reconstructor"),  # how Python 2 pickled csr_matrix (new-style classes)
      ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
      ("builtins", "object"), ("builtins", "list"), ("builtins", "dict"),
  })
  # Older names of the same things: Python 2's modules, numpy < 2, scipy < 1.8.
  RENAMED = {"numpy.core.multiarray": "numpy._core.multiarray",
             "scipy.sparse.csr": "scipy.sparse._csr", "copy_reg": "copyreg",
             "__builtin__": "builtins"}

  def find_class(self, module, name):
    module = self.RENAMED.get(module, module)
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(
          f"refusing to load {module}.{name}: Planetoid files hold only numpy arrays, "
          "scipy CSR matrices and a defaultdict of lists")
    return super().find_class(module, name)


def _planetoid_path(data_dir: str, name: str, part: str) -> str:
  return os.path.join(data_dir, f"ind.{name}.{part}")


def _read_pickle(path: str):
  if not os.path.isfile(path):
    raise PlanetoidFormatError(f"{path}: file not found")
  try:
    with open(path, "rb") as f:
      # The original files were pickled by Python 2: bytes decode as latin-1.
      return _PlanetoidUnpickler(f, encoding="latin1").load()
  except Exception as e:  # pickle raises many types for corrupt input
    raise PlanetoidFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def _dense_matrix(path: str, value) -> np.ndarray:
  if hasattr(value, "toarray"):
    value = value.toarray()
  if not isinstance(value, np.ndarray) or value.ndim != 2:
    raise PlanetoidFormatError(f"{path}: expected a 2-D matrix, got {type(value).__name__}"
                               f"{'' if not hasattr(value, 'shape') else f' of shape {value.shape}'}")
  if not np.issubdtype(value.dtype, np.number):
    raise PlanetoidFormatError(f"{path}: expected numbers, got dtype {value.dtype}")
  return np.asarray(value, np.float32)


def _one_hot_labels(path: str, matrix: np.ndarray, allow_empty_rows: bool = False) -> np.ndarray:
  """Class indices of one-hot rows; -1 for all-zero rows where allowed."""
  sums = matrix.sum(1)
  binary = np.isin(matrix, (0, 1)).all()
  if not binary or not np.isin(sums, (0, 1) if allow_empty_rows else (1,)).all():
    raise PlanetoidFormatError(f"{path}: labels are not one-hot rows")
  return np.where(sums > 0, matrix.argmax(1), -1).astype(np.int32)


def _read_test_index(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise PlanetoidFormatError(f"{path}: file not found")
  with open(path, "rb") as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  try:
    index = np.array([int(line) for line in lines], np.int64)
  except ValueError:
    raise PlanetoidFormatError(f"{path}: expected one integer node index per line") from None
  if index.size == 0 or (index < 0).any() or len(np.unique(index)) != index.size:
    raise PlanetoidFormatError(f"{path}: expected distinct non-negative node indices")
  return index


def load_planetoid(name: str, data_dir: str) -> Graph:
  """The Planetoid split of Yang et al. (2016) as prepared by Kipf & Welling.

  Reads ind.{name}.{x,y,tx,ty,allx,ally,graph,test.index} from data_dir: x/tx/allx
  are (sparse) feature matrices of the labelled training nodes, the test nodes and
  all non-test nodes; y/ty/ally their one-hot labels; graph a dict from node to
  neighbour list; test.index the test nodes' ids, in tx's row order. Training
  nodes are the first len(y), validation the next 500, test those of test.index.
  CiteSeer's test ids have gaps (isolated nodes left out of tx); those nodes get
  zero features and label -1, as in Kipf's loader. Malformed files raise
  PlanetoidFormatError naming the file and the problem.
  """
  parts = {part: _read_pickle(_planetoid_path(data_dir, name, part))
           for part in PLANETOID_PARTS}
  path = {part: _planetoid_path(data_dir, name, part)
          for part in (*PLANETOID_PARTS, "test.index")}
  matrices = {part: _dense_matrix(path[part], parts[part]) for part in PLANETOID_PARTS[:-1]}
  for features, labels in (("x", "y"), ("tx", "ty"), ("allx", "ally")):
    if len(matrices[features]) != len(matrices[labels]):
      raise PlanetoidFormatError(f"{path[labels]}: {len(matrices[labels])} label rows for the "
                                 f"{len(matrices[features])} rows of {path[features]}")
  for part, reference in (("tx", "x"), ("allx", "x"), ("ty", "y"), ("ally", "y")):
    if matrices[part].shape[1] != matrices[reference].shape[1]:
      raise PlanetoidFormatError(f"{path[part]}: {matrices[part].shape[1]} columns, "
                                 f"{path[reference]} has {matrices[reference].shape[1]}")
  x, tx, allx, y, ty, ally = (matrices[p] for p in ("x", "tx", "allx", "y", "ty", "ally"))
  if len(x) > len(allx):
    raise PlanetoidFormatError(f"{path['x']}: {len(x)} training rows, more than the "
                               f"{len(allx)} rows of {path['allx']}")

  test_index = _read_test_index(path["test.index"])
  if len(test_index) != len(tx):
    raise PlanetoidFormatError(f"{path['test.index']}: {len(test_index)} indices for the "
                               f"{len(tx)} rows of {path['tx']}")
  test_sorted = np.sort(test_index)
  if test_sorted[0] < len(allx):
    raise PlanetoidFormatError(f"{path['test.index']}: test node {test_sorted[0]} overlaps the "
                               f"{len(allx)} nodes of {path['allx']}")
  # Test ids span [len(allx), max]; ids missing from test.index (CiteSeer) are
  # isolated nodes that get zero features and no label.
  num_nodes = int(test_sorted[-1]) + 1
  features = np.zeros((num_nodes, x.shape[1]), np.float32)
  features[: len(allx)] = allx
  features[test_index] = tx
  labels = np.full(num_nodes, -1, np.int32)
  labels[: len(ally)] = _one_hot_labels(path["ally"], ally, allow_empty_rows=True)
  labels[test_index] = _one_hot_labels(path["ty"], ty, allow_empty_rows=True)
  _one_hot_labels(path["y"], y)

  adjacency = parts["graph"]
  if not isinstance(adjacency, dict):
    raise PlanetoidFormatError(f"{path['graph']}: expected a dict of neighbour lists, got "
                               f"{type(adjacency).__name__}")
  try:
    pairs = np.array([(int(node), int(neighbour)) for node, neighbours in adjacency.items()
                      for neighbour in neighbours], np.int64).reshape(-1, 2)
  except (TypeError, ValueError):
    raise PlanetoidFormatError(f"{path['graph']}: neighbour lists must hold node ids") from None
  if pairs.size and (pairs.min() < 0 or pairs.max() >= num_nodes):
    raise PlanetoidFormatError(f"{path['graph']}: node id {int(pairs.max())} is outside the "
                               f"{num_nodes} nodes of the feature files")
  senders, receivers = undirected_edges(pairs, num_nodes)
  validation = np.arange(len(y), min(len(y) + PLANETOID_VALIDATION_NODES, len(ally)))
  return Graph(name=name, features=features, labels=labels, senders=senders,
               receivers=receivers, train_mask=_mask(num_nodes, np.arange(len(y))),
               val_mask=_mask(num_nodes, validation), test_mask=_mask(num_nodes, test_index),
               num_classes=y.shape[1])


def contextual_sbm(*, num_nodes: int = 2708, num_classes: int = 7, num_features: int = 1433,
                   average_degree: float = 3.9, homophily: float = 0.81,
                   words_per_node: float = 18.0, feature_signal: float = 0.5,
                   train_per_class: int = 20, num_validation: int = 500,
                   num_test: int = 1000, seed: int = 0) -> Graph:
  """A contextual stochastic block model shaped like Cora (defaults: its nodes, classes,
  bag-of-words width, mean degree, edge homophily, words per paper and split sizes).

  Classes are balanced. Edges: average_degree * num_nodes / 2 undirected pairs, a
  `homophily` share of them inside a class. Features: binary bags of words; each
  class owns an equal block of the vocabulary, and a `feature_signal` share of a
  node's expected words comes from its class's block, the rest from anywhere.
  Splits as in Planetoid: train_per_class labelled nodes per class, then
  validation and test nodes drawn from the rest. Deterministic in `seed`.
  """
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_nodes) % num_classes).astype(np.int32)

  num_pairs = int(round(average_degree * num_nodes / 2))
  inside = rng.binomial(num_pairs, homophily)
  # Inside pairs: a class, then two of its members (nodes sorted by class, so a
  # member is the class's offset plus a random rank).
  by_class = np.argsort(labels, kind="stable")
  sizes = np.bincount(labels, minlength=num_classes)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  classes = rng.integers(0, num_classes, inside)
  ranks = (rng.random((inside, 2)) * sizes[classes, None]).astype(np.int64)
  same = by_class[offsets[classes, None] + ranks]
  cross = rng.integers(0, num_nodes, (2 * (num_pairs - inside), 2))
  cross = cross[labels[cross[:, 0]] != labels[cross[:, 1]]][: num_pairs - inside]
  senders, receivers = undirected_edges(np.concatenate([same, cross]), num_nodes)

  block = num_features // num_classes
  topic = np.zeros((num_classes, num_features), bool)
  for c in range(num_classes):
    topic[c, c * block:(c + 1) * block] = True
  rate_background = words_per_node * (1 - feature_signal) / num_features
  rate_topic = rate_background + words_per_node * feature_signal / block
  rates = np.where(topic[labels], rate_topic, rate_background)
  features = (rng.random((num_nodes, num_features)) < rates).astype(np.float32)

  order = rng.permutation(num_nodes)
  train = np.concatenate([order[labels[order] == c][:train_per_class]
                          for c in range(num_classes)])
  rest = order[~np.isin(order, train)]
  validation, test = rest[:num_validation], rest[num_validation:num_validation + num_test]
  return Graph(name="csbm", features=features, labels=labels, senders=senders,
               receivers=receivers, train_mask=_mask(num_nodes, train),
               val_mask=_mask(num_nodes, validation), test_mask=_mask(num_nodes, test),
               num_classes=num_classes)


def karate_club(seed: int = 0) -> Graph:
  """Zachary's karate club (networkx, offline): 34 members, 2 classes (the club each
  joined after the split), one-hot identity features as in Kipf & Welling's demo.

  Training nodes are the two leaders (0: Mr. Hi, 33: the officer); the other 32
  are split in halves, stratified by club, into validation and test.
  """
  import networkx as nx  # Deferred: only this loader needs it.

  club = nx.karate_club_graph()
  num_nodes = club.number_of_nodes()
  labels = np.array([club.nodes[n]["club"] != "Mr. Hi" for n in range(num_nodes)], np.int32)
  senders, receivers = undirected_edges(np.array(list(club.edges()), np.int64), num_nodes)
  leaders = np.array([0, num_nodes - 1])
  others = np.setdiff1d(np.arange(num_nodes), leaders)
  halves = stratified_split(labels[others], {"validation": 0.5, "test": 0.5}, seed)
  return Graph(name="karate_club", features=np.eye(num_nodes, dtype=np.float32),
               labels=labels, senders=senders, receivers=receivers,
               train_mask=_mask(num_nodes, leaders),
               val_mask=_mask(num_nodes, others[halves["validation"]]),
               test_mask=_mask(num_nodes, others[halves["test"]]), num_classes=2)
